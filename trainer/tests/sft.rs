//! SFT end to end on tiny models: it learns, resumes exactly, and every bad
//! input gets a clear error that loses nothing.

mod common;

use reckon_trainer::sft::synth;
use reckon_trainer::run::session::read_metrics;
use reckon_trainer::sft::{run_sft, StepMetrics};
use reckon_trainer::RunOptions;
use reckon_trainer::io::checkpoint;
use reckon_trainer::SftConfig;

fn opts(out: &std::path::Path) -> RunOptions {
    RunOptions { out: out.to_path_buf(), ..Default::default() }
}

#[test]
fn overfits_a_handful_of_examples() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.jsonl");
    common::write_sft(&data, &synth::arithmetic(4, 11, false));
    let cfg = common::sft_config(
        dir.path(),
        &data,
        "[train]\nsteps = 120\nbatch_size = 4\ngrad_accum = 1\nseed = 1\n\n[optim]\nlr = 3e-3\nwarmup_steps = 5\nmin_lr_ratio = 0.1\n\n[checkpoint]\nevery = 1000\n",
    );
    // Its speed is a benchmark's (`reckon-train bench`), not a test's.
    let out = run_sft(&SftConfig::load(&cfg).unwrap(), &opts(&dir.path().join("run"))).unwrap();
    let first = out.metrics.first().unwrap().loss;
    let last = out.metrics.last().unwrap().loss;
    assert!(first > 3.0, "a random model starts near ln(vocab): {first}");
    assert!(last < 0.05, "loss after 120 steps: {last} (from {first})");
    let png = std::fs::read(dir.path().join("run/loss.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let lines: Vec<StepMetrics> = read_metrics(&dir.path().join("run/metrics.jsonl")).unwrap();
    assert_eq!(lines.len(), 120);
    assert!(lines.iter().all(|m| m.tokens_per_s > 0.0 && m.grad_norm.is_finite() && m.lr > 0.0));
}

fn resume_config(dir: &std::path::Path, extra: &str) -> SftConfig {
    let data = dir.join("train.jsonl");
    common::write_sft(&data, &synth::arithmetic(24, 12, true));
    let cfg = common::sft_config(
        dir,
        &data,
        &format!("{extra}\n[train]\nsteps = 8\nbatch_size = 3\ngrad_accum = 2\nseed = 5\n\n[optim]\nlr = 2e-3\nwarmup_steps = 2\nweight_decay = 0.1\n\n[checkpoint]\nevery = 2\nkeep_last = 2\n"),
    );
    SftConfig::load(&cfg).unwrap()
}

fn resume_is_exact_with(extra: &str) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = resume_config(dir.path(), extra);
    let whole = run_sft(&cfg, &opts(&dir.path().join("whole"))).unwrap();
    assert_eq!(whole.step, 8);
    let split = dir.path().join("split");
    let first = run_sft(&cfg, &RunOptions { stop_after: Some(3), ..opts(&split) }).unwrap();
    assert_eq!(first.step, 3);
    let second = run_sft(&cfg, &opts(&split)).unwrap();
    assert_eq!(second.resumed_from, 3);
    let a: Vec<StepMetrics> = read_metrics(&dir.path().join("whole/metrics.jsonl")).unwrap();
    let b: Vec<StepMetrics> = read_metrics(&split.join("metrics.jsonl")).unwrap();
    assert_eq!(a.len(), 8);
    assert_eq!(b.iter().map(|m| m.step).collect::<Vec<_>>(), (1..=8).collect::<Vec<_>>(), "no duplicate or lost steps");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.loss.to_bits(), y.loss.to_bits(), "step {}: loss {} vs resumed {}", x.step, x.loss, y.loss);
        assert_eq!(x.grad_norm.to_bits(), y.grad_norm.to_bits(), "step {}: grad norm", x.step);
    }
    let kept = checkpoint::list(&split.join("checkpoints")).unwrap();
    assert_eq!(kept.iter().map(|k| k.0).collect::<Vec<_>>(), vec![6, 8], "keep_last = 2");
}

#[test]
fn a_run_stopped_and_resumed_gives_the_same_losses() {
    resume_is_exact_with("");
}

#[test]
fn lora_with_dropout_resumes_exactly_too() {
    resume_is_exact_with("[lora]\nrank = 4\nalpha = 8.0\ndropout = 0.2\ntargets = [\"q_proj\", \"v_proj\", \"up_proj\"]\n");
}

