//! Training configuration: one TOML file with documented groups, validated
//! once, before anything heavy starts. Relative paths are relative to the
//! config file.
//!
//! ```toml
//! [model]
//! source = "model.gguf"       # a .gguf file, a Hugging Face directory, or "tiny"
//! [lora]                      # optional: train adapters instead of all weights
//! rank = 8
//! alpha = 16.0
//! dropout = 0.05
//! targets = ["q_proj", "v_proj"]
//! [data]
//! train = "sft.jsonl"         # {question, thinking, answer} per line
//! max_seq_len = 512
//! [train]
//! steps = 200
//! batch_size = 4
//! [optim]
//! lr = 1e-5
//! [checkpoint]
//! every = 50
//! ```

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::model::LoraConfig;

/// The whole SFT configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftConfig {
    /// What to start from.
    pub model: ModelSection,
    /// Adapters instead of full fine-tuning (absent: full).
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    /// Training data.
    pub data: DataSection,
    /// Steps, batch and seed.
    #[serde(default)]
    pub train: TrainSection,
    /// AdamW and the learning-rate schedule.
    #[serde(default)]
    pub optim: OptimConfig,
    /// How often to save, and how many to keep.
    #[serde(default)]
    pub checkpoint: CheckpointSection,
}

/// `[model]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A `.gguf` file (dequantized), a Hugging Face directory, or `tiny`
    /// (a 2-layer model with its own small tokenizer, for tests and demos).
    pub source: String,
    /// `auto` (bf16 on CUDA, f32 on CPU), `f32`, `bf16`, `f16`.
    #[serde(default = "auto")]
    pub compute_dtype: String,
    /// `auto` (CUDA when built with it and present), `cpu`, `cuda`.
    #[serde(default = "auto")]
    pub device: String,
    /// When `source` is a LoRA checkpoint: train its adapters further
    /// (`[lora]` must have the same rank, alpha and targets) on its own base,
    /// instead of merging them and adding new ones. The run's adapter then
    /// applies to that base alone (one file to ship, same rank).
    #[serde(default)]
    pub continue_adapters: bool,
}

impl ModelSection {
    /// Check the dtype and device names, and that a half-precision compute
    /// type is not asked of the CPU (candle's CPU matmul has no bf16/f16
    /// kernels: the first matmul would fail).
    pub fn validate(&self) -> Result<()> {
        ensure!(
            ["auto", "f32", "bf16", "f16"].contains(&self.compute_dtype.as_str()),
            "model.compute_dtype '{}' is not one of auto, f32, bf16, f16",
            self.compute_dtype
        );
        ensure!(["auto", "cpu", "cuda"].contains(&self.device.as_str()), "model.device '{}' is not one of auto, cpu, cuda", self.device);
        ensure!(
            !(self.device == "cpu" && ["bf16", "f16"].contains(&self.compute_dtype.as_str())),
            "model.compute_dtype = \"{}\" needs CUDA; on the CPU use \"f32\" (or \"auto\", which is f32 there)",
            self.compute_dtype
        );
        Ok(())
    }
}

fn auto() -> String {
    "auto".into()
}

/// `[data]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// JSONL of `{question, thinking, answer}` records.
    pub train: PathBuf,
    /// Longest training sequence (prompt + completion), in tokens; must fit
    /// the model's context.
    #[serde(default = "default_max_len")]
    pub max_seq_len: usize,
    /// `truncate` (cut the completion, count and warn) or `error`.
    #[serde(default = "default_too_long")]
    pub on_too_long: String,
    /// System prompt rendered before each question (the runtime's default).
    #[serde(default = "default_system")]
    pub system_prompt: String,
}

fn default_max_len() -> usize {
    1024
}
fn default_too_long() -> String {
    "truncate".into()
}
fn default_system() -> String {
    reckon::format::DEFAULT_SYSTEM_PROMPT.to_string()
}

