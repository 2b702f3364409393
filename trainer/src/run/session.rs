//! The loop skeleton SFT and GRPO share: open a run (resume from its newest
//! verified checkpoint, or start from `model.source`), then drive its steps:
//! time each one, advance the state, append the step's row to
//! `metrics.jsonl`, show progress, stop on a non-finite loss or gradient
//! with the last good checkpoint named, save when due, stop early when asked
//! (`--stop-after`), and plot every row at the end. A stage supplies only its
//! step.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::io::checkpoint::{self, BaseRef, Stage, TrainState};
use crate::io::jsonl::write_jsonl;
use crate::io::tokenizer::Tok;
use crate::io::weights;
use crate::model::{LoraConfig, Qwen2};
use crate::run::config::{CheckpointSection, ModelSection, OptimConfig};
use crate::run::optim::AdamW;

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

/// The NaN guard of one step: a non-finite value stops the run with the
/// step and the last good checkpoint in the error.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// The step being taken (1-based).
    pub step: u64,
    /// The last checkpoint written.
    pub last: Option<PathBuf>,
}

impl Guard {
    /// `Ok` when `value` is finite.
    pub fn finite(&self, what: &'static str, value: f64) -> Result<()> {
        if value.is_finite() {
            return Ok(());
        }
        Err(TrainError::NonFinite { what, step: self.step, last: self.last.clone() }.into())
    }
}

/// One line of a stage's `metrics.jsonl`, and how the stage shows them.
pub trait Row: Serialize + DeserializeOwned {
    /// The step the row is of (1-based).
    fn step(&self) -> u64;
    /// Set by the skeleton once the step is done: its number and the
    /// seconds of training so far (across resumes).
    fn stamp(&mut self, step: u64, elapsed_s: f64);
    /// The progress bar's message.
    fn message(&self) -> String;
    /// Plot every row so far (the stage's curves) into `dir`.
    fn plot(dir: &Path, rows: &[Self]) -> Result<()>;
}

/// What a step hands back: its row, and the tokens it consumed.
pub struct StepDone<R> {
    /// The metrics row (step and elapsed are stamped by the skeleton).
    pub row: R,
    /// Added to the state's `tokens_seen`.
    pub tokens: u64,
}

/// What every stage's run is made of: where it starts, how it trains and
/// saves. Borrowed from the stage's config.
pub struct Plan<'a> {
    /// The stage (recorded in its checkpoints).
    pub stage: Stage,
    /// `[model]`.
    pub model: &'a ModelSection,
    /// `[lora]`.
    pub lora: Option<&'a LoraConfig>,
    /// `[optim]`.
    pub optim: &'a OptimConfig,
    /// `[checkpoint]`.
    pub checkpoint: &'a CheckpointSection,
    /// `train.steps`.
    pub steps: u64,
    /// `train.seed`.
    pub seed: u64,
    /// The config as JSON: a checkpoint of other settings is not resumed.
    pub run_config: serde_json::Value,
}

/// A run in progress: the model and everything a checkpoint restores.
pub struct Session {
    /// The model (its trainable parameters are the optimizer's).
    pub model: Qwen2,
    /// Its tokenizer.
    pub tok: Tok,
    /// AdamW with its moments.
    pub opt: AdamW,
    /// Dropout and sampling randomness (restored exactly on resume).
    pub rng: ChaCha8Rng,
    /// Step, clock, provenance.
    pub state: TrainState,
    /// Where it computes.
    pub device: Device,
    /// The step this invocation started from (0 when fresh).
    pub resumed_from: u64,
    /// The last checkpoint written (or found).
    pub last_checkpoint: Option<PathBuf>,
    root: PathBuf,
    out: PathBuf,
}

