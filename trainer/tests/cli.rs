//! The `reckon-train` binary as a user runs it.

mod common;

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_reckon-train"))
}

#[test]
fn data_gsm8k_turns_train_lines_into_sft_records() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sft.jsonl");
    let input = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/gsm8k/train.jsonl");
    let o = bin().args(["data", "gsm8k", "--input"]).arg(&input).arg("--out").arg(&out).args(["--limit", "50"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let recs: Vec<serde_json::Value> = std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(recs.len(), 50);
    // The first GSM8K train problem: Natalia's clips, 48 + 24 = 72.
    assert!(recs[0]["question"].as_str().unwrap().starts_with("Natalia sold clips"));
    assert_eq!(recs[0]["answer"], "72");
    for r in &recs {
        let t = r["thinking"].as_str().unwrap();
        assert!(!t.contains("<<") && !t.contains("####") && !t.is_empty(), "{t}");
    }
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"question\": \"q\", \"answer\": \"no marker\"}\n").unwrap();
    let o = bin().args(["data", "gsm8k", "--input"]).arg(&bad).arg("--out").arg(dir.path().join("x.jsonl")).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.jsonl:1"));
}

#[test]
fn data_screen_keeps_problems_by_calculator_steps_and_pass_rate() {
    let dir = tempfile::tempdir().unwrap();
    let input = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/gsm8k/train.jsonl");
    let read = |p: &std::path::Path| -> Vec<serde_json::Value> { std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect() };
    // By steps alone: lines 1000..1100 with two or three calculator notes.
    let steps = dir.path().join("steps.jsonl");
    let o = bin().args(["data", "screen", "--input"]).arg(&input).arg("--out").arg(&steps).args(["--offset", "1000", "--limit", "100", "--steps", "2-3", "--json"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let kept = read(&steps);
    assert_eq!(report["read"], 100);
    assert_eq!(report["kept"].as_u64().unwrap() as usize, kept.len());
    assert!(kept.len() >= 20 && kept.len() < 100, "{} of 100 kept", kept.len());
    for r in &kept {
        let notes = r["answer"].as_str().unwrap().matches("<<").count();
        assert!((2..=3).contains(&notes) && r["steps"] == notes, "{r}");
        assert!(r["source_line"].as_u64().unwrap() > 1000 && r["pass_rate"].is_null());
    }
    // By pass rate: 2 samples of each of 3 problems by the default model,
    // kept when at least one is right; the records resume the screen.
    let model = reckon::models::ensure_model(&reckon::models::ModelSpec::default_model(), &reckon::models::models_dir(), None, false).unwrap();
    let rated = dir.path().join("rated.jsonl");
    let screen = |min_pass: &str| {
        bin().args(["data", "screen", "--input"]).arg(&input).arg("--out").arg(&rated).arg("--model").arg(&model)
            .args(["--limit", "3", "--samples", "2", "--max-think", "24", "--max-answer", "16", "--min-pass", min_pass, "--json"]).output().unwrap()
    };
    let o = screen("0");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let all = read(&rated);
    assert_eq!(all.len(), 3);
    for r in &all {
        let p = r["pass_rate"].as_f64().unwrap();
        assert!(p == 0.0 || p == 0.5 || p == 1.0, "{r}");
    }
    let records = std::fs::read_dir(dir.path().join("rated.jsonl.screen/records")).unwrap().next().unwrap().unwrap().path().join("cap24.jsonl");
    let before = std::fs::read_to_string(&records).unwrap();
    assert_eq!(before.lines().count(), 3);
    let o = screen("0.5");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(&records).unwrap(), before, "resumed: nothing sampled again");
    let kept = read(&rated);
    assert_eq!(kept.len(), all.iter().filter(|r| r["pass_rate"].as_f64().unwrap() >= 0.5).count());
    // Bad ranges are refused.
    let o = bin().args(["data", "screen", "--input"]).arg(&input).arg("--out").arg(&rated).args(["--steps", "3-2"]).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("LOW is above HIGH"));
}

#[test]
fn data_gsm8k_long_writes_long_traces_and_their_length_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("long.jsonl");
    let input = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/gsm8k/train.jsonl");
    let run = |out: &std::path::Path| {
        bin().args(["data", "gsm8k-long", "--input"]).arg(&input).arg("--out").arg(out).args(["--offset", "100", "--limit", "200", "--seed", "5"]).output().unwrap()
    };
    let o = run(&out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("200 long-trace SFT records"));
    let text = std::fs::read_to_string(&out).unwrap();
    let recs: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(recs.len(), 200);
    // Every trace ends on its answer; those whose solution has calculations
    // (nearly all of GSM8K) re-check them.
    let verified = recs.iter().filter(|r| r["thinking"].as_str().unwrap().contains("going back") || r["thinking"].as_str().unwrap().contains("Recomputing")).count();
    assert!(verified >= 190, "{verified} of 200 traces re-check a calculation");
    assert!(recs.iter().all(|r| r["thinking"].as_str().unwrap().trim_end().ends_with(&format!("{}.", r["answer"].as_str().unwrap()))));
    let stats: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("long.stats.json")).unwrap()).unwrap();
    assert_eq!(stats["problems"], 200);
    assert!(stats["ratio"].as_f64().unwrap() >= 2.5, "{stats}");
    // The same recipe, the same file.
    let again = dir.path().join("again.jsonl");
    assert!(run(&again).status.success());
    assert_eq!(std::fs::read_to_string(&again).unwrap(), text);
}