/// `[train]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Optimizer steps in all.
    pub steps: u64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Seeds data order, initialization and dropout.
    pub seed: u64,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self { steps: 100, batch_size: 4, grad_accum: 1, seed: 0 }
    }
}

/// `[optim]`: AdamW with fp32 moments, warmup then cosine decay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Decoupled weight decay, applied to matrices only (not norms, biases).
    pub weight_decay: f64,
    /// Adam β1.
    pub beta1: f64,
    /// Adam β2.
    pub beta2: f64,
    /// Adam ε.
    pub eps: f64,
    /// Linear warmup steps from 0 to `lr`.
    pub warmup_steps: u64,
    /// Cosine decay ends at `lr × min_lr_ratio`.
    pub min_lr_ratio: f64,
    /// Global gradient-norm clip (0 disables).
    pub clip_grad_norm: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self { lr: 1e-5, weight_decay: 0.0, beta1: 0.9, beta2: 0.999, eps: 1e-8, warmup_steps: 0, min_lr_ratio: 0.1, clip_grad_norm: 1.0 }
    }
}

impl OptimConfig {
    /// Check ranges.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.lr > 0.0 && self.lr.is_finite(), "optim.lr must be a positive number (got {})", self.lr);
        ensure!(self.weight_decay >= 0.0, "optim.weight_decay must be ≥ 0");
        ensure!((0.0..1.0).contains(&self.beta1) && (0.0..1.0).contains(&self.beta2), "optim.beta1 and beta2 must be in [0, 1)");
        ensure!(self.eps > 0.0, "optim.eps must be positive");
        ensure!((0.0..=1.0).contains(&self.min_lr_ratio), "optim.min_lr_ratio must be in [0, 1]");
        ensure!(self.clip_grad_norm >= 0.0, "optim.clip_grad_norm must be ≥ 0 (0 disables clipping)");
        Ok(())
    }
}

/// `[checkpoint]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSection {
    /// Save every this many steps (and always at the end).
    pub every: u64,
    /// Keep this many most recent checkpoints.
    pub keep_last: usize,
    /// With `[lora]` on a base in a file: store only the adapters and their
    /// optimizer state, with the base pinned by path and SHA-256 (tens of
    /// MB instead of the whole model). `false`: every weight, as for full
    /// fine-tuning.
    #[serde(default = "yes")]
    pub adapter_only: bool,
}

fn yes() -> bool {
    true
}

impl Default for CheckpointSection {
    fn default() -> Self {
        Self { every: 100, keep_last: 2, adapter_only: true }
    }
}

impl SftConfig {
    /// Read, resolve relative paths against the file's directory, validate.
    pub fn load(path: &Path) -> Result<Self> {
        let (mut cfg, base): (SftConfig, PathBuf) = read_toml(path)?;
        cfg.model.resolve(&base, &mut cfg.data.train);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check every setting; messages say what to change.
    pub fn validate(&self) -> Result<()> {
        ensure!(!self.model.source.is_empty(), "model.source is empty: give a .gguf file, a Hugging Face directory or \"tiny\"");
        self.model.validate()?;
        if let Some(l) = &self.lora {
            l.validate()?;
        }
        ensure!(self.data.max_seq_len >= 8, "data.max_seq_len {} is too short to hold a prompt", self.data.max_seq_len);
        ensure!(
            ["truncate", "error"].contains(&self.data.on_too_long.as_str()),
            "data.on_too_long '{}' is not 'truncate' or 'error'",
            self.data.on_too_long
        );
        ensure!(self.train.steps > 0, "train.steps must be at least 1");
        ensure!(self.train.batch_size > 0, "train.batch_size must be at least 1");
        ensure!(self.train.grad_accum > 0, "train.grad_accum must be at least 1");
        ensure!(self.checkpoint.every > 0, "checkpoint.every must be at least 1");
        ensure!(self.checkpoint.keep_last > 0, "checkpoint.keep_last must be at least 1");
        self.optim.validate()
    }
}

/// Parse a TOML config; also returns the directory relative paths start from.
fn read_toml<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<(T, PathBuf)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
    let cfg = toml::from_str(&text).with_context(|| format!("config {} is not valid", path.display()))?;
    Ok((cfg, path.parent().unwrap_or(Path::new(".")).to_path_buf()))
}