impl Session {
    /// Open `plan`'s run under `opts.out`: its newest checkpoint when there
    /// is one, else a fresh start from `fresh` (given the seeded RNG and the
    /// device; [`Session::from_source`] for `model.source`).
    pub fn open(plan: &Plan, opts: &RunOptions, fresh: impl FnOnce(&mut ChaCha8Rng, &Device) -> Result<(Qwen2, Tok, TrainState)>) -> Result<Self> {
        let device = plan.model.device.open()?;
        let root = prepare_out(opts)?;
        let (mut model, tok, opt, rng, state) = match resume(&root, &plan.run_config, plan.optim, &device, &opts.out)? {
            Some(r) => r,
            None => {
                let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);
                let (model, tok, state) = fresh(&mut rng, &device)?;
                (model, tok, AdamW::new(plan.optim.clone()), rng, state)
            }
        };
        model.set_compute_dtype(plan.model.compute_dtype.resolve(&device)?);
        let last_checkpoint = checkpoint::list(&root)?.pop().map(|(_, p)| p);
        let resumed_from = state.step;
        Ok(Self { model, tok, opt, rng, state, device, resumed_from, last_checkpoint, root, out: opts.out.clone() })
    }

    /// The fresh start from `model.source` (see [`start_from`]), with new
    /// adapters (`[lora]`) initialized from `rng`.
    pub fn from_source(plan: &Plan, rng: &mut ChaCha8Rng, device: &Device) -> Result<(Qwen2, Tok, TrainState)> {
        let start = start_from(plan.model, plan.lora, plan.checkpoint)?;
        let model = Qwen2::from_tensors(start.src.config, start.src.tensors, plan.lora.cloned(), rng, device)?;
        let state = start.provenance.state(plan.stage, plan.lora.cloned(), plan.run_config.clone(), rng);
        Ok((model, start.src.tok, state))
    }

    /// The current step's NaN guard.
    pub fn guard(&self) -> Guard {
        Guard { step: self.state.step + 1, last: self.last_checkpoint.clone() }
    }

    /// Where the run's rows go.
    pub fn metrics_path(&self) -> PathBuf {
        self.out.join("metrics.jsonl")
    }

    /// Take steps until `plan.steps` (or `opts.stop_after` in this
    /// invocation), each by `step`; returns the rows of this invocation.
    /// Rows past the checkpoint resumed from are dropped first (they are
    /// taken again), and every row is plotted at the end.
    pub fn drive<R: Row>(&mut self, plan: &Plan, opts: &RunOptions, mut step: impl FnMut(&mut Session) -> Result<StepDone<R>>) -> Result<Vec<R>> {
        let metrics = self.metrics_path();
        let mut history: Vec<R> = read_metrics(&metrics)?;
        history.retain(|m| m.step() <= self.state.step);
        write_jsonl(&metrics, &history)?;
        let bar = progress_bar(opts.progress, plan.steps, self.state.step, plan.stage.name());
        let mut run = Vec::new();
        let mut steps_now = 0;
        while self.state.step < plan.steps {
            let t0 = Instant::now();
            let StepDone { mut row, tokens } = step(self)?;
            self.state.step += 1;
            self.state.elapsed_s += t0.elapsed().as_secs_f64();
            self.state.tokens_seen += tokens;
            row.stamp(self.state.step, self.state.elapsed_s);
            append_metrics(&metrics, &row)?;
            bar.set_position(self.state.step);
            bar.set_message(row.message());
            run.push(row);
            steps_now += 1;
            let stopping = opts.stop_after.is_some_and(|n| steps_now >= n);
            if let Some(p) = self.save_if_due(plan.checkpoint, plan.steps, stopping)? {
                self.last_checkpoint = Some(p);
            }
            if stopping {
                break;
            }
        }
        bar.finish_and_clear();
        let all: Vec<R> = read_metrics(&metrics)?;
        R::plot(&self.out, &all).with_context(|| format!("plotting the {} curves", plan.stage.name()))?;
        Ok(run)
    }

    /// Save a checkpoint when one is due (every `ck.every` steps, at the
    /// last step, or when stopping early) and prune old ones; returns its
    /// directory.
    fn save_if_due(&mut self, ck: &CheckpointSection, total_steps: u64, stopping: bool) -> Result<Option<PathBuf>> {
        let state = &mut self.state;
        if state.step % ck.every != 0 && state.step != total_steps && !stopping {
            return Ok(None);
        }
        state.optimizer_t = self.opt.t;
        state.set_rng(&self.rng);
        let dir = checkpoint::save(&self.root, &self.model.config, &stored_tensors(&self.model, state), &self.opt.state_tensors(), state, &self.tok)?;
        checkpoint::prune(&self.root, ck.keep_last)?;
        Ok(Some(dir))
    }
}

/// Where a fresh run's weights came from, for its [`TrainState`].
pub struct Provenance {
    /// The base the run trains on (a path): `model.source`, or with
    /// `continue_adapters` the source checkpoint's own base.
    pub origin: String,
    /// Set for adapter-only checkpoints.
    pub base: Option<BaseRef>,
    /// The checkpoint whose adapters the run goes on training.
    pub continued_from: Option<String>,
}

