//! On an NVIDIA GPU: the CUDA build computes what the CPU computes. A tiny
//! model's loss and gradients on CUDA (f32, candle's primitive ops) equal
//! the CPU's (f32, the fused kernels), with and without LoRA; bf16 compute
//! stays close to f32; a short SFT and GRPO run on CUDA end with finite,
//! checkpointed metrics.
//!
//! Built only with `--features cuda` (a CPU build has nothing here to run);
//! `scripts/gpu-check.sh` runs it on a lent GPU machine. Every test needs a
//! device: without one it fails, it does not skip.
#![cfg(feature = "cuda")]

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use reckon_trainer::model::{LoraConfig, Qwen2, LORA_TARGETS};
use reckon_trainer::rl::{run_grpo, GrpoMetrics};
use reckon_trainer::run::session::read_metrics;
use reckon_trainer::sft::data::{make_batch, Example};
use reckon_trainer::sft::synth;
use reckon_trainer::sft::train::sft_loss;
use reckon_trainer::sft::{run_sft, StepMetrics};
use reckon_trainer::{GrpoConfig, RunOptions, SftConfig};

fn gpu() -> Device {
    Device::new_cuda(0).expect("a CUDA device (this test runs only on a GPU machine)")
}

fn tokens(n: usize, vocab: usize, seed: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 31 + seed * 17 + 5) % vocab) as u32).collect()
}

/// The same weights (non-zero biases, norms away from 1, LoRA's B away from
/// zero so adapters matter) on `device`.
fn model_on(lora: Option<LoraConfig>, device: &Device) -> Qwen2 {
    let (tiny, _) = common::tiny(5);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let start = Qwen2::from_tensors(tiny.config.clone(), tiny.tensors(), lora.clone(), &mut rng, &Device::Cpu).unwrap();
    let mut noise = ChaCha8Rng::seed_from_u64(9);
    let tensors: BTreeMap<String, Tensor> = start
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            let bump = n.ends_with(".bias") || n.ends_with("norm.weight") || n.contains("lora_B");
            if !bump {
                return (n, t);
            }
            let vals: Vec<f32> = (0..t.elem_count()).map(|_| rand::Rng::random_range(&mut noise, -0.2f32..0.2)).collect();
            let d = Tensor::from_vec(vals, t.shape(), &Device::Cpu).unwrap();
            (n, (t + d).unwrap())
        })
        .collect();
    Qwen2::from_tensors(tiny.config.clone(), tensors, lora, &mut rng, device).unwrap()
}

/// Two lengths (padding), loss on the second half of each.
fn examples(vocab: usize) -> Vec<Example> {
    [tokens(14, vocab, 5), tokens(9, vocab, 6)]
        .iter()
        .map(|s| Example { ids: s.clone(), trained: (0..s.len()).map(|i| u8::from(i >= s.len() / 2)).collect() })
        .collect()
}

/// The loss and each trainable tensor's gradient, on the model's device.
fn loss_and_grads(model: &Qwen2) -> (f64, Vec<(String, Vec<f64>)>) {
    let ex = examples(model.config.vocab_size);
    let b = make_batch(&ex.iter().collect::<Vec<_>>(), 0, model.device()).unwrap();
    let loss = sft_loss(model, &b, b.n_loss_tokens, None).unwrap();
    let g = loss.backward().unwrap();
    let grads = model
        .trainable()
        .into_iter()
        .map(|(name, v)| {
            let t = g.get(v.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
            (name, t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap())
        })
        .collect();
    (loss.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap(), grads)
}

fn max_rel_gap(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-12);
    a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (n(a) * n(b)).max(1e-300)
}

fn all_targets() -> LoraConfig {
    LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, targets: LORA_TARGETS.iter().map(|s| s.to_string()).collect() }
}

#[test]
fn cuda_loss_and_gradients_equal_the_cpus() {
    let dev = gpu();
    for lora in [None, Some(all_targets())] {
        let (lc, gc) = loss_and_grads(&model_on(lora.clone(), &Device::Cpu));
        let (lg, gg) = loss_and_grads(&model_on(lora.clone(), &dev));
        assert!((lc - lg).abs() / lc.abs() < 1e-4, "loss: CPU {lc} vs CUDA {lg} (lora: {})", lora.is_some());
        assert_eq!(gc.len(), gg.len());
        for ((name, a), (_, b)) in gc.iter().zip(&gg) {
            let gap = max_rel_gap(b, a);
            assert!(gap < 1e-3, "{name}: CUDA gradient differs from the CPU's by {gap:e} of its largest entry (lora: {})", lora.is_some());
        }
    }
}

