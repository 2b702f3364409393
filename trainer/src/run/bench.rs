//! Training-step throughput, memory and model-FLOPs utilization (MFU)
//! against this machine's own measured f32 matmul peak.
//!
//! FLOPs are counted for the work a step needs, not for what it happens to
//! do: per token, 2 FLOPs per weight of every matrix product forward, and
//! backward 2 more for the input gradient plus 2 for the weight gradient of
//! trained weights only: 6N for full fine-tuning, 4N for a frozen base
//! (LoRA) plus 6 per adapter weight. The LM head counts only on rows that
//! carry loss; attention (QKᵀ and PV over the padded length) adds
//! 12 · layers · heads · head_dim · len per token. The peak is a large
//! square f32 product through the same matmul path (the `gemm` crate) the
//! model uses, timed in the same run.

use std::time::Instant;

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::rl::config::{GrpoConfig, GrpoData, GrpoTrain, RolloutSection};
use crate::run::config::{ComputeDtype, DeviceChoice, ModelSection, OptimConfig};
use crate::sft::data::{make_batch, Example};
use crate::rl::grpo::{policy_update, Scored, UpdateStats};
use crate::model::{tiny_config, LoraConfig, Qwen2, Qwen2Config, LORA_TARGETS};
use crate::run::optim::AdamW;
use crate::run::session::{accumulate, Guard};
use crate::sft::train::sft_loss;

/// Qwen2.5-0.5B's shape (494M parameters, tied embeddings).
pub fn qwen2_5_0_5b_config() -> Qwen2Config {
    Qwen2Config {
        vocab_size: 151_936,
        hidden_size: 896,
        intermediate_size: 4864,
        num_hidden_layers: 24,
        num_attention_heads: 14,
        num_key_value_heads: 2,
        max_position_embeddings: 32_768,
        rope_theta: 1_000_000.0,
        rms_norm_eps: 1e-6,
        tie_word_embeddings: true,
    }
}

/// The tiny shape with a small vocabulary.
pub fn tiny_bench_config() -> Qwen2Config {
    tiny_config(512)
}

/// What a step trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Next-token loss on every token of `batch` sequences of `seq_len`.
    Sft,
    /// The GRPO policy update (clipped objective, micro-batched) on `batch`
    /// completions of up to `seq_len` tokens after a 96-token prompt, lengths
    /// spread from half to all of `seq_len` (no rollouts: the update alone).
    Grpo,
}

/// One benchmark row.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    /// `tiny` or `0.5b`.
    pub shape: String,
    /// `sft` or `grpo`.
    pub mode: Mode,
    /// LoRA rank (None: full fine-tuning).
    pub lora_rank: Option<usize>,
    /// Base parameters.
    pub params: usize,
    /// Parameters the optimizer updates.
    pub trainable: usize,
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per sequence (the completion cap in GRPO mode).
    pub seq_len: usize,
    /// Median seconds per step (forward, backward, AdamW).
    pub step_s: f64,
    /// Tokens that carry loss, per second.
    pub trained_tokens_per_s: f64,
    /// FLOPs one step needs (see the module docs).
    pub step_flops: f64,
    /// Achieved FLOP/s.
    pub flops: f64,
    /// The measured matmul peak in the compute type (or the one given).
    pub peak_flops: f64,
    /// Achieved / peak.
    pub mfu: f64,
    /// Peak resident memory of the process so far, MiB.
    pub peak_rss_mib: f64,
    /// CUDA: device memory in use after the timed steps (total − free),
    /// MiB; the allocator's pool keeps freed blocks, so this is close to a
    /// step's peak. None on the CPU.
    pub gpu_used_mib: Option<f64>,
    /// Micro-batches per step (GRPO mode).
    pub micro_batches: usize,
    /// Threads (rayon) used.
    pub threads: usize,
    /// Device.
    pub device: String,
    /// Compute type (`f32`, `bf16`, `f16`).
    pub dtype: String,
}

/// The f32 matmul peak: the best of five `n×n·n×n` products (after a
/// warm-up) through candle's matmul in `dtype` (f32 on the CPU; bf16 on
/// CUDA runs on its tensor cores), FLOP/s.
pub fn matmul_peak(n: usize, dtype: DType, device: &Device) -> Result<f64> {
    let a = Tensor::randn(0f32, 1.0, (n, n), device)?.to_dtype(dtype)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), device)?.to_dtype(dtype)?;
    let mut best = f64::MAX;
    for i in 0..6 {
        let t0 = Instant::now();
        let c = a.matmul(&b)?;
        device.synchronize()?;
        drop(c);
        if i > 0 {
            best = best.min(t0.elapsed().as_secs_f64());
        }
    }
    Ok(2.0 * (n as f64).powi(3) / best)
}

