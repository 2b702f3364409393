//! The GRPO configuration: the policy to start from, the rollouts (group
//! size, sampling, budget forcing, caps drawn per prompt, the backend), the
//! reward, the objective, and the shared `[optim]` and `[checkpoint]`.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::model::LoraConfig;
use crate::run::config::{default_system, read_toml, CheckpointSection, ModelSection, OptimConfig};

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
    pub objective: crate::rl::objective::ObjectiveConfig,
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
    pub sampling: crate::rl::rollout::Sampling,
    /// The budget forcing applied while sampling (the runtime's controller).
    pub budget: reckon::BudgetConfig,
    /// Thinking caps to train under, one drawn per prompt (so the model
    /// learns to answer well when cut short at any cap a device may set;
    /// Elastic Reasoning, arXiv 2505.05315): a number or a list such as
    /// `[128, 256, 384]`. Overrides `budget.max_thinking_tokens`.
    pub max_thinking_tokens: Option<Caps>,
    /// Thinking caps by step, tightened over the run (ThinkPrune, arXiv
    /// 2504.01296): `[{ from_step = 1, caps = 1024 }, { from_step = 41,
    /// caps = [640, 768] }]`. Each stage holds from its (1-based) step until
    /// the next; its caps are drawn per prompt as `max_thinking_tokens`'s
    /// are, which it replaces (set one or the other). Starting above the
    /// model's natural length lets the model, not the cap, decide most
    /// lengths early on.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cap_schedule: Vec<CapStage>,
    /// Who samples: `engine` (the runtime's llama.cpp engine, batched; the
    /// default when the run starts from a GGUF, or from a LoRA checkpoint of
    /// one) or `trainer` (its own KV-cached sampler; tiny and HF models).
    pub backend: Option<Backend>,
    /// Engine rollouts: sequences decoded together (up to prompts × group).
    pub engine_slots: u32,
    /// Engine rollouts: attention with llama.cpp's flash-attention kernel
    /// (its default). `false` decoded 32 sequences of the 0.5B model 1.7x
    /// faster on 2 CPU cores (results/trainer-speed); it changes kernel
    /// numerics only, so a run may resume with it changed.
    pub engine_flash_attention: bool,
}

/// One stage of `rollout.cap_schedule`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapStage {
    /// The first step (1-based) these caps hold for.
    pub from_step: u64,
    /// One cap, or a list to draw from per prompt.
    pub caps: Caps,
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

impl Caps {
    /// The caps, as a list.
    pub fn list(&self) -> Vec<u32> {
        match self {
            Caps::One(c) => vec![*c],
            Caps::Many(v) => v.clone(),
        }
    }
}

impl Default for RolloutSection {
    fn default() -> Self {
        Self {
            group_size: 8,
            sampling: Default::default(),
            budget: reckon::BudgetConfig { max_thinking_tokens: 256, max_answer_tokens: 32, ..Default::default() },
            max_thinking_tokens: None,
            cap_schedule: Vec::new(),
            backend: None,
            engine_slots: 32,
            engine_flash_attention: true,
        }
    }
}

impl RolloutSection {
    /// The engine's base for a run from `source` when rollouts go to the
    /// engine (`None`: the trainer samples). An explicit `engine` with a
    /// source it cannot load is an error.
    pub fn backend(&self, source: &Path) -> Result<Option<crate::rl::engine::EngineBase>> {
        match self.backend {
            Some(Backend::Trainer) => Ok(None),
            Some(Backend::Engine) => crate::rl::engine::engine_base(source)?.map(Some).with_context(|| {
                format!(
                    "rollout.backend = \"engine\" needs a GGUF model.source, or a LoRA checkpoint of a run that started from one; {} is neither (use \"trainer\")",
                    source.display()
                )
            }),
            None => crate::rl::engine::engine_base(source),
        }
    }

    /// Every budget a rollout may get, over the whole run.
    pub fn budgets(&self) -> Vec<reckon::BudgetConfig> {
        let mut caps: Vec<u32> = if self.cap_schedule.is_empty() {
            self.caps_at(0)
        } else {
            self.cap_schedule.iter().flat_map(|s| s.caps.list()).collect()
        };
        caps.dedup();
        caps.into_iter().map(|c| self.with_cap(c)).collect()
    }

    /// The caps rollouts of step `step` (0-based) are drawn from.
    pub fn caps_at(&self, step: u64) -> Vec<u32> {
        if let Some(stage) = self.cap_schedule.iter().rev().find(|s| s.from_step <= step + 1) {
            return stage.caps.list();
        }
        match &self.max_thinking_tokens {
            None => vec![self.budget.max_thinking_tokens],
            Some(c) => c.list(),
        }
    }

