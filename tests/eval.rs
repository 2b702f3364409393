//! `reckon eval` end to end with the real default model: outputs, resume
//! after a kill, bad data.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::model_path;

fn shared_data() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/gsm8k/test-1000.jsonl");
    assert!(p.is_file(), "{} is missing: CI lays shared/ beside the checkout", p.display());
    p
}

fn eval_cmd(data: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_reckon"));
    c.args(["eval", "--threads", "2", "--max-answer", "8", "--model"])
        .arg(model_path())
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(extra)
        .stdin(Stdio::null());
    c
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Figures that do not depend on timing.
fn stable(summary: &serde_json::Value) -> Vec<(String, String, u64, u64, String, String)> {
    summary["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["model"].as_str().unwrap().to_string(),
                r["config"].as_str().unwrap().to_string(),
                r["n"].as_u64().unwrap(),
                r["correct"].as_u64().unwrap(),
                format!("{:.4}", r["mean_thinking_tokens"].as_f64().unwrap()),
                format!("{:.4}", r["mean_generated_tokens"].as_f64().unwrap()),
            )
        })
        .collect()
}

#[test]
fn tiny_eval_writes_every_output() {
    let out = tempfile::tempdir().unwrap();
    let o = eval_cmd(&shared_data(), out.path(), &["--limit", "5", "--budgets", "8,16", "--extensions", "1", "--extensions-cap", "24"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("| cap8 |") && table.contains("| cap24+wait1 |"), "{table}");
    let label = "qwen2.5-coder-0.5b-instruct-q4_k_m";
    for cfg in ["cap8", "cap16", "cap24+wait1"] {
        let recs = lines(&out.path().join("records").join(label).join(format!("{cfg}.jsonl")));
        assert_eq!(recs.len(), 5, "{cfg}");
        for r in &recs {
            for key in ["id", "gold", "extracted", "correct", "thinking_tokens", "forced", "wall_ms", "thinking", "answer"] {
                assert!(r.get(key).is_some(), "{cfg}: record lacks {key}");
            }
            assert!(r["thinking_tokens"].as_u64().unwrap() + r["injected_tokens"].as_u64().unwrap() <= 24);
        }
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["rows"].as_array().unwrap().len(), 3);
    assert!(std::fs::read_to_string(out.path().join("summary.md")).unwrap().starts_with("| model |"));
    // A real PNG of the expected size: signature, then IHDR width and height.
    let png = std::fs::read(out.path().join("accuracy_vs_tokens.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&png[12..16], b"IHDR");
    assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 900);
    assert_eq!(u32::from_be_bytes(png[20..24].try_into().unwrap()), 600);
    assert!(png.len() > 10_000, "an empty-looking plot");
    let svg = std::fs::read_to_string(out.path().join("accuracy_vs_tokens.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("cap16"));
}

#[test]
fn resume_after_a_kill_keeps_records_and_gives_the_same_summary() {
    let data = shared_data();
    // One sequence at a time: the kill must land between records.
    let args = ["--limit", "6", "--budgets", "8", "--parallel", "1"];
    let whole = tempfile::tempdir().unwrap();
    let o = eval_cmd(&data, whole.path(), &args).output().unwrap();
    assert!(o.status.success());

    let out = tempfile::tempdir().unwrap();
    let records = out.path().join("records/qwen2.5-coder-0.5b-instruct-q4_k_m/cap8.jsonl");
    let mut child = eval_cmd(&data, out.path(), &args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    while lines(&records).len() < 2 {
        assert!(start.elapsed() < Duration::from_secs(120), "no records appeared");
        assert!(child.try_wait().unwrap().is_none(), "finished before the kill");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let kept = lines(&records);
    assert!(kept.len() >= 2 && kept.len() < 6, "{} records at the kill", kept.len());
    // And a half-written line, as a kill in the middle of a write leaves.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&records).unwrap();
        f.write_all(b"{\"id\": 99, \"question\": \"half").unwrap();
    }

    // A report of what is on disk solves nothing and leaves the file alone.
    let before = std::fs::read(&records).unwrap();
    let o = eval_cmd(&data, out.path(), &[&args[..], &["--report-only", "--json"]].concat()).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let partial: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(partial["rows"][0]["n"].as_u64().unwrap() as usize, kept.len());
    assert_eq!(std::fs::read(&records).unwrap(), before);

    let o = eval_cmd(&data, out.path(), &args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let all = lines(&records);
    let mut ids: Vec<u64> = all.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, vec![0, 1, 2, 3, 4, 5], "no duplicates, none lost");
    for (before, after) in kept.iter().zip(&all) {
        assert_eq!(before, after, "records on disk are kept as they were");
    }
    let read = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("summary.json")).unwrap()).unwrap()
    };
    assert_eq!(stable(&read(out.path())), stable(&read(whole.path())));
}

#[test]
fn parallel_eval_with_self_consistency_votes_per_problem() {
    let out = tempfile::tempdir().unwrap();
    // Batched without the flash-attention kernel (--no-flash-attn): the
    // caps and votes must hold on that path too.
    let args = ["--limit", "4", "--budgets", "16", "--parallel", "4", "--samples", "3", "--temperature", "0.7", "--no-flash-attn"];
    let o = eval_cmd(&shared_data(), out.path(), &args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let recs = lines(&out.path().join("records/qwen2.5-coder-0.5b-instruct-q4_k_m/cap16.jsonl"));
    let mut ids: Vec<u64> = recs.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, [0, 1, 2, 3]);
    for r in &recs {
        assert_eq!(r["samples"], 3);
        let votes: u64 = r["votes"].as_array().map_or(0, |v| v.iter().map(|c| c["votes"].as_u64().unwrap()).sum());
        assert!(votes <= 3, "{r}");
        if let Some(winner) = r["votes"].as_array().and_then(|v| v.first()) {
            assert_eq!(r["extracted"], winner["answer"], "the record's answer is the vote's");
        }
        // Token counts are sums over the three samples, each capped at 16.
        assert!(r["thinking_tokens"].as_u64().unwrap() + r["injected_tokens"].as_u64().unwrap() <= 48);
    }
    // Greedy samples would all be the same: refused.
    let o = eval_cmd(&shared_data(), &out.path().join("g"), &["--limit", "1", "--budgets", "8", "--samples", "2"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("temperature"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn bad_data_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"question\": \"What is 2+2?\", \"answer\": \"#### 4\"}\nnot json\n{\"question\": \"q\", \"answer\": \"no marker\"}\n",
    )
    .unwrap();
    let o = eval_cmd(&bad, &out, &["--budgets", "4"]).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.jsonl:2:"), "{err}");

    let o = eval_cmd(&bad, &out, &["--budgets", "4", "--skip-bad-lines"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("skipped 2 malformed line(s)"));

    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let o = eval_cmd(&empty, &dir.path().join("o2"), &["--budgets", "4"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no problems"));

    let o = eval_cmd(&dir.path().join("missing.jsonl"), &dir.path().join("o3"), &["--budgets", "4"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot read"));
}

fn write_problems(path: &Path, questions: &[String]) {
    let text: String = questions
        .iter()
        .map(|q| format!("{}\n", serde_json::json!({ "question": q, "answer": "#### 4" })))
        .collect();
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_failed_solve_is_a_wrong_record_and_the_sweep_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    // The middle question cannot fit a 512-token context.
    let long = format!("What is {}2?", "1 + ".repeat(400));
    write_problems(&data, &["What is 2 + 2?".into(), long, "What is 3 + 1?".into()]);
    let out = dir.path().join("out");
    let o = eval_cmd(&data, &out, &["--budgets", "8", "--ctx", "512", "--json"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let label = model_path().file_stem().unwrap().to_string_lossy().into_owned();
    let recs = lines(&out.join("records").join(&label).join("cap8.jsonl"));
    assert_eq!(recs.len(), 3, "{recs:?}");
    let failed: Vec<_> = recs.iter().filter(|r| r.get("error").is_some()).collect();
    assert_eq!(failed.len(), 1, "{recs:?}");
    assert_eq!(failed[0]["id"], 1);
    assert_eq!(failed[0]["correct"], false);
    assert!(failed[0]["error"].as_str().unwrap().contains("does not fit"), "{}", failed[0]["error"]);
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["rows"][0]["n"], 3);
}

#[test]
fn records_made_from_other_data_or_another_model_file_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    write_problems(&a, &["What is 2 + 2?".into()]);
    write_problems(&b, &["What is 1 + 3?".into()]);
    let out = dir.path().join("out");
    let o = eval_cmd(&a, &out, &["--budgets", "4"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = eval_cmd(&b, &out, &["--budgets", "4"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("other data"), "{err}");
    assert!(out.join("models.json").is_file());
    assert!(!out.read_dir().unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with(".tmp")), "no temporary files left");

    // A file with the default model's name that is not the default model.
    let other = dir.path().join("elsewhere").join(model_path().file_name().unwrap());
    std::fs::create_dir_all(other.parent().unwrap()).unwrap();
    std::fs::write(&other, b"GGUF a different file").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_reckon"))
        .args(["eval", "--budgets", "4", "--max-answer", "8", "--model"])
        .arg(&other)
        .arg("--data")
        .arg(&a)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("another file of that name"), "{err}");
}

/// `reckon compare`: a model against itself agrees at every position with
/// zero KL; with the claim's SFT adapter it predicts differently (an s1
/// format over the same texts), and the figures say so.
#[test]
fn compare_measures_teacher_forced_agreement() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let records = root.join("results/gsm8k-test200-qwen2.5-coder-0.5b/records/qwen2.5-coder-0.5b-instruct-q4_k_m/cap256.jsonl");
    let adapter = root.join("results/claim-gsm8k-0.5b/sft.gguf");
    let model = model_path();
    let with_adapter = format!("{}+{}", model.display(), adapter.display());
    let out = Command::new(env!("CARGO_BIN_EXE_reckon"))
        .args(["compare", "--threads", "2", "--limit", "2", "--json", "--format", "plain", "--reference"])
        .arg(&model)
        .arg("--model")
        .arg(&model)
        .args(["--model", &with_adapter, "--records"])
        .arg(&records)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["models"].as_array().unwrap();
    let (same, adapted) = (&rows[0], &rows[1]);
    // Two records: 256 and 200 thinking tokens.
    assert!(same["positions"].as_u64().unwrap() > 400, "{same}");
    assert_eq!(same["positions"], adapted["positions"]);
    assert_eq!(same["top1_agreement"].as_f64().unwrap(), 1.0, "{same}");
    assert!(same["mean_kl"].as_f64().unwrap() < 1e-9, "{same}");
    let agree = adapted["top1_agreement"].as_f64().unwrap();
    assert!(agree < 0.999 && agree > 0.3, "an adapter changes some predictions, not all: {adapted}");
    assert!(adapted["mean_kl"].as_f64().unwrap() > 1e-3, "{adapted}");

    // Files of different vocabularies (or a missing file) are refused.
    let bad = Command::new(env!("CARGO_BIN_EXE_reckon"))
        .args(["compare", "--reference"])
        .arg(&model)
        .args(["--model", "/nonexistent.gguf", "--records"])
        .arg(&records)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!bad.status.success());
}
