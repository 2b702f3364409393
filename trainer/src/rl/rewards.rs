//! Rewards and advantages for GRPO, as plain functions over plain numbers.
//!
//! - correctness: the runtime's answer extraction against the gold answer;
//! - format: the think/answer structure was respected (thinking closed by
//!   the model itself, an answer extracted from the answer part);
//! - length: none; a linear cost per token; Kimi 1.5's group-relative length
//!   reward (arXiv 2501.12599 §2.3.3: λ = 0.5 − (len − min)/(max − min);
//!   correct answers get λ, wrong ones min(0, λ), so being short never pays
//!   for a wrong answer); or the same term gated on the group being mostly
//!   right (GRPO-λ), which is reported to avoid the accuracy collapse of
//!   always-on length pressure; or a length cost among the group's *correct*
//!   answers only, −α·σ(z) with z the length's z-score among them, so that
//!   the reward is correct × (1 − α·σ(z)) (Arora & Zanette, "Training
//!   Language Models to Reason Efficiently", arXiv 2502.04463): a wrong
//!   answer is never paid for being short, and a group with too few right
//!   answers gets no length term at all.

use serde::{Deserialize, Serialize};

/// One completion's facts, as the rollout recorded them.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// Extracted answer matched the gold one.
    pub correct: bool,
    /// The model closed its thinking itself (not forced by the cap).
    pub natural_end: bool,
    /// An answer could be extracted from the answer part.
    pub answered: bool,
    /// Tokens the model generated (injected tokens excluded).
    pub generated_tokens: usize,
}

/// Which length term.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum LengthPenalty {
    /// No length term.
    None,
    /// −`per_token` × generated tokens.
    Linear {
        /// Cost of one token.
        per_token: f64,
    },
    /// Kimi 1.5's group-relative length reward.
    Kimi,
    /// Kimi's term, applied only to groups whose accuracy is at least
    /// `min_group_accuracy` (GRPO-λ); other groups get no length term.
    Gated {
        /// Share of correct completions a group needs.
        min_group_accuracy: f64,
    },
    /// −`alpha`·σ(z) for each correct completion, z its length's z-score
    /// among the group's correct completions (0 when they are all equally
    /// long); 0 for wrong ones, and for every completion of a group with
    /// fewer than `min_correct` correct ones. With the length weight at 1,
    /// a correct completion's reward is 1 − α·σ(z): between 1 − α (much
    /// longer than its correct peers) and 1 (much shorter).
    Efficient {
        /// Strength, in (0, 1): the paper used 0.1-0.4.
        alpha: f64,
        /// Correct completions a group needs for the term to act (≥ 1).
        #[serde(default = "one")]
        min_correct: usize,
    },
}

fn one() -> usize {
    1
}

impl LengthPenalty {
    /// Check the settings.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Self::Linear { per_token } if !(per_token >= 0.0) => Err(format!("reward.length: per_token must be ≥ 0, got {per_token}")),
            Self::Gated { min_group_accuracy } if !(0.0..=1.0).contains(&min_group_accuracy) => {
                Err(format!("reward.length: min_group_accuracy must be in [0, 1], got {min_group_accuracy}"))
            }
            Self::Efficient { alpha, .. } if !(alpha > 0.0 && alpha < 1.0) => Err(format!("reward.length: alpha must be in (0, 1), got {alpha}")),
            Self::Efficient { min_correct: 0, .. } => Err("reward.length: min_correct must be at least 1".into()),
            _ => Ok(()),
        }
    }
}

/// Weights of the reward components.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardWeights {
    /// Correctness weight.
    pub correctness: f64,
    /// Format weight.
    pub format: f64,
    /// Length weight.
    pub length: f64,
}

impl Default for RewardWeights {
    fn default() -> Self {
        Self { correctness: 1.0, format: 0.1, length: 0.5 }
    }
}

/// 1 if correct, else 0.
pub fn correctness(c: &Completion) -> f64 {
    f64::from(u8::from(c.correct))
}

/// 1 if thinking ended naturally and an answer was given, else 0.
pub fn format(c: &Completion) -> f64 {
    f64::from(u8::from(c.natural_end && c.answered))
}

