//! Training-step throughput and model-FLOPs utilization (MFU):
//! forward + backward ≈ 6 × parameters × tokens FLOPs per step.

use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::config::OptimConfig;
use crate::data::{make_batch, Example};
use crate::model::{Qwen2, Qwen2Config};
use crate::optim::AdamW;
use crate::train::{accumulate, sft_loss, tiny_config};

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

/// One benchmark row.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    /// `tiny` or `0.5b`.
    pub shape: String,
    /// Parameters.
    pub params: usize,
    /// Sequences × tokens per step.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Median seconds per full step (forward, backward, AdamW).
    pub step_s: f64,
    /// Tokens per second.
    pub tokens_per_s: f64,
    /// Achieved FLOP/s (6·N·tokens / step time).
    pub flops: f64,
    /// Achieved / `peak_flops` (when a peak is given).
    pub mfu: Option<f64>,
    /// Threads (rayon) used.
    pub threads: usize,
    /// Device.
    pub device: String,
}

/// Time `steps` training steps (after one warm-up) for a config.
pub fn bench_shape(shape: &str, config: Qwen2Config, batch: usize, seq_len: usize, steps: usize, peak_flops: Option<f64>, device: &Device) -> Result<BenchRow> {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let model = Qwen2::init_random(config.clone(), &mut rng, device)?;
    let examples: Vec<Example> = (0..batch)
        .map(|b| Example {
            ids: (0..seq_len + 1).map(|i| ((i * 7919 + b * 104_729) % config.vocab_size) as u32).collect(),
            trained: vec![1; seq_len + 1],
        })
        .collect();
    let refs: Vec<&Example> = examples.iter().collect();
    let b = make_batch(&refs, 0, device)?;
    let params = model.trainable();
    let mut opt = AdamW::new(OptimConfig::default());
    let mut times = Vec::new();
    for i in 0..steps + 1 {
        let t0 = Instant::now();
        let loss = sft_loss(&model, &b, b.n_loss_tokens, None)?;
        let g = loss.backward()?;
        let mut grads = std::collections::BTreeMap::new();
        accumulate(&mut grads, &params, &g)?;
        opt.step(&params, &grads, 1e-5)?;
        device.synchronize()?;
        if i > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let step_s = times[times.len() / 2];
    let tokens = batch * seq_len;
    let n = config.n_params();
    let flops = 6.0 * n as f64 * tokens as f64 / step_s;
    let _ = Tensor::zeros(1, candle_core::DType::F32, device)?;
    Ok(BenchRow {
        shape: shape.to_string(),
        params: n,
        batch,
        seq_len,
        step_s,
        tokens_per_s: tokens as f64 / step_s,
        flops,
        mfu: peak_flops.map(|p| flops / p),
        threads: rayon_threads(),
        device: format!("{device:?}"),
    })
}

/// The tiny shape with a small vocabulary.
pub fn tiny_bench_config() -> Qwen2Config {
    tiny_config(512)
}

fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