impl ModelSection {
    /// Make `source` (`tiny` stays as it is) and the data path absolute.
    fn resolve(&mut self, base: &Path, data: &mut PathBuf) {
        *data = resolve(base, data);
        if self.source != "tiny" {
            self.source = resolve(base, Path::new(&self.source)).display().to_string();
        }
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if let (Ok(rest), Some(home)) = (p.strip_prefix("~"), std::env::var_os("HOME")) {
        return PathBuf::from(home).join(rest);
    }
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_example_configs_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                let name = p.file_name().unwrap().to_string_lossy().to_string();
                let source = if name.starts_with("grpo-") {
                    GrpoConfig::load(&p).unwrap_or_else(|e| panic!("{}: {e:#}", p.display())).model.source
                } else {
                    SftConfig::load(&p).unwrap_or_else(|e| panic!("{}: {e:#}", p.display())).model.source
                };
                assert!(!source.starts_with('~'), "~ is expanded");
                n += 1;
            }
        }
        assert!(n >= 3);
    }

    #[test]
    fn half_precision_on_the_cpu_is_refused_with_what_to_use() {
        let m = |dtype: &str, device: &str| ModelSection { source: "x.gguf".into(), compute_dtype: dtype.into(), device: device.into(), continue_adapters: false };
        for dtype in ["bf16", "f16"] {
            let e = m(dtype, "cpu").validate().unwrap_err().to_string();
            assert!(e.contains("f32") && e.contains(dtype), "{e}");
            // "auto" that found no GPU is caught where the device is known.
            let e = crate::train::compute_dtype(dtype, &candle_core::Device::Cpu).unwrap_err().to_string();
            assert!(e.contains("CUDA") && e.contains("f32"), "{e}");
        }
        assert!(m("bf16", "cuda").validate().is_ok() && m("auto", "cpu").validate().is_ok() && m("f32", "cpu").validate().is_ok());
        assert_eq!(crate::train::compute_dtype("auto", &candle_core::Device::Cpu).unwrap(), candle_core::DType::F32);
    }

    #[test]
    fn thinking_caps_are_drawn_per_prompt_from_the_list() {
        let mut r = RolloutSection::default();
        assert_eq!(r.budgets().iter().map(|b| b.max_thinking_tokens).collect::<Vec<_>>(), vec![256]);
        r.max_thinking_tokens = Some(Caps::Many(vec![128, 256, 384]));
        let drawn: Vec<u32> = (0..300).map(|i| r.budget_for(7, i / 4, (i % 4) as usize).max_thinking_tokens).collect();
        for c in [128, 256, 384] {
            let n = drawn.iter().filter(|&&d| d == c).count();
            assert!((70..=130).contains(&n), "cap {c} drawn {n} times of 300");
        }
        assert_eq!(r.budget_for(7, 3, 1), r.budget_for(7, 3, 1), "a function of the position");
        let parsed: RolloutSection = toml::from_str("max_thinking_tokens = [128, 256]\n").unwrap();
        assert_eq!(parsed.max_thinking_tokens, Some(Caps::Many(vec![128, 256])));
        let parsed: RolloutSection = toml::from_str("max_thinking_tokens = 64\n").unwrap();
        assert_eq!(parsed.max_thinking_tokens, Some(Caps::One(64)));
    }
}

