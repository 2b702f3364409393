//! The `reckon` binary as a person or a script uses it.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::model_path;

fn reckon() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_reckon"));
    c.env_remove("RUST_LOG");
    c
}

/// `reckon solve --json` on "What is 6 times 7?" with 2 threads and `args`.
fn solve_json(args: &[&str]) -> serde_json::Value {
    let out = reckon()
        .args(["solve", "--json", "--threads", "2"])
        .args(args)
        .arg("--model")
        .arg(model_path())
        .arg("What is 6 times 7?")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn solve_json_has_the_documented_fields() {
    let v = solve_json(&["--max-think", "16", "--max-answer", "8"]);
    for key in [
        "answer",
        "extracted_answer",
        "prompt_tokens",
        "thinking_tokens",
        "injected_tokens",
        "answer_tokens",
        "extensions",
        "forced_end",
        "timings",
    ] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    assert!(v["thinking_tokens"].as_u64().unwrap() <= 16);
    assert!(v["timings"]["decode_tok_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn question_from_stdin() {
    let mut child = reckon()
        .args(["solve", "--json", "--max-think", "4", "--max-answer", "4", "--model"])
        .arg(model_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"What is 1 + 1?").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["prompt_tokens"].as_u64().unwrap() > 5);
}

#[test]
fn errors_are_one_line_with_a_non_zero_exit() {
    let cases: Vec<Vec<&str>> = vec![
        vec!["solve", "--model", "/nonexistent.gguf", "hi"],
        vec!["solve", "--min-think", "10", "--max-think", "5", "hi"],
        vec!["solve", "   "],
        vec!["info", "/nonexistent.gguf"],
        vec!["solve", "--format", "bogus", "hi"],
    ];
    for args in cases {
        let out = reckon().args(&args).stdin(Stdio::null()).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.trim().lines().count() >= 1, "{args:?}: {err}");
        if args[0] != "solve" || args[1] != "--format" {
            assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
            assert!(err.starts_with("error: "), "{args:?}: {err}");
        }
    }
}

#[test]
fn info_describes_the_default_model() {
    let out = reckon().args(["info", "--json"]).arg(model_path()).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["architecture"], "qwen2");
    assert_eq!(v["quantization"], "Q4_K_M");
    assert_eq!(v["context_length"], 32768);
    assert_eq!(v["has_chat_template"], true);
    assert_eq!(v["detected_format"], "plain");
    assert_eq!(v["file_size"], 491_400_064u64);
    let text = reckon().args(["info"]).arg(model_path()).output().unwrap();
    let s = String::from_utf8_lossy(&text.stdout);
    assert!(s.contains("think format:   plain"), "{s}");
}