impl Provenance {
    /// Step 0 of `stage` from here.
    pub fn state(&self, stage: Stage, lora: Option<LoraConfig>, run_config: serde_json::Value, rng: &ChaCha8Rng) -> TrainState {
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
pub fn start_from(model: &ModelSection, lora: Option<&LoraConfig>, ck: &CheckpointSection) -> Result<Start> {
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
    let base = if lora.is_some() && ck.adapter_only { Some(BaseRef::of(Path::new(&origin))?) } else { None };
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

/// Where a run's checkpoints live.
pub fn checkpoint_root(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

/// What a resumed run continues with.
type Resumed = (Qwen2, Tok, AdamW, ChaCha8Rng, TrainState);

/// Create the output directory (with `--fresh`, drop its checkpoints);
/// returns the checkpoint root.
fn prepare_out(opts: &RunOptions) -> Result<PathBuf> {
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
fn resume(root: &Path, run_config: &serde_json::Value, optim: &OptimConfig, device: &Device, out: &Path) -> Result<Option<Resumed>> {
    let Some(ck) = checkpoint::latest(root)? else { return Ok(None) };
    if !same_training(&ck.state.run_config, run_config) {
        bail!("{} holds a run with different settings; resume with the same config, or pass --fresh to start over", out.display());
    }
    log::info!("resuming from {} (step {})", ck.dir.display(), ck.state.step);
    let mut rng = ck.state.rng()?;
    let model = Qwen2::from_tensors(ck.model_config.clone(), ck.tensors, ck.state.lora.clone(), &mut rng, device)?;
    let moments = ck.optimizer.into_iter().map(|(k, v)| Ok((k, v.to_device(device)?))).collect::<Result<_>>()?;
    let opt = AdamW::restore(optim.clone(), moments, ck.state.optimizer_t)?;
    Ok(Some((model, ck.tok, opt, rng, ck.state)))
}

/// Whether two run configs train the same way: equal but for how often
/// checkpoints are written and how many are kept (`[checkpoint] every`,
/// `keep_last`), which a long run may change between sessions (say, to save
/// more often on a slower machine) without changing what it computes.
fn same_training(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    let strip = |v: &serde_json::Value| {
        let mut v = v.clone();
        if let Some(ck) = v.get_mut("checkpoint").and_then(|c| c.as_object_mut()) {
            ck.remove("every");
            ck.remove("keep_last");
        }
        // Kernel choice, not the recipe.
        if let Some(r) = v.get_mut("rollout").and_then(|c| c.as_object_mut()) {
            r.remove("engine_flash_attention");
        }
        v
    };
    strip(a) == strip(b)
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

/// Append one line to `metrics.jsonl`.
fn append_metrics<T: Serialize>(path: &Path, row: &T) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(f, "{}", serde_json::to_string(row)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_cadence_may_change_between_sessions_but_training_settings_may_not() {
        let a = serde_json::json!({"checkpoint": {"every": 3, "keep_last": 2, "adapter_only": true}, "optim": {"lr": 3e-5}});
        let cadence = serde_json::json!({"checkpoint": {"every": 2, "keep_last": 4, "adapter_only": true}, "optim": {"lr": 3e-5}});
        assert!(same_training(&a, &cadence));
        let lr = serde_json::json!({"checkpoint": {"every": 3, "keep_last": 2, "adapter_only": true}, "optim": {"lr": 1e-5}});
        assert!(!same_training(&a, &lr));
        let layout = serde_json::json!({"checkpoint": {"every": 3, "keep_last": 2, "adapter_only": false}, "optim": {"lr": 3e-5}});
        assert!(!same_training(&a, &layout));
        // The rollout kernel may change (a run made before the setting existed resumes with it).
        let old = serde_json::json!({"rollout": {"group_size": 8}, "optim": {"lr": 3e-5}});
        let kernel = serde_json::json!({"rollout": {"group_size": 8, "engine_flash_attention": false}, "optim": {"lr": 3e-5}});
        assert!(same_training(&old, &kernel));
        let group = serde_json::json!({"rollout": {"group_size": 4, "engine_flash_attention": false}, "optim": {"lr": 3e-5}});
        assert!(!same_training(&old, &group));
    }

    #[test]
    fn the_guard_names_the_step_and_the_last_checkpoint() {
        let g = Guard { step: 7, last: Some(PathBuf::from("ck/step-00000006")) };
        assert!(g.finite("loss", 1.5).is_ok());
        let e = g.finite("loss", f64::NAN).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("loss at step 7") && msg.contains("step-00000006"), "{msg}");
        assert!(matches!(e.downcast_ref::<TrainError>(), Some(TrainError::NonFinite { step: 7, .. })));
        let e = Guard::default().finite("gradient norm", f64::INFINITY).unwrap_err().to_string();
        assert!(e.contains("none written yet"), "{e}");
    }
}
