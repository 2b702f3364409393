//! The SFT loop: masked next-token loss on the assistant's tokens, gradient
//! accumulation, AdamW, per-step metrics, checkpoints and exact resume.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, TrainState};
use crate::config::SftConfig;
use crate::data::{self, make_batch, sample_indices, Example, SftRecord};
use crate::model::{Qwen2, Qwen2Config};
use crate::optim::{lr_at, AdamW};
use crate::plot::{curves, Panel};
use crate::tokenizer::Tok;
use crate::weights;

/// The tiny architecture for tests and demos: 2 layers, width 64.
pub fn tiny_config(vocab_size: usize) -> Qwen2Config {
    Qwen2Config {
        vocab_size,
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 1024,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-6,
        tie_word_embeddings: true,
    }
}

/// A tiny randomly initialized model with a byte-level BPE trained on
/// `texts` (vocabulary `vocab`).
pub fn tiny_model(texts: &[String], vocab: usize, seed: u64, device: &Device) -> Result<(Qwen2, Tok)> {
    let tok = Tok::train_tiny(texts.iter(), vocab)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let model = Qwen2::init_random(tiny_config(tok.vocab_size()), &mut rng, device)?;
    Ok((model, tok))
}

/// Pick the device: `cpu`, `cuda`, or `auto`.
pub fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).context("model.device = \"cuda\": no CUDA device (was reckon-train built with --features cuda?)"),
        _ => Ok(if candle_core::utils::cuda_is_available() { Device::new_cuda(0).unwrap_or(Device::Cpu) } else { Device::Cpu }),
    }
}