/// A LoRA run on a base in a file stores only its adapters and their
/// moments, pins the base by SHA-256, and resumes from that exactly; a
/// changed or missing base is refused, by name, before anything trains.
#[test]
fn adapter_only_checkpoints_pin_their_base_and_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The base: a tiny model after one step, exported as an f32 GGUF.
    let base_cfg = resume_config(d, "");
    let first = run_sft(&base_cfg, &RunOptions { stop_after: Some(1), ..opts(&d.join("base")) }).unwrap();
    let gguf = d.join("base.gguf");
    let eopts = reckon_trainer::io::export::ExportOptions { out: gguf.clone(), file_type: "f32".into(), force: false, threads: 2, name: None, license: "mit".into() };
    reckon_trainer::io::export::export(&first.checkpoint.unwrap(), &eopts).unwrap();
    let cfg_path = d.join("lora.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "[model]\nsource = \"{}\"\n[lora]\nrank = 4\nalpha = 8.0\ndropout = 0.1\ntargets = [\"q_proj\", \"v_proj\", \"down_proj\"]\n[data]\ntrain = \"{}\"\nmax_seq_len = 256\n[train]\nsteps = 6\nbatch_size = 3\ngrad_accum = 1\nseed = 2\n[optim]\nlr = 2e-3\n[checkpoint]\nevery = 2\nkeep_last = 2\n",
            gguf.display(),
            d.join("train.jsonl").display()
        ),
    )
    .unwrap();
    let cfg = SftConfig::load(&cfg_path).unwrap();
    assert!(cfg.checkpoint.adapter_only, "adapter-only is the default under [lora]");
    run_sft(&cfg, &opts(&d.join("whole"))).unwrap();
    let split = d.join("split");
    run_sft(&cfg, &RunOptions { stop_after: Some(3), ..opts(&split) }).unwrap();
    assert_eq!(run_sft(&cfg, &opts(&split)).unwrap().resumed_from, 3);
    let a: Vec<StepMetrics> = read_metrics(&d.join("whole/metrics.jsonl")).unwrap();
    let b: Vec<StepMetrics> = read_metrics(&split.join("metrics.jsonl")).unwrap();
    assert_eq!((a.len(), b.len()), (6, 6));
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.loss.to_bits(), y.loss.to_bits(), "step {}: loss {} vs resumed {}", x.step, x.loss, y.loss);
    }

    // Parked with bf16 moments (what a long run commits between sessions):
    // two thirds of the bytes, and the run resumes from it close to exactly.
    let early = d.join("early");
    run_sft(&cfg, &RunOptions { stop_after: Some(3), ..opts(&early) }).unwrap();
    let (_, ck3) = checkpoint::list(&early.join("checkpoints")).unwrap().pop().unwrap();
    let parked = d.join("parked");
    let pk = checkpoint::slim(&ck3, &parked.join("checkpoints"), checkpoint::SlimMoments::Bf16).unwrap();
    let opt_bytes = |dir: &std::path::Path| std::fs::metadata(dir.join("optimizer.safetensors")).unwrap().len();
    assert!(opt_bytes(&pk) * 2 <= opt_bytes(&ck3) + 4096, "bf16 moments: {} bytes vs {}", opt_bytes(&pk), opt_bytes(&ck3));
    let stored = checkpoint::load_stored(&pk).unwrap();
    assert!(!stored.optimizer.is_empty() && stored.optimizer.values().all(|t| t.dtype() == candle_core::DType::BF16));
    std::fs::copy(early.join("metrics.jsonl"), parked.join("metrics.jsonl")).unwrap();
    assert_eq!(run_sft(&cfg, &opts(&parked)).unwrap().resumed_from, 3);
    let c: Vec<StepMetrics> = read_metrics(&parked.join("metrics.jsonl")).unwrap();
    assert_eq!(c.len(), 6);
    for (x, y) in a.iter().zip(&c).skip(3) {
        let rel = ((x.loss - y.loss) / x.loss).abs();
        assert!(rel < 1e-2, "step {}: loss {} vs resumed from bf16 moments {}", x.step, x.loss, y.loss);
    }
    let dropped = checkpoint::slim(&ck3, &d.join("dropped"), checkpoint::SlimMoments::Drop).unwrap();
    assert!(checkpoint::load_stored(&dropped).unwrap().optimizer.is_empty());

    let (_, ck) = checkpoint::list(&split.join("checkpoints")).unwrap().pop().unwrap();
    let stored = checkpoint::load_stored(&ck).unwrap();
    assert!(!stored.tensors.is_empty() && stored.tensors.keys().all(|k| k.contains(".lora_")), "only adapters stored: {:?}", stored.tensors.keys().take(3).collect::<Vec<_>>());
    let pinned = stored.state.base.clone().expect("the base is pinned");
    assert_eq!(pinned.bytes, std::fs::metadata(&gguf).unwrap().len());
    let size = |f: &str| std::fs::metadata(ck.join(f)).unwrap().len();
    assert!(size("model.safetensors") * 4 < pinned.bytes, "{} bytes of adapters vs a {}-byte base", size("model.safetensors"), pinned.bytes);
    let full = checkpoint::load(&ck).unwrap();
    assert!(full.tensors.contains_key("model.embed_tokens.weight") && full.tensors.keys().any(|k| k.contains(".lora_")), "laid over its base");

    // Another base under the same name: refused, naming both hashes.
    let mut bytes = std::fs::read(&gguf).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0x01;
    std::fs::write(&gguf, &bytes).unwrap();
    let e = format!("{:#}", run_sft(&cfg, &opts(&split)).err().expect("a changed base must not load"));
    assert!(e.contains("trained on") && e.contains(&pinned.sha256[..12]), "{e}");
    std::fs::remove_file(&gguf).unwrap();
    let e = format!("{:#}", checkpoint::load(&ck).err().expect("a missing base must not load"));
    assert!(e.contains("is missing") && e.contains("base.gguf"), "{e}");
}