/// The GRPO configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpoConfig {
    /// The policy to start from (typically an SFT checkpoint).
    pub model: ModelSection,
    /// Train adapters (the KL reference is then the model with them off).
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    /// `{question, answer}` JSONL (GSM8K lines work: gold after `####`).
    pub data: GrpoData,
    /// How completions are sampled and budget-forced.
    #[serde(default)]
    pub rollout: RolloutSection,
    /// Reward weights and the length design.
    #[serde(default)]
    pub reward: RewardSection,
    /// Clipping, KL, aggregation.
    #[serde(default)]
    pub objective: crate::objective::ObjectiveConfig,
    /// Steps, prompts and seed.
    #[serde(default)]
    pub train: GrpoTrain,
    /// AdamW and schedule.
    #[serde(default)]
    pub optim: OptimConfig,
    /// Saving.
    #[serde(default)]
    pub checkpoint: CheckpointSection,
}

/// `[data]` for GRPO.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpoData {
    /// Questions with gold answers.
    pub train: PathBuf,
    /// System prompt (the runtime's default).
    #[serde(default = "default_system")]
    pub system_prompt: String,
}

/// `[rollout]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutSection {
    /// Completions per prompt (G).
    pub group_size: usize,
    /// Temperature and nucleus.
    pub sampling: crate::rollout::Sampling,
    /// The budget forcing applied while sampling (the runtime's controller).
    pub budget: reckon::BudgetConfig,
    /// Thinking caps to train under, one drawn per prompt (so the model
    /// learns to answer well when cut short at any cap a device may set;
    /// Elastic Reasoning, arXiv 2505.05315): a number or a list such as
    /// `[128, 256, 384]`. Overrides `budget.max_thinking_tokens`.
    pub max_thinking_tokens: Option<Caps>,
    /// Who samples: `engine` (the runtime's llama.cpp engine, batched; the
    /// default when the run starts from a GGUF, or from a LoRA checkpoint of
    /// one) or `trainer` (its own KV-cached sampler; tiny and HF models).
    pub backend: Option<Backend>,
    /// Engine rollouts: sequences decoded together (up to prompts × group).
    pub engine_slots: u32,
}

/// The rollout backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The runtime's engine (llama.cpp).
    Engine,
    /// The trainer's own sampler.
    Trainer,
}

/// One thinking cap, or a list to draw from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Caps {
    /// Always this cap.
    One(u32),
    /// One of these per prompt.
    Many(Vec<u32>),
}

impl Default for RolloutSection {
    fn default() -> Self {
        Self {
            group_size: 8,
            sampling: Default::default(),
            budget: reckon::BudgetConfig { max_thinking_tokens: 256, max_answer_tokens: 32, ..Default::default() },
            max_thinking_tokens: None,
            backend: None,
            engine_slots: 32,
        }
    }
}

impl RolloutSection {
    /// The engine's base for a run from `source` when rollouts go to the
    /// engine (`None`: the trainer samples). An explicit `engine` with a
    /// source it cannot load is an error.
    pub fn backend(&self, source: &Path) -> Result<Option<crate::engine_rollout::EngineBase>> {
        match self.backend {
            Some(Backend::Trainer) => Ok(None),
            Some(Backend::Engine) => crate::engine_rollout::engine_base(source)?.map(Some).with_context(|| {
                format!(
                    "rollout.backend = \"engine\" needs a GGUF model.source, or a LoRA checkpoint of a run that started from one; {} is neither (use \"trainer\")",
                    source.display()
                )
            }),
            None => crate::engine_rollout::engine_base(source),
        }
    }

    /// Every budget a rollout may get.
    pub fn budgets(&self) -> Vec<reckon::BudgetConfig> {
        let caps = match &self.max_thinking_tokens {
            None => vec![self.budget.max_thinking_tokens],
            Some(Caps::One(c)) => vec![*c],
            Some(Caps::Many(v)) => v.clone(),
        };
        caps.into_iter().map(|c| reckon::BudgetConfig { max_thinking_tokens: c, ..self.budget.clone() }).collect()
    }

    /// The budget of prompt `i` of step `step`: a function of (seed, step,
    /// i) only, so a resumed run draws the same caps.
    pub fn budget_for(&self, seed: u64, step: u64, i: usize) -> reckon::BudgetConfig {
        let all = self.budgets();
        // SplitMix64 of the position: independent of the sampling RNG.
        let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        all[(z % all.len() as u64) as usize].clone()
    }
}

