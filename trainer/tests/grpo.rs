//! GRPO on CPU at tiny scale, asserting what the paper claims: after SFT on
//! verbose traces (needless re-checking), GRPO with a length penalty cuts
//! completion length substantially while held-out accuracy does not fall;
//! without the penalty, length does not fall the same way.

mod common;

use std::path::{Path, PathBuf};

use reckon_trainer::grpo::{evaluate, read_problems, run_grpo, GrpoMetrics, Problem};
use reckon_trainer::train::{read_metrics, run_sft, RunOptions};
use reckon_trainer::{synth, weights, Qwen2, SftConfig};

const BUDGET: &str = "[rollout.budget]\nmin_thinking_tokens = 0\nmax_thinking_tokens = 96\nmax_answer_tokens = 12\n";

fn problems(n: usize, seed: u64) -> Vec<Problem> {
    synth::single_digit_sums(n, seed, false).into_iter().map(|r| Problem { question: r.question, answer: r.answer }).collect()
}

fn write_problems(path: &Path, p: &[Problem]) {
    std::fs::write(path, p.iter().map(|x| serde_json::to_string(x).unwrap() + "\n").collect::<String>()).unwrap();
}

/// SFT a tiny model on verbose traces; returns its checkpoint.
fn sft_verbose(dir: &Path) -> PathBuf {
    let data = dir.join("verbose.jsonl");
    common::write_sft(&data, &synth::single_digit_sums(400, 31, true));
    let cfg = dir.join("sft.toml");
    std::fs::write(
        &cfg,
        format!(
            "[model]\nsource = \"tiny\"\n[data]\ntrain = \"{}\"\nmax_seq_len = 256\nsystem_prompt = \"\"\n[train]\nsteps = 800\nbatch_size = 8\ngrad_accum = 1\nseed = 3\n[optim]\nlr = 3e-3\nwarmup_steps = 20\n[checkpoint]\nevery = 800\n",
            data.display()
        ),
    )
    .unwrap();
    run_sft(&SftConfig::load(&cfg).unwrap(), &RunOptions { out: dir.join("sft"), ..Default::default() }).unwrap().checkpoint.unwrap()
}

fn grpo_config(dir: &Path, name: &str, ckpt: &Path, train: &Path, length: &str) -> PathBuf {
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[model]\nsource = \"{}\"\n[data]\ntrain = \"{}\"\nsystem_prompt = \"\"\n[rollout]\ngroup_size = 8\nsampling = {{ temperature = 1.0, top_p = 1.0 }}\n{BUDGET}\n[reward]\nscale_by_std = true\nweights = {{ correctness = 1.0, format = 0.2, length = 1.0 }}\nlength = {length}\n[objective]\nepsilon = 0.2\naggregation = \"grpo\"\n[train]\nsteps = 30\nprompts_per_step = 4\nnum_iterations = 1\nseed = 5\n[optim]\nlr = 1e-4\nmin_lr_ratio = 1.0\n[checkpoint]\nevery = 100\n",
            ckpt.display(),
            train.display()
        ),
    )
    .unwrap();
    cfg
}

fn eval(source: &Path, held_out: &[Problem]) -> (f64, f64) {
    let src = weights::load(source).unwrap();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let model = Qwen2::from_tensors(src.config, src.tensors, None, &mut rng, &candle_core::Device::Cpu).unwrap();
    let budget: reckon::BudgetConfig = toml::from_str::<toml::Value>(BUDGET).unwrap()["rollout"]["budget"].clone().try_into().unwrap();
    evaluate(&model, &src.tok, "", held_out, &budget).unwrap()
}

#[test]
fn length_penalty_cuts_tokens_without_losing_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sft = sft_verbose(d);
    let train = d.join("train.jsonl");
    write_problems(&train, &problems(200, 41));
    let held_out = problems(40, 77);
    let (acc0, len0) = eval(&sft, &held_out);
    eprintln!("after SFT: accuracy {acc0:.3}, mean length {len0:.1}");

    let with = grpo_config(d, "with", &sft, &train, "{ kind = \"kimi\" }");
    let cfg = reckon_trainer::config::GrpoConfig::load(&with).unwrap();
    let rows = run_grpo(&cfg, &RunOptions { out: d.join("with"), ..Default::default() }).unwrap();
    let ck_with = reckon_trainer::checkpoint::list(&d.join("with/checkpoints")).unwrap().pop().unwrap().1;
    let (acc1, len1) = eval(&ck_with, &held_out);
    eprintln!("GRPO + length: accuracy {acc1:.3}, mean length {len1:.1}; train curve {:?}", rows.iter().map(|m| (m.mean_length as i64, (m.accuracy * 100.0) as i64)).collect::<Vec<_>>());

    let without = grpo_config(d, "without", &sft, &train, "{ kind = \"none\" }");
    let cfg = reckon_trainer::config::GrpoConfig::load(&without).unwrap();
    run_grpo(&cfg, &RunOptions { out: d.join("without"), ..Default::default() }).unwrap();
    let ck_without = reckon_trainer::checkpoint::list(&d.join("without/checkpoints")).unwrap().pop().unwrap().1;
    let (acc2, len2) = eval(&ck_without, &held_out);
    eprintln!("GRPO no length: accuracy {acc2:.3}, mean length {len2:.1}");
    let png = std::fs::read(d.join("with/curves.png")).unwrap();
    assert_eq!(&png[..4], b"\x89PNG");
    let m: Vec<GrpoMetrics> = read_metrics(&d.join("with/metrics.jsonl")).unwrap();
    assert_eq!(m.len(), 30);
    let _ = read_problems(&train).unwrap();
    assert!(len1 <= 0.7 * len0, "length fell only from {len0:.1} to {len1:.1}");
    assert!(acc1 >= acc0 - 0.05, "accuracy fell from {acc0:.3} to {acc1:.3}");
    assert!(len2 > 0.85 * len0, "without the penalty length fell too: {len0:.1} → {len2:.1}");
}