#[test]
fn help_explains() {
    let out = reckon().args(["solve", "--help"]).output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    for flag in ["--min-think", "--max-think", "--extensions", "--max-think-ms", "--format", "--temperature", "--seed", "--threads", "--json"] {
        assert!(s.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn bench_reports_the_overhead_ratio_as_json() {
    // Speed is measured by `reckon bench`, not asserted here: this checks
    // that the benchmark runs and reports what it promises.
    let out = reckon()
        .args(["bench", "--json", "--repeat", "1", "--max-think", "8", "--extensions", "1", "--extension-cap", "24", "--cancels", "2", "--model"])
        .arg(model_path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = &v["models"][0];
    for key in ["prefill_tok_s", "ttft_ms", "solve_decode_tok_s", "bare_decode_tok_s", "decode_ratio"] {
        assert!(m[key].as_f64().unwrap() > 0.0, "{key}: {v}");
    }
    assert!(v["extension"]["kept_cache_ms"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(v["cancel"]["cancels"], 2, "{v}");
    assert!(v["cancel"]["p99_ms"].as_f64().unwrap() >= v["cancel"]["p50_ms"].as_f64().unwrap(), "{v}");
    assert!(v["cancel"]["ms_per_step"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["cancel"]["prefill_max_ms"].as_f64().unwrap() >= v["cancel"]["prefill_p50_ms"].as_f64().unwrap(), "{v}");
    assert!(v["peak_rss_mib"].as_f64().unwrap() > 100.0, "{v}");
}

#[test]
fn solve_samples_votes_over_a_batch_of_completions() {
    let v = solve_json(&["--max-think", "24", "--max-answer", "8", "--samples", "4", "--temperature", "0.8"]);
    let samples = v["samples"].as_array().expect("samples");
    assert_eq!(samples.len(), 4);
    assert_eq!(v["vote"]["samples"], 4);
    let answers: Vec<&serde_json::Value> = samples.iter().map(|s| &s["extracted_answer"]).collect();
    let winner = &v["vote"]["answer"];
    if !winner.is_null() {
        let n = answers.iter().filter(|a| *a == &winner).count() as u64;
        assert_eq!(v["vote"]["tally"][0]["votes"].as_u64().unwrap(), n, "the winner's votes are counted from the samples");
    }
    for s in samples {
        assert!(s["thinking_tokens"].as_u64().unwrap() + s["injected_tokens"].as_u64().unwrap() <= 24);
    }
    // Human output ends with the vote and the answer line.
    let out = reckon()
        .args(["solve", "--threads", "2", "--max-think", "16", "--max-answer", "8", "--samples", "2", "--temperature", "0.8", "--model"])
        .arg(model_path())
        .arg("What is 6 times 7?")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("sample  2:") && text.contains("Vote:"), "{text}");
    // Greedy samples would be identical: refused with a message that says why.
    let out = reckon().args(["solve", "--samples", "3", "--model"]).arg(model_path()).arg("What is 1 + 1?").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--temperature"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A solve that cannot end for a long while: the floor keeps it thinking
/// for 1500 tokens (over 20 s on 2 cores).
fn long_solve(extra: &[&str]) -> std::process::Child {
    reckon()
        .args(["solve", "--threads", "2", "--min-think", "1500", "--max-think", "1600"])
        .args(extra)
        .arg("--model")
        .arg(model_path())
        .arg("What is 6 times 7?")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait at most `secs` for the child; `None` if it is still running (then killed).
fn wait_for(child: &mut std::process::Child, secs: u64) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}

#[test]
fn exit_codes_tell_bad_input_from_a_bad_model() {
    let garbage = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(garbage.path(), b"GGUF not really a model").unwrap();
    let model = model_path();
    let m = model.to_str().unwrap();
    let cases: Vec<(Vec<&str>, i32)> = vec![
        (vec!["solve", "--model", "/nonexistent.gguf", "hi"], 3),
        (vec!["solve", "--model", garbage.path().to_str().unwrap(), "hi"], 3),
        (vec!["solve", "--model", m, "--adapter", garbage.path().to_str().unwrap(), "hi"], 3),
        (vec!["info", "--model", "/nonexistent.gguf"], 3),
        (vec!["solve", "--model", m, "   "], 2),
        (vec!["solve", "--model", m, "--min-think", "10", "--max-think", "5", "hi"], 2),
        (vec!["solve", "--model", m, "--samples", "3", "hi"], 2),
        (vec!["solve", "--model", m, "--ctx", "64", "--max-think", "16", "What is 6 times 7?"], 2),
        (vec!["solve", "--format", "bogus", "hi"], 2),
    ];
    for (args, code) in cases {
        let out = reckon().args(&args).stdin(Stdio::null()).output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn json_errors_are_json_on_stdout() {
    for flag in ["--json", "--stream-json"] {
        let out = reckon().args(["solve", flag, "--model", "/nonexistent.gguf", "hi"]).output().unwrap();
        assert_eq!(out.status.code(), Some(3));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON error");
        assert_eq!(v["error"]["kind"], "model", "{v}");
        assert_eq!(v["error"]["exit_code"], 3);
        assert!(v["error"]["message"].as_str().unwrap().contains("/nonexistent.gguf"), "{v}");
        assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let out = reckon().args(["info", "--json", "--model", "/nonexistent.gguf"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON error");
    assert_eq!(v["error"]["kind"], "model");
}

#[test]
fn token_ids_account_for_every_token() {
    // SHORT ends its thinking after a few tokens: the floor injects "Wait",
    // the cap forces the end.
    let out = reckon()
        .args(["solve", "--json", "--token-ids", "--threads", "2", "--min-think", "16", "--max-think", "24", "--max-answer", "8", "--model"])
        .arg(model_path())
        .arg(common::SHORT)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let count = |k: &str| v[k].as_u64().unwrap() as usize;
    let trace = &v["trace"];
    assert_eq!(trace["prompt"].as_array().unwrap().len(), count("prompt_tokens"));
    let tokens = trace["tokens"].as_array().unwrap();
    let sampled = tokens.iter().filter(|t| t["sampled"] == true).count();
    let injected = tokens.iter().filter(|t| t["sampled"] == false).count();
    // A final end of turn is sampled but not decoded, so not counted.
    let eot = usize::from(v["finish"] == "end_of_turn");
    assert_eq!(sampled, count("thinking_tokens") + count("answer_tokens") + eot, "{v}");
    assert_eq!(injected, count("injected_tokens") + count("delimiter_tokens"), "{v}");
    assert!(count("extensions") >= 1 && count("injected_tokens") > 0 && count("delimiter_tokens") > 0, "{v}");
    assert!(tokens.iter().all(|t| t["id"].as_u64().is_some() && (t["sampled"] == true) == t["logprob"].is_number()));
    // Without JSON there is nowhere to put them.
    let out = reckon().args(["solve", "--token-ids", "--model"]).arg(model_path()).arg("1+1?").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--json"));
}

#[test]
fn stream_json_is_one_event_per_line_then_the_result() {
    let out = reckon()
        .args(["solve", "--stream-json", "--threads", "2", "--max-think", "24", "--max-answer", "8", "--model"])
        .arg(model_path())
        .arg("What is 6 times 7?")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    let (last, events) = lines.split_last().unwrap();
    assert_eq!(last["type"], "result");
    let result = &last["result"];
    let mut thinking = String::new();
    for e in events {
        match e["type"].as_str().unwrap() {
            "thinking" => thinking.push_str(e["text"].as_str().unwrap()),
            "injected" if e["segment"] == "thinking" => thinking.push_str(e["text"].as_str().unwrap()),
            "answer" | "injected" | "done" => {}
            other => panic!("unknown event {other}"),
        }
    }
    assert_eq!(events.last().unwrap()["type"], "done");
    assert_eq!(thinking, result["thinking"].as_str().unwrap());
    assert_eq!(result["thinking_tokens"].as_u64().unwrap() + result["injected_tokens"].as_u64().unwrap(), 24);
}

#[test]
fn a_reader_that_goes_away_stops_generation() {
    use std::io::Read;
    let mut child = long_solve(&[]);
    let mut first = [0u8; 64];
    child.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
    drop(child.stdout.take()); // as `| head -c 64` does
    let status = wait_for(&mut child, 15).expect("still generating 15 s after its reader left");
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "{status:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Ctrl-C: SIGINT through the shell's own `kill` (no procps needed).
fn interrupt(child: &std::process::Child) {
    let status = Command::new("sh").arg("-c").arg(format!("kill -INT {}", child.id())).status().unwrap();
    assert!(status.success());
}

#[test]
fn ctrl_c_stops_the_solve_and_prints_what_was_produced() {
    use std::io::Read;
    let mut child = long_solve(&[]);
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 64];
    out.read_exact(&mut first).unwrap();
    interrupt(&child);
    let status = wait_for(&mut child, 15).expect("still running 15 s after Ctrl-C");
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(rest.contains("Extracted answer:"), "{rest}");
    assert!(err.contains("interrupted"), "{err}");

    let mut child = long_solve(&["--json"]);
    std::thread::sleep(std::time::Duration::from_secs(3));
    interrupt(&child);
    let status = wait_for(&mut child, 15).expect("still running 15 s after Ctrl-C");
    let mut text = String::new();
    child.stdout.take().unwrap().read_to_string(&mut text).unwrap();
    assert_eq!(status.code(), Some(130));
    let v: serde_json::Value = serde_json::from_str(&text).expect("the partial result as JSON");
    assert_eq!(v["finish"], "cancelled", "{v}");
    assert!(v["thinking_tokens"].as_u64().unwrap() < 1500, "{v}");
}