#[test]
fn sft_runs_from_the_command_line_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.jsonl");
    common::write_sft(&data, &reckon_trainer::sft::synth::arithmetic(6, 3, false));
    let cfg = common::sft_config(dir.path(), &data, "[train]\nsteps = 4\nbatch_size = 2\ngrad_accum = 1\nseed = 0\n[checkpoint]\nevery = 2\n");
    let run = |extra: &[&str]| {
        let o = bin().arg("sft").arg("--config").arg(&cfg).arg("--out").arg(dir.path().join("run")).arg("--json").args(extra).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let first = run(&["--stop-after", "2"]);
    assert_eq!(first["step"], 2);
    let second = run(&[]);
    assert_eq!(second["step"], 4);
    assert_eq!(second["resumed_from"], 2);
    // A run that did not stop by itself has no curves: `plot` draws them.
    let png = dir.path().join("run/loss.png");
    std::fs::remove_file(&png).unwrap();
    let o = bin().arg("plot").arg("--out").arg(dir.path().join("run")).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    let help = bin().args(["sft", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("resumes from the newest checkpoint"));
    assert!(String::from_utf8_lossy(&help.stdout).contains("--set <KEY=VALUE>"));
    // The same config with settings changed on the command line.
    let o = bin().arg("sft").arg("--config").arg(&cfg).arg("--out").arg(dir.path().join("set")).args(["--json", "--set", "train.steps=3", "--set", "checkpoint.every=3"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["step"], 3);
    let o = bin().arg("sft").arg("--config").arg(&cfg).arg("--out").arg(dir.path().join("bad")).args(["--set", "train.stepz=3"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("train.stepz"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = bin().arg("sft").arg("--config").arg(&cfg).arg("--out").arg(dir.path().join("bad")).args(["--set", "train.steps"]).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("KEY=VALUE"));
}

#[test]
fn a_real_kill_mid_run_resumes_to_the_same_losses() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.jsonl");
    common::write_sft(&data, &reckon_trainer::sft::synth::arithmetic(24, 5, true));
    let cfg = common::sft_config(dir.path(), &data, "[train]\nsteps = 40\nbatch_size = 4\ngrad_accum = 1\nseed = 9\n[optim]\nlr = 2e-3\n[checkpoint]\nevery = 1\nkeep_last = 2\n");
    let run = |out: &str| bin().arg("sft").arg("--config").arg(&cfg).arg("--out").arg(dir.path().join(out)).arg("--json").output().unwrap();
    assert!(run("whole").status.success());

    // SIGKILL once a few checkpoints exist: wherever it lands (mid-step,
    // mid-checkpoint, mid-metrics line), the next run continues exactly.
    let ckpts = dir.path().join("killed/checkpoints");
    let mut child = bin().arg("sft").arg("--config").arg(&cfg).arg("--out").arg(dir.path().join("killed")).arg("--json").spawn().unwrap();
    let t0 = std::time::Instant::now();
    while reckon_trainer::io::checkpoint::list(&ckpts).unwrap().last().map_or(0, |c| c.0) < 5 {
        assert!(t0.elapsed().as_secs() < 120, "no checkpoint appeared");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let o = run("killed");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(out["resumed_from"].as_u64().unwrap() >= 5, "{out}");
    let a: Vec<reckon_trainer::sft::StepMetrics> = reckon_trainer::run::session::read_metrics(&dir.path().join("whole/metrics.jsonl")).unwrap();
    let b: Vec<reckon_trainer::sft::StepMetrics> = reckon_trainer::run::session::read_metrics(&dir.path().join("killed/metrics.jsonl")).unwrap();
    assert_eq!(b.iter().map(|m| m.step).collect::<Vec<_>>(), (1..=40).collect::<Vec<_>>());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.loss.to_bits(), y.loss.to_bits(), "step {}", x.step);
    }
}

#[test]
fn plot_draws_a_grpo_runs_curves_from_its_metrics_and_refuses_other_files() {
    let dir = tempfile::tempdir().unwrap();
    // The claim's GRPO metrics (a run ended early at a checkpoint).
    let claim = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../results/claim-gsm8k-0.5b/grpo-metrics.jsonl");
    std::fs::copy(claim, dir.path().join("metrics.jsonl")).unwrap();
    let o = bin().arg("plot").arg("--out").arg(dir.path()).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(dir.path().join("curves.png")).unwrap().starts_with(b"\x89PNG"));
    std::fs::write(dir.path().join("metrics.jsonl"), "{\"step\": 1}\n").unwrap();
    let o = bin().arg("plot").arg("--out").arg(dir.path()).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("neither SFT"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = bin().arg("plot").arg("--out").arg(dir.path().join("missing")).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot read"));
}