/// `[reward]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardSection {
    /// Component weights.
    pub weights: crate::rewards::RewardWeights,
    /// Length design.
    pub length: crate::rewards::LengthPenalty,
    /// Divide advantages by the group's standard deviation (GRPO); false is Dr. GRPO.
    pub scale_by_std: bool,
}

impl Default for RewardSection {
    fn default() -> Self {
        Self { weights: Default::default(), length: crate::rewards::LengthPenalty::Kimi, scale_by_std: true }
    }
}

/// `[train]` for GRPO.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoTrain {
    /// Optimizer steps (each one batch of prompts).
    pub steps: u64,
    /// Prompts per step.
    pub prompts_per_step: usize,
    /// Optimizer updates per batch of rollouts (old log-probs kept).
    pub num_iterations: usize,
    /// Seeds prompts, sampling and dropout.
    pub seed: u64,
    /// Padded tokens per forward/backward pass: completions are sorted by
    /// length and packed into micro-batches of at most this many tokens
    /// (rows × longest), their gradients accumulated, so memory is bounded
    /// by this and not by prompts × group size.
    pub micro_batch_tokens: usize,
    /// Leave out of the update the groups whose rewards are all equal (their
    /// advantages are 0: DAPO's dynamic sampling), and out of its
    /// denominators. Their KL term is then not applied either.
    pub drop_uniform_groups: bool,
}

impl Default for GrpoTrain {
    fn default() -> Self {
        Self { steps: 100, prompts_per_step: 4, num_iterations: 1, seed: 0, micro_batch_tokens: 1536, drop_uniform_groups: true }
    }
}

impl GrpoConfig {
    /// Read, resolve paths, validate.
    pub fn load(path: &Path) -> Result<Self> {
        let (mut cfg, base): (GrpoConfig, PathBuf) = read_toml(path)?;
        cfg.model.resolve(&base, &mut cfg.data.train);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check every setting.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.model.source != "tiny", "model.source: GRPO starts from a trained model (an SFT checkpoint, a GGUF or an HF directory)");
        if let Some(l) = &self.lora {
            l.validate()?;
        }
        ensure!(self.rollout.group_size >= 2, "rollout.group_size must be at least 2 (advantages are relative to the group)");
        self.model.validate()?;
        ensure!(
            self.rollout.sampling.temperature > 0.0,
            "rollout.sampling.temperature must be > 0: the group needs different completions, and the objective's log-probs are taken at this temperature"
        );
        ensure!(self.train.micro_batch_tokens >= 16, "train.micro_batch_tokens must be at least 16");
        ensure!(self.rollout.sampling.top_p > 0.0 && self.rollout.sampling.top_p <= 1.0, "rollout.sampling.top_p must be in (0, 1]");
        ensure!(!matches!(&self.rollout.max_thinking_tokens, Some(Caps::Many(v)) if v.is_empty()), "rollout.max_thinking_tokens is an empty list: give one cap or several");
        for b in self.rollout.budgets() {
            b.validate().map_err(|e| anyhow::anyhow!("rollout.budget (thinking cap {}): {e}", b.max_thinking_tokens))?;
        }
        ensure!(self.objective.epsilon > 0.0 && self.objective.epsilon < 1.0, "objective.epsilon must be in (0, 1)");
        ensure!(self.objective.epsilon_high.is_none_or(|e| e > 0.0), "objective.epsilon_high must be positive");
        ensure!(self.objective.beta >= 0.0, "objective.beta must be ≥ 0");
        ensure!(self.train.steps > 0 && self.train.prompts_per_step > 0 && self.train.num_iterations > 0, "train.steps, prompts_per_step and num_iterations must be at least 1");
        ensure!(self.checkpoint.every > 0 && self.checkpoint.keep_last > 0, "checkpoint.every and keep_last must be at least 1");
        self.optim.validate()
    }
}