/// The compute dtype for a setting on a device; bf16/f16 on the CPU (where
/// `model.device = "auto"` found no GPU) is refused: candle's CPU matmul has
/// no half-precision kernels.
pub fn compute_dtype(name: &str, device: &Device) -> Result<DType> {
    let dtype = match name {
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        "f32" => DType::F32,
        _ if device.is_cuda() => DType::BF16,
        _ => DType::F32,
    };
    ensure!(
        device.is_cuda() || dtype == DType::F32,
        "model.compute_dtype = \"{name}\" needs CUDA, and this run is on the CPU; use \"f32\" (or \"auto\")"
    );
    Ok(dtype)
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

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Output directory (metrics, plot, checkpoints).
    pub out: PathBuf,
    /// Start over even if checkpoints exist (they are removed).
    pub fresh: bool,
    /// Stop after this many steps in this invocation (a time-sliced job;
    /// the next run resumes).
    pub stop_after: Option<u64>,
    /// Show a progress bar.
    pub progress: bool,
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

/// Errors a caller may want to tell apart.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The loss or gradient became NaN or infinite.
    #[error("non-finite {what} at step {step}: training stopped; the last good checkpoint is kept ({}). Lower optim.lr or enable optim.clip_grad_norm", last.as_ref().map_or("none written yet".to_string(), |p| p.display().to_string()))]
    NonFinite {
        /// `loss` or `gradient norm`.
        what: &'static str,
        /// The step that failed.
        step: u64,
        /// The last checkpoint written.
        last: Option<PathBuf>,
    },
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

/// Where a run's checkpoints live.
pub fn checkpoint_root(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

fn source_texts(records: &[SftRecord]) -> Vec<String> {
    records.iter().flat_map(|r| [r.question.clone(), r.thinking.clone(), format!("Final Answer: {}", r.answer)]).collect()
}

/// Run (or resume) SFT.
pub fn run_sft(cfg: &SftConfig, opts: &RunOptions) -> Result<Outcome> {
    let device = device(&cfg.model.device)?;
    let records: Vec<SftRecord> = data::read_jsonl(&cfg.data.train)?;
    let ckpt_root = prepare_out(opts)?;
    let run_config = serde_json::to_value(cfg)?;

    let (mut model, tok, mut opt, mut rng, mut state) = match resume(&ckpt_root, &run_config, &cfg.optim, &device, &opts.out)? {
        Some(r) => r,
        None => {
            let mut rng = ChaCha8Rng::seed_from_u64(cfg.train.seed);
            let (model, tok, state) = if cfg.model.source == "tiny" {
                let (m, t) = tiny_model(&source_texts(&records), 512, cfg.train.seed, &device)?;
                let tensors = m.tensors();
                let model = Qwen2::from_tensors(m.config.clone(), tensors, cfg.lora.clone(), &mut rng, &device)?;
                (model, t, TrainState::fresh("sft", cfg.lora.clone(), run_config.clone(), "tiny", &rng))
            } else {
                let start = start_from(&cfg.model, cfg.lora.as_ref(), &cfg.checkpoint)?;
                let model = Qwen2::from_tensors(start.src.config, start.src.tensors, cfg.lora.clone(), &mut rng, &device)?;
                let state = start.provenance.state("sft", cfg.lora.clone(), run_config.clone(), &rng);
                (model, start.src.tok, state)
            };
            (model, tok, AdamW::new(cfg.optim.clone()), rng, state)
        }
    };
    model.set_compute_dtype(compute_dtype(&cfg.model.compute_dtype, &device)?);
    ensure!(
        cfg.data.max_seq_len <= model.config.max_position_embeddings,
        "data.max_seq_len = {} is longer than the model's context ({} tokens): lower it",
        cfg.data.max_seq_len,
        model.config.max_position_embeddings
    );
    let (examples, stats) = data::tokenize_sft(&records, &tok, &cfg.data.system_prompt, cfg.data.max_seq_len, cfg.data.on_too_long == "truncate")?;
    let pad = tok.id("<|endoftext|>").unwrap_or(0);

    let metrics_path = opts.out.join("metrics.jsonl");
    let mut history: Vec<StepMetrics> = read_metrics(&metrics_path)?;
    history.retain(|m| m.step <= state.step);
    write_metrics(&metrics_path, &history)?;

    let resumed_from = state.step;
    let params = model.trainable();
    let bar = progress_bar(opts.progress, cfg.train.steps, state.step, "sft");
    let mut run = Vec::new();
    let mut last_ckpt = checkpoint::list(&ckpt_root)?.pop().map(|(_, p)| p);
    let mut steps_now = 0;
    while state.step < cfg.train.steps {
        let t0 = Instant::now();
        let step = state.step;
        let micro: Vec<Vec<&Example>> = (0..cfg.train.grad_accum)
            .map(|m| {
                let slot = (step * cfg.train.grad_accum as u64 + m as u64) * cfg.train.batch_size as u64;
                sample_indices(examples.len(), cfg.train.seed, slot, cfg.train.batch_size).into_iter().map(|i| &examples[i]).collect()
            })
            .collect();
        let batches = micro.iter().map(|m| make_batch(m, pad, &device)).collect::<Result<Vec<_>>>()?;
        let denom: usize = batches.iter().map(|b| b.n_loss_tokens).sum();
        let mut grads: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut loss_sum = 0f64;
        let mut tokens = 0;
        for b in &batches {
            let loss = sft_loss(&model, b, denom, Some(&mut rng))?;
            let l = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !l.is_finite() {
                return Err(TrainError::NonFinite { what: "loss", step: step + 1, last: last_ckpt }.into());
            }
            loss_sum += l;
            tokens += b.n_tokens;
            let g = loss.backward()?;
            accumulate(&mut grads, &params, &g)?;
        }
        let lr = lr_at(&cfg.optim, step, cfg.train.steps);
        let norm = crate::optim::global_norm(&grads)?;
        if !norm.is_finite() {
            return Err(TrainError::NonFinite { what: "gradient norm", step: step + 1, last: last_ckpt }.into());
        }
        opt.step(&params, &grads, lr)?;
        let dt = t0.elapsed().as_secs_f64();
        state.step += 1;
        state.elapsed_s += dt;
        state.tokens_seen += tokens as u64;
        let m = StepMetrics { step: state.step, loss: loss_sum, lr, grad_norm: norm, tokens, tokens_per_s: tokens as f64 / dt, elapsed_s: state.elapsed_s };
        append_metrics(&metrics_path, &m)?;
        bar.set_position(state.step);
        bar.set_message(format!("loss {:.4}", m.loss));
        run.push(m);
        steps_now += 1;
        let stopping = opts.stop_after.is_some_and(|n| steps_now >= n);
        if let Some(p) = save_if_due(&ckpt_root, &cfg.checkpoint, cfg.train.steps, stopping, &mut state, &model, &opt, &rng, &tok)? {
            last_ckpt = Some(p);
        }
        if stopping {
            break;
        }
    }
    bar.finish_and_clear();
    let all: Vec<StepMetrics> = read_metrics(&metrics_path)?;
    plot_sft(&opts.out.join("loss.png"), &all)?;
    Ok(Outcome { step: state.step, resumed_from, metrics: run, checkpoint: last_ckpt, data: stats })
}

/// Where a fresh run's weights came from, for its [`TrainState`].
pub struct Provenance {
    /// The base the run trains on (a path): `model.source`, or with
    /// `continue_adapters` the source checkpoint's own base.
    pub origin: String,
    /// Set for adapter-only checkpoints.
    pub base: Option<checkpoint::BaseRef>,
    /// The checkpoint whose adapters the run goes on training.
    pub continued_from: Option<String>,
}

impl Provenance {
    /// Step 0 of `stage` from here.
    pub fn state(&self, stage: &str, lora: Option<crate::model::LoraConfig>, run_config: serde_json::Value, rng: &ChaCha8Rng) -> TrainState {
        let mut s = TrainState::fresh(stage, lora, run_config, &self.origin, rng);
        s.base = self.base.clone();
        s.continued_from = self.continued_from.clone();
        s
    }
}

/// A fresh run's starting point.
pub struct Start {
    /// The weights (with `continue_adapters`, the source's adapters among them).
    pub src: weights::Source,
    /// What the run's state records.
    pub provenance: Provenance,
}

/// Load `model.source` for a fresh run (not `tiny`). A LoRA checkpoint is
/// merged into a plain model, on which new adapters train; with
/// `model.continue_adapters` its adapters are kept and trained further
/// (`lora` must have its rank, alpha and targets) on the checkpoint's own
/// base, so the run's adapter applies to that base alone. A LoRA run with
/// `checkpoint.adapter_only` pins its base by hash.
pub fn start_from(model: &crate::config::ModelSection, lora: Option<&crate::model::LoraConfig>, ck: &crate::config::CheckpointSection) -> Result<Start> {
    let source = Path::new(&model.source);
    let (src, origin, continued_from) = if model.continue_adapters {
        let lora = lora.context("model.continue_adapters needs [lora]: there are adapters to continue only when training adapters")?;
        ensure!(
            source.join("manifest.json").is_file(),
            "model.continue_adapters: {} is not a trainer checkpoint (the adapters to continue come from a LoRA checkpoint)",
            source.display()
        );
        let stored = checkpoint::load(source)?;
        let theirs = stored.state.lora.clone().with_context(|| format!("model.continue_adapters: checkpoint {} was trained without [lora]", source.display()))?;
        ensure!(
            theirs.rank == lora.rank && theirs.alpha == lora.alpha && theirs.targets == lora.targets,
            "model.continue_adapters: [lora] must match the checkpoint's adapters (rank {}, alpha {}, targets {:?}); this config has rank {}, alpha {}, targets {:?}",
            theirs.rank,
            theirs.alpha,
            theirs.targets,
            lora.rank,
            lora.alpha,
            lora.targets
        );
        let origin = stored.state.source.clone();
        let src = weights::Source { config: stored.model_config, tensors: stored.tensors, tok: stored.tok, chat_template: stored.state.chat_template };
        (src, origin, Some(model.source.clone()))
    } else {
        (weights::load(source)?, model.source.clone(), None)
    };
    let base = if lora.is_some() && ck.adapter_only { Some(checkpoint::BaseRef::of(Path::new(&origin))?) } else { None };
    Ok(Start { src, provenance: Provenance { origin, base, continued_from } })
}

/// The tensors a checkpoint of `model` stores: its adapters alone when the
/// state pins a base, else every weight.
pub fn stored_tensors(model: &Qwen2, state: &TrainState) -> BTreeMap<String, Tensor> {
    if state.base.is_some() {
        model.trainable().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect()
    } else {
        model.tensors()
    }
}

/// What a resumed run continues with.
pub type Resumed = (Qwen2, Tok, AdamW, ChaCha8Rng, TrainState);

/// Create the output directory (with `--fresh`, drop its checkpoints);
/// returns the checkpoint root.
pub fn prepare_out(opts: &RunOptions) -> Result<PathBuf> {
    let root = checkpoint_root(&opts.out);
    if opts.fresh && root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    std::fs::create_dir_all(&opts.out).with_context(|| format!("cannot create {}", opts.out.display()))?;
    Ok(root)
}

/// The newest verified checkpoint under `root` as a model, tokenizer,
/// optimizer, RNG and state; `None` when there is none. A checkpoint of a
/// run with other settings is an error.
pub fn resume(root: &Path, run_config: &serde_json::Value, optim: &crate::config::OptimConfig, device: &Device, out: &Path) -> Result<Option<Resumed>> {
    let Some(ck) = checkpoint::latest(root)? else { return Ok(None) };
    if &ck.state.run_config != run_config {
        bail!("{} holds a run with different settings; resume with the same config, or pass --fresh to start over", out.display());
    }
    log::info!("resuming from {} (step {})", ck.dir.display(), ck.state.step);
    let mut rng = ck.state.rng()?;
    let model = Qwen2::from_tensors(ck.model_config.clone(), ck.tensors, ck.state.lora.clone(), &mut rng, device)?;
    let moments = ck.optimizer.into_iter().map(|(k, v)| Ok((k, v.to_device(device)?))).collect::<Result<_>>()?;
    let opt = AdamW::restore(optim.clone(), moments, ck.state.optimizer_t)?;
    Ok(Some((model, ck.tok, opt, rng, ck.state)))
}

/// Save a checkpoint when one is due (every `ck.every` steps, at the last
/// step, or when stopping early) and prune old ones; returns its directory.
#[allow(clippy::too_many_arguments)]
pub fn save_if_due(
    root: &Path,
    ck: &crate::config::CheckpointSection,
    total_steps: u64,
    stopping: bool,
    state: &mut TrainState,
    model: &Qwen2,
    opt: &AdamW,
    rng: &ChaCha8Rng,
    tok: &Tok,
) -> Result<Option<PathBuf>> {
    if state.step % ck.every != 0 && state.step != total_steps && !stopping {
        return Ok(None);
    }
    state.optimizer_t = opt.t;
    state.set_rng(rng);
    let dir = checkpoint::save(root, &model.config, &stored_tensors(model, state), &opt.state_tensors(), state, tok)?;
    checkpoint::prune(root, ck.keep_last)?;
    Ok(Some(dir))
}

/// Add this backward pass's gradients of `params` into `acc`.
pub fn accumulate(acc: &mut BTreeMap<String, Tensor>, params: &[(String, candle_core::Var)], g: &candle_core::backprop::GradStore) -> Result<()> {
    for (name, var) in params {
        if let Some(gr) = g.get(var.as_tensor()) {
            // Detached: a parameter's gradient can still reference the
            // forward graph it came from, which would then outlive the pass
            // (every micro-batch's activations kept until the update).
            let gr = gr.detach().to_dtype(var.dtype())?;
            let sum = match acc.remove(name) {
                Some(prev) => (prev + gr)?,
                None => gr,
            };
            acc.insert(name.clone(), sum);
        }
    }
    Ok(())
}

/// A progress bar (hidden when `show` is false).
pub fn progress_bar(show: bool, total: u64, pos: u64, what: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!("{what} {{bar:40}} {{pos}}/{{len}} steps, ETA {{eta}} {{msg}}"))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(pos);
    bar
}

/// Read `metrics.jsonl` (missing: empty; a torn last line is dropped).
pub fn read_metrics<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(Vec::new()) };
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

/// Rewrite `metrics.jsonl` with `rows`.
pub fn write_metrics<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut s = String::new();
    for r in rows {
        s.push_str(&serde_json::to_string(r)?);
        s.push('\n');
    }
    std::fs::write(path, s)?;
    Ok(())
}

/// Append one line to `metrics.jsonl`.
pub fn append_metrics<T: Serialize>(path: &Path, row: &T) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(f, "{}", serde_json::to_string(row)?)?;
    Ok(())
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
