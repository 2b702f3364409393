//! The SFT configuration: one TOML file with documented groups.
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

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

use crate::model::LoraConfig;
use crate::run::config::{default_system, read_toml, CheckpointSection, ModelSection, OptimConfig};

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
    #[serde(default)]
    pub on_too_long: TooLong,
    /// System prompt rendered before each question (the runtime's default).
    #[serde(default = "default_system")]
    pub system_prompt: String,
}

fn default_max_len() -> usize {
    1024
}

/// `data.on_too_long`: what a record longer than `max_seq_len` gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TooLong {
    /// Cut the completion; counted and warned about.
    #[default]
    Truncate,
    /// Refuse the data.
    Error,
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

impl SftConfig {
    /// Read, resolve relative paths against the file's directory, validate.
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_with(path, &[])
    }

    /// Read with `--set` overrides applied, resolve paths, validate.
    pub fn load_with(path: &Path, sets: &[crate::run::overrides::Override]) -> Result<Self> {
        let (mut cfg, base): (SftConfig, PathBuf) = read_toml(path, sets)?;
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
        ensure!(self.train.steps > 0, "train.steps must be at least 1");
        ensure!(self.train.batch_size > 0, "train.batch_size must be at least 1");
        ensure!(self.train.grad_accum > 0, "train.grad_accum must be at least 1");
        ensure!(self.checkpoint.every > 0, "checkpoint.every must be at least 1");
        ensure!(self.checkpoint.keep_last > 0, "checkpoint.keep_last must be at least 1");
        self.optim.validate()
    }
}