#[test]
fn corrupt_and_unfinished_checkpoints_are_never_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = resume_config(dir.path(), "");
    let out = dir.path().join("run");
    run_sft(&cfg, &RunOptions { stop_after: Some(2), ..opts(&out) }).unwrap();
    let root = out.join("checkpoints");
    let (_, ck) = checkpoint::list(&root).unwrap().pop().unwrap();

    // An unfinished write (no rename) is ignored: the run resumes from step 2.
    std::fs::create_dir_all(root.join("step-00000009.partial")).unwrap();
    assert_eq!(checkpoint::latest(&root).unwrap().unwrap().state.step, 2);

    // One flipped byte in the weights: reported, not loaded.
    let weights = ck.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x55;
    std::fs::write(&weights, &bytes).unwrap();
    let err = format!("{:#}", run_sft(&cfg, &opts(&out)).err().expect("corrupt checkpoint must not load"));
    assert!(err.contains("corrupt") && err.contains("model.safetensors"), "{err}");
    // A truncated optimizer file and a missing manifest are caught too.
    std::fs::write(&weights, { bytes[n - 3] ^= 0x55; &bytes }).unwrap();
    let opt = ck.join("optimizer.safetensors");
    let len = std::fs::metadata(&opt).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&opt).unwrap().set_len(len / 2).unwrap();
    assert!(format!("{:#}", checkpoint::load(&ck).err().unwrap()).contains("optimizer.safetensors"));
    std::fs::remove_file(ck.join("manifest.json")).unwrap();
    assert!(format!("{:#}", checkpoint::load(&ck).err().unwrap()).contains("incomplete"));
}

#[test]
fn a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.jsonl");
    common::write_sft(&data, &synth::arithmetic(8, 13, false));
    let cfg = common::sft_config(
        dir.path(),
        &data,
        "[train]\nsteps = 20\nbatch_size = 2\ngrad_accum = 1\nseed = 0\n\n[optim]\nlr = 1e30\nclip_grad_norm = 0.0\n\n[checkpoint]\nevery = 1\nkeep_last = 3\n",
    );
    let out = dir.path().join("run");
    let err = run_sft(&SftConfig::load(&cfg).unwrap(), &opts(&out)).err().expect("training must stop");
    let msg = format!("{err:#}");
    assert!(msg.contains("non-finite"), "{msg}");
    let kept = checkpoint::list(&out.join("checkpoints")).unwrap();
    assert!(!kept.is_empty(), "the last good checkpoint is kept");
    let (step, dir_ck) = kept.last().unwrap();
    assert!(msg.contains(&dir_ck.display().to_string()), "the error names the kept checkpoint: {msg}");
    checkpoint::load(dir_ck).expect("the kept checkpoint is intact");
    assert!(*step < 20);
}