/// The length term of each completion of one group.
pub fn length(group: &[Completion], penalty: LengthPenalty) -> Vec<f64> {
    match penalty {
        LengthPenalty::None => vec![0.0; group.len()],
        LengthPenalty::Linear { per_token } => group.iter().map(|c| -per_token * c.generated_tokens as f64).collect(),
        LengthPenalty::Kimi => kimi(group),
        LengthPenalty::Efficient { alpha, min_correct } => efficient(group, alpha, min_correct),
        LengthPenalty::Gated { min_group_accuracy } => {
            let acc = group.iter().filter(|c| c.correct).count() as f64 / group.len().max(1) as f64;
            if acc >= min_group_accuracy {
                kimi(group)
            } else {
                vec![0.0; group.len()]
            }
        }
    }
}

fn efficient(group: &[Completion], alpha: f64, min_correct: usize) -> Vec<f64> {
    let lens: Vec<f64> = group.iter().filter(|c| c.correct).map(|c| c.generated_tokens as f64).collect();
    if lens.len() < min_correct.max(1) {
        return vec![0.0; group.len()];
    }
    let n = lens.len() as f64;
    let mean = lens.iter().sum::<f64>() / n;
    let std = (lens.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / n).sqrt();
    group
        .iter()
        .map(|c| {
            if !c.correct {
                return 0.0;
            }
            let z = if std > 0.0 { (c.generated_tokens as f64 - mean) / std } else { 0.0 };
            -alpha / (1.0 + (-z).exp())
        })
        .collect()
}

fn kimi(group: &[Completion]) -> Vec<f64> {
    let min = group.iter().map(|c| c.generated_tokens).min().unwrap_or(0) as f64;
    let max = group.iter().map(|c| c.generated_tokens).max().unwrap_or(0) as f64;
    if max <= min {
        return vec![0.0; group.len()];
    }
    group
        .iter()
        .map(|c| {
            let lambda = 0.5 - (c.generated_tokens as f64 - min) / (max - min);
            if c.correct {
                lambda
            } else {
                lambda.min(0.0)
            }
        })
        .collect()
}

/// Every component of one completion's reward.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct RewardParts {
    /// Correctness term (unweighted).
    pub correctness: f64,
    /// Format term (unweighted).
    pub format: f64,
    /// Length term (unweighted).
    pub length: f64,
    /// The weighted sum.
    pub total: f64,
}

/// Rewards of one group.
pub fn group_rewards(group: &[Completion], w: RewardWeights, penalty: LengthPenalty) -> Vec<RewardParts> {
    let len = length(group, penalty);
    group
        .iter()
        .zip(len)
        .map(|(c, l)| {
            let (a, f) = (correctness(c), format(c));
            RewardParts { correctness: a, format: f, length: l, total: w.correctness * a + w.format * f + w.length * l }
        })
        .collect()
}

