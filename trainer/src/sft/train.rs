//! The SFT loop: masked next-token loss on the assistant's tokens, gradient
//! accumulation, AdamW, per-step metrics, checkpoints and exact resume.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::io::checkpoint::{Stage, TrainState};
use crate::io::tokenizer::Tok;
use crate::model::{tiny_config, Qwen2};
use crate::run::optim::{global_norm, lr_at};
use crate::run::plot::{curves, Panel};
use crate::run::session::{accumulate, Plan, Row, RunOptions, Session, StepDone};
use crate::sft::config::{SftConfig, TooLong};
use crate::sft::data::{self, make_batch, sample_indices, Example, SftRecord};

/// A tiny randomly initialized model with a byte-level BPE trained on
/// `texts` (vocabulary `vocab`).
pub fn tiny_model(texts: &[String], vocab: usize, seed: u64, device: &Device) -> Result<(Qwen2, Tok)> {
    let tok = Tok::train_tiny(texts.iter(), vocab)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let model = Qwen2::init_random(tiny_config(tok.vocab_size()), &mut rng, device)?;
    Ok((model, tok))
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Step number (1-based).
    pub step: u64,
    /// Mean loss per trained token.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens processed this step.
    pub tokens: usize,
    /// Throughput of this step.
    pub tokens_per_s: f64,
    /// Seconds of training so far (across resumes).
    pub elapsed_s: f64,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The step reached.
    pub step: u64,
    /// Step the run started from (0 when fresh).
    pub resumed_from: u64,
    /// Metrics of the steps run now.
    pub metrics: Vec<StepMetrics>,
    /// The last checkpoint written.
    pub checkpoint: Option<PathBuf>,
    /// Truncation counts.
    pub data: data::TokenizeStats,
}

/// Masked mean next-token loss over `batch`, divided by `denominator`
/// trained tokens (the step's total, so accumulation equals one big batch).
///
/// The LM head runs only on the positions that carry loss (the fused head on
/// CPU), so prompt and padding rows cost nothing past the decoder.
pub fn sft_loss(model: &Qwen2, batch: &data::Batch, denominator: usize, rng: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
    let h = model.hidden(&batch.input, &batch.attention, rng)?;
    let (b, t, d) = h.dims3()?;
    let mask: Vec<f32> = batch.loss_mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let targets: Vec<u32> = batch.targets.flatten_all()?.to_vec1()?;
    let rows: Vec<u32> = (0..b * t).filter(|&i| mask[i] > 0.0).map(|i| i as u32).collect();
    if rows.is_empty() {
        return Ok((h.sum_all()? * 0.0)?);
    }
    let picked: Vec<u32> = rows.iter().map(|&r| targets[r as usize]).collect();
    let hr = h.reshape((b * t, d))?.index_select(&Tensor::new(rows.as_slice(), h.device())?, 0)?;
    let lp = model.row_logprobs(&hr, &picked, 1.0, 1.0)?;
    let nll = lp.sum_all()?.neg()?;
    Ok((nll / denominator.max(1) as f64)?)
}

fn source_texts(records: &[SftRecord]) -> Vec<String> {
    records.iter().flat_map(|r| [r.question.clone(), r.thinking.clone(), format!("Final Answer: {}", r.answer)]).collect()
}

