//! Sampling settings and the llama.cpp sampler chain they build.

use llama_cpp_2::sampling::LlamaSampler;
use serde::{Deserialize, Serialize};

use crate::error::{ReckonError, Result};

/// How the next token is chosen. Greedy by default (what s1 evaluates with).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingConfig {
    /// 0 = greedy; otherwise the softmax temperature.
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = off).
    pub top_k: i32,
    /// Nucleus sampling threshold (1.0 = off).
    pub top_p: f32,
    /// Drop tokens below this share of the top probability (0.0 = off).
    pub min_p: f32,
    /// Random seed for non-greedy sampling.
    pub seed: u32,
    /// Repetition penalty (1.0 = off).
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: i32,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self { temperature: 0.0, top_k: 40, top_p: 0.95, min_p: 0.05, seed: 0, repeat_penalty: 1.0, repeat_last_n: 64 }
    }
}

impl SamplingConfig {
    /// Check ranges once, early.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ReckonError::InvalidOption(m));
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(format!("temperature {} must be a number ≥ 0", self.temperature));
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return bad(format!("top-p {} must be in [0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min-p {} must be in [0, 1]", self.min_p));
        }
        if self.top_k < 0 {
            return bad(format!("top-k {} must be ≥ 0", self.top_k));
        }
        if !self.repeat_penalty.is_finite() || self.repeat_penalty <= 0.0 {
            return bad(format!("repeat penalty {} must be > 0", self.repeat_penalty));
        }
        Ok(())
    }

    pub(crate) fn build(&self, n_vocab: i32) -> LlamaSampler {
        let mut chain = Vec::new();
        if self.repeat_penalty != 1.0 {
            chain.push(LlamaSampler::penalties(n_vocab, self.repeat_last_n.max(0), self.repeat_penalty, 0.0, 0.0));
        }
        if self.temperature <= 0.0 {
            chain.push(LlamaSampler::greedy());
        } else {
            if self.top_k > 0 {
                chain.push(LlamaSampler::top_k(self.top_k));
            }
            if self.top_p < 1.0 {
                chain.push(LlamaSampler::top_p(self.top_p, 1));
            }
            if self.min_p > 0.0 {
                chain.push(LlamaSampler::min_p(self.min_p, 1));
            }
            chain.push(LlamaSampler::temp(self.temperature));
            chain.push(LlamaSampler::dist(self.seed));
        }
        LlamaSampler::chain_simple(chain)
    }
}