/// Group-normalized advantages: r − mean, divided by the standard deviation
/// (+1e-4) when `scale_by_std` (GRPO); Dr. GRPO (arXiv 2503.20783) leaves
/// it out. A group with identical rewards has zero advantage.
pub fn advantages(rewards: &[f64], scale_by_std: bool) -> Vec<f64> {
    if rewards.is_empty() {
        return Vec::new();
    }
    let n = rewards.len() as f64;
    let mean = rewards.iter().sum::<f64>() / n;
    let std = (rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
    rewards.iter().map(|r| if scale_by_std { (r - mean) / (std + 1e-4) } else { r - mean }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(correct: bool, n: usize) -> Completion {
        Completion { correct, natural_end: true, answered: true, generated_tokens: n }
    }

    #[test]
    fn kimi_length_reward_matches_the_paper() {
        // lengths 10, 20, 30: λ = 0.5, 0, −0.5.
        let g = [c(true, 10), c(true, 20), c(false, 30), c(false, 10)];
        let l = length(&g, LengthPenalty::Kimi);
        assert_eq!(l, vec![0.5, 0.0, -0.5, 0.0], "a wrong short answer gets min(0, λ) = 0");
        assert_eq!(length(&[c(true, 5), c(true, 5)], LengthPenalty::Kimi), vec![0.0, 0.0]);
    }

    #[test]
    fn gated_applies_only_to_mostly_right_groups() {
        let right = [c(true, 10), c(true, 30), c(true, 20), c(false, 20)];
        let wrong = [c(true, 10), c(false, 30), c(false, 20), c(false, 20)];
        let p = LengthPenalty::Gated { min_group_accuracy: 0.75 };
        assert_eq!(length(&right, p), length(&right, LengthPenalty::Kimi));
        assert_eq!(length(&wrong, p), vec![0.0; 4]);
    }

    #[test]
    fn efficient_weighs_length_among_correct_answers_only() {
        let p = LengthPenalty::Efficient { alpha: 0.2, min_correct: 2 };
        // Correct lengths 10, 30: mean 20, std 10, z = -1 and +1.
        let g = [c(true, 10), c(true, 30), c(false, 5), c(false, 500)];
        let l = length(&g, p);
        let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
        assert!((l[0] + 0.2 * sig(-1.0)).abs() < 1e-12 && (l[1] + 0.2 * sig(1.0)).abs() < 1e-12, "{l:?}");
        assert!(l[0] > l[1], "the shorter right answer is paid more");
        assert_eq!(&l[2..], &[0.0, 0.0], "wrong answers get no length term, short or long");
        // The reward of a correct answer stays in (1 - alpha, 1]: right
        // always beats wrong.
        let r = group_rewards(&g, RewardWeights { correctness: 1.0, format: 0.0, length: 1.0 }, p);
        assert!(r[1].total > 0.8 && r[1].total < 1.0 && r[2].total == 0.0, "{r:?}");
        // Too few right answers: no term; all equally long: the same for each.
        assert_eq!(length(&[c(true, 10), c(false, 30), c(false, 20)], p), vec![0.0; 3]);
        assert_eq!(length(&[c(true, 10), c(true, 10), c(false, 3)], p), vec![-0.1, -0.1, 0.0]);
        assert!(LengthPenalty::Efficient { alpha: 1.5, min_correct: 1 }.validate().is_err());
        assert!(LengthPenalty::Efficient { alpha: 0.2, min_correct: 0 }.validate().is_err());
        let parsed: LengthPenalty = toml::from_str::<toml::Value>("kind = \"efficient\"\nalpha = 0.3\n").unwrap().try_into().unwrap();
        assert_eq!(parsed, LengthPenalty::Efficient { alpha: 0.3, min_correct: 1 });
    }

    #[test]
    fn linear_and_none() {
        let g = [c(true, 10), c(false, 40)];
        assert_eq!(length(&g, LengthPenalty::Linear { per_token: 0.01 }), vec![-0.1, -0.4]);
        assert_eq!(length(&g, LengthPenalty::None), vec![0.0, 0.0]);
    }

    #[test]
    fn weighted_sum_and_format() {
        let mut bad = c(true, 10);
        bad.natural_end = false;
        let g = [c(true, 10), bad, c(false, 30)];
        let w = RewardWeights { correctness: 1.0, format: 0.2, length: 0.5 };
        let r = group_rewards(&g, w, LengthPenalty::Kimi);
        assert_eq!(r[0].format, 1.0);
        assert_eq!(r[1].format, 0.0, "a forced end breaks the format");
        assert!((r[0].total - (1.0 + 0.2 + 0.25)).abs() < 1e-12);
        assert!((r[2].total - (0.0 + 0.2 - 0.25)).abs() < 1e-12);
    }

    #[test]
    fn advantages_center_and_optionally_scale() {
        // rewards 1, 0, 0, 1: mean 0.5, std 0.5.
        let r = [1.0, 0.0, 0.0, 1.0];
        assert_eq!(advantages(&r, false), vec![0.5, -0.5, -0.5, 0.5]);
        let a = advantages(&r, true);
        assert!((a[0] - 0.5 / 0.5001).abs() < 1e-9);
        assert_eq!(advantages(&[0.3, 0.3], true), vec![0.0, 0.0]);
    }
}