#[test]
fn bf16_compute_stays_close_to_f32() {
    let dev = gpu();
    for lora in [None, Some(all_targets())] {
        let f32_model = model_on(lora.clone(), &dev);
        let mut bf16_model = model_on(lora.clone(), &dev);
        bf16_model.set_compute_dtype(DType::BF16);
        let (l32, g32) = loss_and_grads(&f32_model);
        let (l16, g16) = loss_and_grads(&bf16_model);
        assert!(l16.is_finite() && (l32 - l16).abs() / l32.abs() < 0.02, "loss: f32 {l32} vs bf16 {l16} (lora: {})", lora.is_some());
        for ((name, a), (_, b)) in g32.iter().zip(&g16) {
            assert!(b.iter().all(|x| x.is_finite()), "{name}: bf16 gradient not finite");
            let c = cosine(a, b);
            assert!(c > 0.98, "{name}: bf16 gradient's cosine to f32's is {c} (lora: {})", lora.is_some());
        }
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// SFT then GRPO on a tiny model, both on CUDA in bf16: the losses fall,
/// every metric is finite, and the checkpoints resume.
#[test]
fn sft_then_grpo_run_on_cuda() {
    gpu();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("v.jsonl");
    common::write_sft(&data, &synth::single_digit_sums(128, 8, true));
    let sft_cfg = d.join("sft.toml");
    write(
        &sft_cfg,
        &format!("[model]\nsource = \"tiny\"\ndevice = \"cuda\"\ncompute_dtype = \"bf16\"\n[data]\ntrain = \"{}\"\nmax_seq_len = 256\nsystem_prompt = \"\"\n[train]\nsteps = 60\nbatch_size = 8\ngrad_accum = 1\nseed = 1\n[optim]\nlr = 3e-3\n[checkpoint]\nevery = 30\n", data.display()),
    );
    let out = run_sft(&SftConfig::load(&sft_cfg).unwrap(), &RunOptions { out: d.join("sft"), ..Default::default() }).unwrap();
    let rows: Vec<StepMetrics> = read_metrics(&d.join("sft/metrics.jsonl")).unwrap();
    assert_eq!(rows.len(), 60);
    assert!(rows.iter().all(|r| r.loss.is_finite()));
    let first: f64 = rows[..5].iter().map(|r| r.loss).sum::<f64>() / 5.0;
    let last: f64 = rows[55..].iter().map(|r| r.loss).sum::<f64>() / 5.0;
    assert!(last < 0.7 * first, "SFT loss on CUDA falls: {first} -> {last}");

    let problems = d.join("p.jsonl");
    let text: String = synth::single_digit_sums(16, 3, false)
        .into_iter()
        .map(|r| serde_json::json!({ "question": r.question, "answer": r.answer }).to_string() + "\n")
        .collect();
    write(&problems, &text);
    let grpo_cfg = d.join("grpo.toml");
    write(
        &grpo_cfg,
        &format!(
            "[model]\nsource = \"{}\"\ndevice = \"cuda\"\ncompute_dtype = \"bf16\"\n[data]\ntrain = \"{}\"\nsystem_prompt = \"\"\n[rollout]\ngroup_size = 4\nsampling = {{ temperature = 1.0, top_p = 1.0 }}\nbudget = {{ min_thinking_tokens = 0, max_thinking_tokens = 48, max_answer_tokens = 8 }}\n[reward]\nweights = {{ correctness = 1.0, format = 0.2, length = 1.0 }}\nlength = {{ kind = \"gated\", min_group_accuracy = 0.5 }}\n[train]\nsteps = 4\nprompts_per_step = 2\nnum_iterations = 1\nseed = 5\n[optim]\nlr = 1e-4\n[checkpoint]\nevery = 2\n",
            out.checkpoint.unwrap().display(),
            problems.display()
        ),
    );
    let cfg = GrpoConfig::load(&grpo_cfg).unwrap();
    run_grpo(&cfg, &RunOptions { out: d.join("grpo"), stop_after: Some(2), ..Default::default() }).unwrap();
    run_grpo(&cfg, &RunOptions { out: d.join("grpo"), ..Default::default() }).unwrap();
    let rows: Vec<GrpoMetrics> = read_metrics(&d.join("grpo/metrics.jsonl")).unwrap();
    assert_eq!(rows.len(), 4, "two steps, then two more after resuming");
    for r in &rows {
        assert!(r.reward.is_finite() && r.mean_length.is_finite() && r.grad_norm.is_finite(), "step {}: {r:?}", r.step);
    }
}