    fn with_cap(&self, cap: u32) -> reckon::BudgetConfig {
        reckon::BudgetConfig { max_thinking_tokens: cap, ..self.budget.clone() }
    }

    /// Check `max_thinking_tokens` and `cap_schedule`.
    fn validate_caps(&self) -> Result<()> {
        ensure!(!matches!(&self.max_thinking_tokens, Some(Caps::Many(v)) if v.is_empty()), "rollout.max_thinking_tokens is an empty list: give one cap or several");
        if self.cap_schedule.is_empty() {
            return Ok(());
        }
        ensure!(self.max_thinking_tokens.is_none(), "rollout.cap_schedule replaces rollout.max_thinking_tokens: set one or the other");
        ensure!(self.cap_schedule[0].from_step == 1, "rollout.cap_schedule must start at from_step = 1 (it starts at {})", self.cap_schedule[0].from_step);
        for w in self.cap_schedule.windows(2) {
            ensure!(w[1].from_step > w[0].from_step, "rollout.cap_schedule: from_step must increase ({} after {})", w[1].from_step, w[0].from_step);
        }
        for s in &self.cap_schedule {
            ensure!(!s.caps.list().is_empty(), "rollout.cap_schedule: the stage from step {} has no caps", s.from_step);
        }
        Ok(())
    }

    /// The budget of prompt `i` of step `step`: a function of (seed, step,
    /// i) only, so a resumed run draws the same caps.
    pub fn budget_for(&self, seed: u64, step: u64, i: usize) -> reckon::BudgetConfig {
        let all: Vec<reckon::BudgetConfig> = self.caps_at(step).into_iter().map(|c| self.with_cap(c)).collect();
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
    pub weights: crate::rl::rewards::RewardWeights,
    /// Length design.
    pub length: crate::rl::rewards::LengthPenalty,
    /// Divide advantages by the group's standard deviation (GRPO); false is Dr. GRPO.
    pub scale_by_std: bool,
}

impl Default for RewardSection {
    fn default() -> Self {
        Self { weights: Default::default(), length: crate::rl::rewards::LengthPenalty::Kimi, scale_by_std: true }
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
        Self::load_with(path, &[])
    }

    /// Read with `--set` overrides applied, resolve paths, validate.
    pub fn load_with(path: &Path, sets: &[crate::run::overrides::Override]) -> Result<Self> {
        let (mut cfg, base): (GrpoConfig, PathBuf) = read_toml(path, sets)?;
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
        self.rollout.validate_caps()?;
        self.reward.length.validate().map_err(anyhow::Error::msg)?;
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_cap_schedule_tightens_the_caps_by_step() {
        let r: RolloutSection = toml::from_str("cap_schedule = [{ from_step = 1, caps = 1024 }, { from_step = 11, caps = [512, 768] }, { from_step = 21, caps = 384 }]\n").unwrap();
        r.validate_caps().unwrap();
        // Steps are 0-based in the loop, 1-based in the config.
        assert_eq!(r.caps_at(0), vec![1024]);
        assert_eq!(r.caps_at(9), vec![1024]);
        assert_eq!(r.caps_at(10), vec![512, 768]);
        assert_eq!(r.caps_at(19), vec![512, 768]);
        assert_eq!(r.caps_at(20), vec![384]);
        assert_eq!(r.caps_at(500), vec![384]);
        for step in [0, 10, 15, 20] {
            for i in 0..4 {
                assert!(r.caps_at(step).contains(&r.budget_for(3, step, i).max_thinking_tokens));
            }
        }
        assert_eq!(r.budgets().iter().map(|b| b.max_thinking_tokens).collect::<Vec<_>>(), vec![1024, 512, 768, 384]);
        // Not serialized when unset: a run's identity stays as before.
        assert!(!serde_json::to_string(&RolloutSection::default()).unwrap().contains("cap_schedule"));

        let bad = |text: &str| toml::from_str::<RolloutSection>(text).unwrap().validate_caps().unwrap_err().to_string();
        assert!(bad("cap_schedule = [{ from_step = 5, caps = 64 }]\n").contains("from_step = 1"));
        assert!(bad("cap_schedule = [{ from_step = 1, caps = 64 }, { from_step = 1, caps = 32 }]\n").contains("increase"));
        assert!(bad("cap_schedule = [{ from_step = 1, caps = [] }]\n").contains("no caps"));
        assert!(bad("max_thinking_tokens = 64\ncap_schedule = [{ from_step = 1, caps = 64 }]\n").contains("one or the other"));
    }
}