/// Weights of every matrix product, and of the LM head, separately.
fn matmul_params(c: &Qwen2Config) -> (usize, usize) {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let kv = c.num_key_value_heads * c.head_dim();
    let per_layer = h * h + 2 * kv * h + h * h + 3 * i * h;
    (per_layer * c.num_hidden_layers, c.vocab_size * h)
}

/// Adapter weights for `lora` on every target of `c`.
fn lora_params(c: &Qwen2Config, lora: &LoraConfig) -> usize {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let kv = c.num_key_value_heads * c.head_dim();
    let dims = |t: &str| match t {
        "q_proj" | "o_proj" => (h, h),
        "k_proj" | "v_proj" => (h, kv),
        "gate_proj" | "up_proj" => (h, i),
        _ => (i, h),
    };
    lora.targets.iter().map(|t| dims(t)).map(|(a, b)| lora.rank * (a + b)).sum::<usize>() * c.num_hidden_layers
}

/// FLOPs a step needs: `seqs` sequences of `lens` padded tokens each
/// through the decoder, the head on `loss_rows` rows.
pub fn step_flops(c: &Qwen2Config, lora: Option<&LoraConfig>, padded_lens: &[usize], loss_rows: usize) -> f64 {
    let (linear, head) = matmul_params(c);
    let tokens: usize = padded_lens.iter().sum();
    let per_weight = if lora.is_some() { 4.0 } else { 6.0 };
    let adapters = lora.map_or(0.0, |l| 6.0 * lora_params(c, l) as f64 * tokens as f64);
    let attn: f64 = padded_lens.iter().map(|&t| 12.0 * (c.num_hidden_layers * c.num_attention_heads * c.head_dim()) as f64 * (t * t) as f64).sum();
    per_weight * (linear as f64 * tokens as f64 + head as f64 * loss_rows as f64) + adapters + attn
}

/// Peak resident memory of this process (VmHWM), MiB.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|k| k.parse::<f64>().ok()))
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Device memory in use on `device` (CUDA), MiB.
fn gpu_used_mib(device: &Device) -> Option<f64> {
    #[cfg(feature = "cuda")]
    if let Ok(d) = device.as_cuda_device() {
        if let Ok((free, total)) = d.cuda_stream().context().mem_get_info() {
            return Some((total - free) as f64 / 1_048_576.0);
        }
    }
    let _ = device;
    None
}

/// Settings of one benchmark.
#[derive(Debug, Clone)]
pub struct BenchSpec {
    /// Row label.
    pub shape: String,
    /// The architecture (random weights).
    pub config: Qwen2Config,
    /// What a step trains on.
    pub mode: Mode,
    /// LoRA rank on every linear layer (alpha = 2·rank); None: full.
    pub lora_rank: Option<usize>,
    /// Sequences (SFT) or completions (GRPO) per step.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Timed steps after one warm-up; the median is reported.
    pub steps: usize,
    /// GRPO micro-batch budget in padded tokens.
    pub micro_batch_tokens: usize,
    /// The compute type (`auto`: bf16 on CUDA, f32 on the CPU).
    pub dtype: ComputeDtype,
}