#[test]
fn bad_inputs_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = "[train]\nsteps = 2\nbatch_size = 1\ngrad_accum = 1\nseed = 0\n";
    let out = d.join("run");
    let fail = |data_text: &str, extra: &str| -> String {
        let data = d.join("bad.jsonl");
        std::fs::write(&data, data_text).unwrap();
        let cfg = common::sft_config(d, &data, extra);
        let r = SftConfig::load(&cfg).and_then(|c| run_sft(&c, &RunOptions { fresh: true, ..opts(&out) }));
        format!("{:#}", r.err().expect("must fail"))
    };
    let good = serde_json::to_string(&synth::arithmetic(1, 1, false)[0]).unwrap();
    // A malformed line: its number.
    let e = fail(&format!("{good}\n{good}\n{{\"question\": \"x\"\n"), base);
    assert!(e.contains("bad.jsonl:3") && e.contains("malformed"), "{e}");
    // A record missing a field.
    let e = fail(&format!("{good}\n{{\"question\": \"x\", \"answer\": \"1\"}}\n"), base);
    assert!(e.contains("bad.jsonl:2") && e.contains("thinking"), "{e}");
    // Empty.
    let e = fail("\n\n", base);
    assert!(e.contains("empty"), "{e}");
    // A sequence longer than the model's context (1024 for tiny).
    let data = d.join("ok.jsonl");
    std::fs::write(&data, format!("{good}\n")).unwrap();
    let cfg = d.join("long.toml");
    std::fs::write(&cfg, format!("[model]\nsource = \"tiny\"\n[data]\ntrain = \"{}\"\nmax_seq_len = 4096\n{base}", data.display())).unwrap();
    let e = format!("{:#}", run_sft(&SftConfig::load(&cfg).unwrap(), &RunOptions { fresh: true, ..opts(&out) }).err().unwrap());
    assert!(e.contains("context") && e.contains("4096"), "{e}");
    // Too long with on_too_long = "error".
    let long = serde_json::json!({"question": "q", "thinking": "step ".repeat(400), "answer": "1"}).to_string();
    std::fs::write(&cfg, format!("[model]\nsource = \"tiny\"\n[data]\ntrain = \"{}\"\nmax_seq_len = 200\non_too_long = \"error\"\n{base}", data.display())).unwrap();
    std::fs::write(&data, format!("{good}\n{long}\n")).unwrap();
    let e = format!("{:#}", run_sft(&SftConfig::load(&cfg).unwrap(), &RunOptions { fresh: true, ..opts(&out) }).err().unwrap());
    assert!(e.contains("record 2") && e.contains("max_seq_len"), "{e}");
    // Invalid settings are refused before anything runs.
    for (extra, needle) in [
        ("[train]\nsteps = 0\nbatch_size = 1\ngrad_accum = 1\nseed = 0\n", "train.steps"),
        ("[optim]\nlr = -1.0\n", "optim.lr"),
        ("[lora]\nrank = 4\nalpha = 8.0\ntargets = [\"qq_proj\"]\n", "qq_proj"),
        ("[train]\nstep = 3\n", "unknown field"),
    ] {
        let cfg = common::sft_config(d, &data, extra);
        let e = format!("{:#}", SftConfig::load(&cfg).err().expect(extra));
        assert!(e.contains(needle), "{extra}: {e}");
    }
    // A missing data file.
    let cfg = common::sft_config(d, &d.join("nope.jsonl"), base);
    let e = format!("{:#}", run_sft(&SftConfig::load(&cfg).unwrap(), &opts(&out)).err().unwrap());
    assert!(e.contains("nope.jsonl"), "{e}");
}

#[test]
fn truncation_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("t.jsonl");
    let mut recs = synth::arithmetic(3, 2, false);
    recs[1].thinking = "check ".repeat(300);
    common::write_sft(&data, &recs);
    let cfg = common::sft_config(dir.path(), &data, "[train]\nsteps = 1\nbatch_size = 3\ngrad_accum = 1\nseed = 0\n");
    let mut cfg = SftConfig::load(&cfg).unwrap();
    cfg.data.max_seq_len = 200;
    let o = run_sft(&cfg, &opts(&dir.path().join("r"))).unwrap();
    assert_eq!(o.data.truncated, 1);
    assert_eq!(o.data.dropped, 0);
}