/// Run (or resume) SFT.
pub fn run_sft(cfg: &SftConfig, opts: &RunOptions) -> Result<Outcome> {
    let records: Vec<SftRecord> = data::read_jsonl(&cfg.data.train)?;
    let plan = Plan {
        stage: Stage::Sft,
        model: &cfg.model,
        lora: cfg.lora.as_ref(),
        optim: &cfg.optim,
        checkpoint: &cfg.checkpoint,
        steps: cfg.train.steps,
        seed: cfg.train.seed,
        run_config: serde_json::to_value(cfg)?,
    };
    let mut run = Session::open(&plan, opts, |rng, device| {
        if cfg.model.source != "tiny" {
            return Session::from_source(&plan, rng, device);
        }
        let (m, t) = tiny_model(&source_texts(&records), 512, cfg.train.seed, device)?;
        let model = Qwen2::from_tensors(m.config.clone(), m.tensors(), cfg.lora.clone(), rng, device)?;
        Ok((model, t, TrainState::fresh(Stage::Sft, cfg.lora.clone(), plan.run_config.clone(), "tiny", rng)))
    })?;
    ensure!(
        cfg.data.max_seq_len <= run.model.config.max_position_embeddings,
        "data.max_seq_len = {} is longer than the model's context ({} tokens): lower it",
        cfg.data.max_seq_len,
        run.model.config.max_position_embeddings
    );
    let truncate = cfg.data.on_too_long == TooLong::Truncate;
    let (examples, stats) = data::tokenize_sft(&records, &run.tok, &cfg.data.system_prompt, cfg.data.max_seq_len, truncate)?;
    let pad = run.tok.id("<|endoftext|>").unwrap_or(0);
    let params = run.model.trainable();
    let t = &cfg.train;
    let metrics = run.drive(&plan, opts, |run| {
        let t0 = Instant::now();
        let step = run.state.step;
        let guard = run.guard();
        let micro: Vec<Vec<&Example>> = (0..t.grad_accum)
            .map(|m| {
                let slot = (step * t.grad_accum as u64 + m as u64) * t.batch_size as u64;
                sample_indices(examples.len(), t.seed, slot, t.batch_size).into_iter().map(|i| &examples[i]).collect()
            })
            .collect();
        let batches = micro.iter().map(|m| make_batch(m, pad, &run.device)).collect::<Result<Vec<_>>>()?;
        let denom: usize = batches.iter().map(|b| b.n_loss_tokens).sum();
        let mut grads: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut loss_sum = 0f64;
        let mut tokens = 0;
        for b in &batches {
            let loss = sft_loss(&run.model, b, denom, Some(&mut run.rng))?;
            let l = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            guard.finite("loss", l)?;
            loss_sum += l;
            tokens += b.n_tokens;
            accumulate(&mut grads, &params, &loss.backward()?)?;
        }
        let lr = lr_at(&cfg.optim, step, t.steps);
        let norm = global_norm(&grads)?;
        guard.finite("gradient norm", norm)?;
        run.opt.step(&params, &grads, lr)?;
        let dt = t0.elapsed().as_secs_f64();
        let row = StepMetrics { step: 0, loss: loss_sum, lr, grad_norm: norm, tokens, tokens_per_s: tokens as f64 / dt, elapsed_s: 0.0 };
        Ok(StepDone { row, tokens: tokens as u64 })
    })?;
    Ok(Outcome { step: run.state.step, resumed_from: run.resumed_from, metrics, checkpoint: run.last_checkpoint, data: stats })
}

impl Row for StepMetrics {
    fn step(&self) -> u64 {
        self.step
    }
    fn stamp(&mut self, step: u64, elapsed_s: f64) {
        self.step = step;
        self.elapsed_s = elapsed_s;
    }
    fn message(&self) -> String {
        format!("loss {:.4}", self.loss)
    }
    fn plot(dir: &Path, rows: &[Self]) -> Result<()> {
        plot_sft(&dir.join("loss.png"), rows)
    }
}

fn plot_sft(png: &Path, rows: &[StepMetrics]) -> Result<()> {
    let pts = |f: fn(&StepMetrics) -> f64| rows.iter().map(|m| (m.step as f64, f(m))).collect::<Vec<_>>();
    curves(
        png,
        "SFT",
        &[
            Panel { label: "loss (per trained token)", points: pts(|m| m.loss), log_y: true },
            Panel { label: "learning rate", points: pts(|m| m.lr), log_y: false },
            Panel { label: "grad norm", points: pts(|m| m.grad_norm), log_y: false },
        ],
    )
}