/// Time `spec.steps` training steps (after one warm-up).
pub fn bench(spec: &BenchSpec, peak_flops: f64, device: &Device) -> Result<BenchRow> {
    ensure!(spec.batch > 0 && spec.seq_len > 0 && spec.steps > 0, "bench: batch, seq_len and steps must be at least 1");
    let config = &spec.config;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let lora = spec.lora_rank.map(|r| LoraConfig { rank: r, alpha: 2.0 * r as f64, dropout: 0.0, targets: LORA_TARGETS.iter().map(|s| s.to_string()).collect() });
    let base = Qwen2::init_random(config.clone(), &mut rng, device)?;
    let mut model = Qwen2::from_tensors(config.clone(), base.tensors(), lora.clone(), &mut rng, device)?;
    drop(base);
    let dtype = spec.dtype.resolve(device)?;
    model.set_compute_dtype(dtype);
    let params = model.trainable();
    let trainable: usize = params.iter().map(|(_, v)| v.elem_count()).sum();
    let mut opt = AdamW::new(OptimConfig::default());
    let token = |i: usize, b: usize| ((i * 7919 + b * 104_729) % config.vocab_size) as u32;
    let mut times = Vec::new();
    let (flops, trained, micro) = match spec.mode {
        Mode::Sft => {
            let examples: Vec<Example> =
                (0..spec.batch).map(|b| Example { ids: (0..spec.seq_len + 1).map(|i| token(i, b)).collect(), trained: vec![1; spec.seq_len + 1] }).collect();
            let refs: Vec<&Example> = examples.iter().collect();
            let batch = make_batch(&refs, 0, device)?;
            for i in 0..spec.steps + 1 {
                let t0 = Instant::now();
                let loss = sft_loss(&model, &batch, batch.n_loss_tokens, None)?;
                let g = loss.backward()?;
                let mut grads = std::collections::BTreeMap::new();
                accumulate(&mut grads, &params, &g)?;
                drop(g);
                opt.step(&params, &grads, 1e-5)?;
                device.synchronize()?;
                if i > 0 {
                    times.push(t0.elapsed().as_secs_f64());
                }
            }
            let rows = spec.batch * spec.seq_len;
            (step_flops(config, lora.as_ref(), &vec![spec.seq_len; spec.batch], rows), rows, 0)
        }
        Mode::Grpo => {
            const PROMPT: usize = 96;
            let seqs: Vec<Scored> = (0..spec.batch)
                .map(|b| {
                    let len = spec.seq_len / 2 + (b * (spec.seq_len / 2)) / spec.batch.max(1);
                    Scored {
                        prompt: (0..PROMPT).map(|i| token(i, b)).collect(),
                        tokens: (0..len).map(|i| token(i + PROMPT, b)).collect(),
                        generated: (0..len).map(|i| i % 50 != 7).collect(),
                        advantage: if b % 2 == 0 { 1.0 } else { -1.0 },
                        behaviour: None,
                    }
                })
                .collect();
            let cfg = GrpoConfig {
                model: ModelSection {
                    source: "bench".into(),
                    compute_dtype: spec.dtype,
                    device: if device.is_cuda() { DeviceChoice::Cuda } else { DeviceChoice::Cpu },
                    continue_adapters: false,
                },
                lora: lora.clone(),
                data: GrpoData { train: "bench".into(), system_prompt: String::new() },
                rollout: RolloutSection::default(),
                reward: Default::default(),
                objective: Default::default(),
                train: GrpoTrain { micro_batch_tokens: spec.micro_batch_tokens, ..Default::default() },
                optim: OptimConfig::default(),
                checkpoint: Default::default(),
            };
            let mut stats = UpdateStats::default();
            for i in 0..spec.steps + 1 {
                let t0 = Instant::now();
                stats = policy_update(&model, None, &seqs, &cfg, 0, &mut opt, 1e-5, &mut rng, &Guard::default())?;
                device.synchronize()?;
                if i > 0 {
                    times.push(t0.elapsed().as_secs_f64());
                }
            }
            // Padded lengths as the micro-batches forward them.
            let lens: Vec<usize> = seqs.iter().map(|s| s.prompt.len() + s.tokens.len()).collect();
            let padded: Vec<usize> = crate::rl::grpo::micro_batches(&lens, spec.micro_batch_tokens)
                .iter()
                .flat_map(|b| {
                    let longest = b.iter().map(|&i| lens[i] - 1).max().unwrap_or(0);
                    vec![longest; b.len()]
                })
                .collect();
            let rows: usize = seqs.iter().map(|s| s.generated.iter().filter(|g| **g).count()).sum();
            (step_flops(config, lora.as_ref(), &padded, rows), rows, stats.micro_batches)
        }
    };
    times.sort_by(f64::total_cmp);
    let step_s = times[times.len() / 2];
    Ok(BenchRow {
        shape: spec.shape.clone(),
        mode: spec.mode,
        lora_rank: spec.lora_rank,
        params: config.n_params(),
        trainable,
        batch: spec.batch,
        seq_len: spec.seq_len,
        step_s,
        trained_tokens_per_s: trained as f64 / step_s,
        step_flops: flops,
        flops: flops / step_s,
        peak_flops,
        mfu: flops / step_s / peak_flops,
        peak_rss_mib: peak_rss_mib(),
        gpu_used_mib: gpu_used_mib(device),
        micro_batches: micro,
        threads: candle_core::utils::get_num_threads(),
        device: format!("{device:?}"),
        dtype: format!("{dtype:?}").to_lowercase(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flop_count_for_the_0_5b_shape() {
        let c = qwen2_5_0_5b_config();
        let (linear, head) = matmul_params(&c);
        // 494M parameters: 136M in the (tied) embedding, the rest in the
        // blocks' matrices plus a few norms and biases.
        assert_eq!(head, 151_936 * 896);
        assert!((c.n_params() - linear - head) < 1_000_000, "{}", c.n_params() - linear - head);
        let full = step_flops(&c, None, &[1], 1);
        assert!((full - 6.0 * (linear + head) as f64 - 12.0 * (24 * 14 * 64) as f64).abs() < 1.0);
        let lora = LoraConfig { rank: 16, alpha: 32.0, dropout: 0.0, targets: LORA_TARGETS.iter().map(|s| s.to_string()).collect() };
        let with = step_flops(&c, Some(&lora), &[1], 1);
        let adapters = 16 * (896 * 2 + 1024 * 2 + 1792 + 3 * 5760) * 24;
        assert_eq!(lora_params(&c, &lora), adapters);
        assert!((with - 4.0 * (linear + head) as f64 - 6.0 * adapters as f64 - 12.0 * (24 * 14 * 64) as f64).abs() < 1.0);
    }
}
