//! The GRPO policy objective: PPO's clipped ratio per token, an optional KL
//! to a frozen reference, and the three aggregations the literature uses.
//!
//! Per generated token t of completion i (injected tokens are masked out):
//!   r = exp(logπ − logπ_old)
//!   ℓ = −min(r·A_i, clip(r, 1−ε, 1+ε_high)·A_i) + β·k3
//!   k3 = exp(logπ_ref − logπ) − (logπ_ref − logπ) − 1   (Schulman's k3, ≥ 0)
//! With rollouts from another engine (llama.cpp), the policy term is weighted
//! by truncated importance sampling (TIS; Yao et al. 2025, TRL's
//! `vllm_importance_sampling_correction`, verl's `tis_imp_ratio_cap`):
//!   w = min(π_old / π_engine, C)   per token, or per sequence with the
//!   ratio of the sequence's products (exp of the summed log-ratios).
//! Aggregation:
//!   grpo    — mean over completions of each one's token mean (DeepSeekMath, arXiv 2402.03300);
//!   dapo    — sum over all active tokens / their count (DAPO, arXiv 2503.14476);
//!   dr_grpo — sum over all active tokens / (completions × a constant length) (Dr. GRPO, arXiv 2503.20783).

use anyhow::{ensure, Result};
use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

/// How per-token losses become one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Per-sequence mean, then mean over sequences.
    Grpo,
    /// Token sum over all active tokens / their count.
    Dapo,
    /// Token sum / (sequences × `dr_grpo_length`).
    DrGrpo,
}

/// How the rollout engine's sampling probabilities correct the objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tis {
    /// Each token weighted by min(π_old / π_engine, C).
    #[default]
    Token,
    /// Every token of a completion weighted by min(Π π_old / Π π_engine, C).
    Sequence,
    /// No correction.
    Off,
}

/// Objective settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectiveConfig {
    /// Lower (and default upper) clip range ε.
    pub epsilon: f64,
    /// Upper clip range (DAPO's clip-higher); `None` means ε.
    #[serde(default)]
    pub epsilon_high: Option<f64>,
    /// KL coefficient β (0: no reference model needed).
    #[serde(default)]
    pub beta: f64,
    /// Aggregation.
    pub aggregation: Aggregation,
    /// Dr. GRPO's constant normalizer (e.g. the maximum completion length).
    #[serde(default = "default_dr_len")]
    pub dr_grpo_length: usize,
    /// Truncated importance sampling when the rollouts carry the engine's
    /// log-probs (token, sequence or off).
    #[serde(default)]
    pub tis: Tis,
    /// Its cap C.
    #[serde(default = "default_tis_cap")]
    pub tis_cap: f64,
}

fn default_dr_len() -> usize {
    1024
}

fn default_tis_cap() -> f64 {
    2.0
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        Self { epsilon: 0.2, epsilon_high: None, beta: 0.0, aggregation: Aggregation::Grpo, dr_grpo_length: 1024, tis: Tis::Token, tis_cap: 2.0 }
    }
}

/// The loss and what to log about it.
pub struct Objective {
    /// Scalar loss to minimize.
    pub loss: Tensor,
    /// Mean k3 KL over active tokens (0 without a reference).
    pub kl: f64,
    /// Share of active tokens whose ratio was clipped.
    pub clip_fraction: f64,
    /// Mean TIS weight over active tokens (1 without engine log-probs).
    pub tis_weight: f64,
}

/// What the loss is normalised by: the whole step's completions and active
/// tokens, so that summing the objectives of micro-batches (gradient
/// accumulation) equals the objective of one big batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Totals {
    /// Completions in the step.
    pub completions: usize,
    /// Active (generated, unmasked) tokens in the step.
    pub active_tokens: f64,
}

impl Totals {
    /// The totals of one batch's mask `[completions, len]`.
    pub fn of(mask: &Tensor) -> Result<Self> {
        let (b, _) = mask.dims2()?;
        Ok(Self { completions: b, active_tokens: mask.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()? })
    }
}

/// The objective over a batch: `logp`, `old_logp`, `ref_logp` and `mask`
/// are `[completions, len]`, `advantages` is `[completions]`.
pub fn objective(
    logp: &Tensor,
    old_logp: &Tensor,
    ref_logp: Option<&Tensor>,
    advantages: &Tensor,
    mask: &Tensor,
    cfg: &ObjectiveConfig,
) -> Result<Objective> {
    objective_part(logp, old_logp, ref_logp, None, advantages, mask, cfg, &Totals::of(mask)?)
}

/// The share of [`objective`] that one micro-batch contributes to a step
/// with `totals`: loss, KL and clip fraction of micro-batches add up to the
/// big batch's. `behaviour_logp` `[completions, len]` are the rollout
/// engine's log-probs of the sampled tokens (TIS weights; `None`: none).
#[allow(clippy::too_many_arguments)]
pub fn objective_part(
    logp: &Tensor,
    old_logp: &Tensor,
    ref_logp: Option<&Tensor>,
    behaviour_logp: Option<&Tensor>,
    advantages: &Tensor,
    mask: &Tensor,
    cfg: &ObjectiveConfig,
    totals: &Totals,
) -> Result<Objective> {
    let (b, _) = logp.dims2()?;
    ensure!(advantages.dims1()? == b, "one advantage per completion");
    let mask = mask.to_dtype(logp.dtype())?;
    let adv = advantages.to_dtype(logp.dtype())?.unsqueeze(1)?;
    let ratio = (logp - old_logp.detach())?.exp()?;
    let hi = cfg.epsilon_high.unwrap_or(cfg.epsilon);
    let clipped = ratio.clamp(1.0 - cfg.epsilon, 1.0 + hi)?;
    let s1 = ratio.broadcast_mul(&adv)?;
    let s2 = clipped.broadcast_mul(&adv)?;
    let mut per_token = s1.minimum(&s2)?.neg()?;
    let active = totals.active_tokens.max(1.0);
    let mut tis_weight = (mask.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?) / active;
    if let (Some(beh), true) = (behaviour_logp, cfg.tis != Tis::Off) {
        // log(π_old / π_engine), 0 where masked (so exp cannot overflow there).
        let d = ((old_logp.detach() - beh.detach().to_dtype(logp.dtype())?)? * &mask)?;
        let w = match cfg.tis {
            Tis::Sequence => d.sum_keepdim(D::Minus1)?.exp()?.minimum(cfg.tis_cap)?.broadcast_as(d.shape())?.contiguous()?,
            _ => d.exp()?.minimum(cfg.tis_cap)?,
        };
        tis_weight = (&w * &mask)?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()? / active;
        per_token = (per_token * w)?;
    }
    let mut kl_mean = 0.0;
    if let Some(r) = ref_logp {
        let d = (r.detach() - logp)?;
        let k3 = ((d.exp()? - &d)? - 1.0)?;
        kl_mean = (&k3 * &mask)?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()? / active;
        if cfg.beta != 0.0 {
            per_token = (per_token + (k3 * cfg.beta)?)?;
        }
    }
    let masked = (per_token * &mask)?;
    let completions = totals.completions.max(1) as f64;
    let loss = match cfg.aggregation {
        Aggregation::Grpo => {
            let per_seq = masked.sum(D::Minus1)?.broadcast_div(&mask.sum(D::Minus1)?.clamp(1.0, f64::MAX)?)?;
            (per_seq.sum_all()? / completions)?
        }
        Aggregation::Dapo => (masked.sum_all()? / active)?,
        Aggregation::DrGrpo => (masked.sum_all()? / (completions * cfg.dr_grpo_length.max(1) as f64))?,
    };
    // Clipped where the clip changed the objective: r beyond the range on
    // the side the advantage pushes.
    let (r, a, m): (Vec<Vec<f64>>, Vec<f64>, Vec<Vec<f64>>) = (
        ratio.to_dtype(DType::F64)?.to_vec2()?,
        advantages.to_dtype(DType::F64)?.to_vec1()?,
        mask.to_dtype(DType::F64)?.to_vec2()?,
    );
    let mut clipped_n = 0.0;
    for i in 0..b {
        for (t, &ri) in r[i].iter().enumerate() {
            if m[i][t] > 0.0 && ((a[i] > 0.0 && ri > 1.0 + hi) || (a[i] < 0.0 && ri < 1.0 - cfg.epsilon)) {
                clipped_n += 1.0;
            }
        }
    }
    Ok(Objective { loss, kl: kl_mean, clip_fraction: clipped_n / active, tis_weight })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn t2(v: &[[f64; 3]; 2]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    /// Two completions of 3 tokens; the second's last token was injected.
    fn case(cfg: ObjectiveConfig) -> (f64, Vec<Vec<f64>>, Objective) {
        let lp = Var::from_tensor(&t2(&[[-1.0, -0.5, -2.0], [-0.2, -1.5, -0.7]])).unwrap();
        let old = t2(&[[-1.2, -0.5, -1.0], [-0.1, -1.0, -0.7]]);
        let reference = t2(&[[-1.0, -0.4, -2.0], [-0.3, -1.5, -0.7]]);
        let adv = Tensor::new(&[1.0f64, -2.0], &Device::Cpu).unwrap();
        let mask = t2(&[[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]);
        let o = objective(lp.as_tensor(), &old, Some(&reference), &adv, &mask, &cfg).unwrap();
        let g = o.loss.backward().unwrap();
        let grad = g.get(lp.as_tensor()).unwrap().to_vec2::<f64>().unwrap();
        (o.loss.to_scalar::<f64>().unwrap(), grad, o)
    }

    // Hand computation, ε = 0.2, no KL:
    // seq 0 (A = 1): r = e^0.2 = 1.2214 → clipped to 1.2 → −1.2; r = 1 → −1;
    //   r = e^−1 = 0.3679 (below the range, but A > 0 so min keeps r·A) → −0.3679.
    // seq 1 (A = −2): r = e^−0.1 = 0.9048 → −min(−1.8097, −1.8097) = 1.8097;
    //   r = e^−0.5 = 0.6065 → clip 0.8: −min(−1.2131, −1.6) = 1.6; token 3 masked.
    const L0: [f64; 3] = [-1.2, -1.0, -0.36787944117144233];
    const L1: [f64; 2] = [1.8096748360719191, 1.6];

    #[test]
    fn grpo_aggregation_is_the_mean_of_sequence_means() {
        let (loss, grad, o) = case(ObjectiveConfig { aggregation: Aggregation::Grpo, ..Default::default() });
        let want = ((L0[0] + L0[1] + L0[2]) / 3.0 + (L1[0] + L1[1]) / 2.0) / 2.0;
        assert!((loss - want).abs() < 1e-9, "{loss} vs {want}");
        // Clipped tokens get no gradient; an unclipped one gets −r·A/(3·2).
        assert_eq!(grad[0][0], 0.0);
        assert!((grad[0][2] - (-(-1f64).exp() / 6.0)).abs() < 1e-9);
        assert_eq!(grad[1][1], 0.0);
        assert_eq!(grad[1][2], 0.0, "injected tokens get no gradient");
        assert!((o.clip_fraction - 2.0 / 5.0).abs() < 1e-12);
    }

    #[test]
    fn dapo_and_dr_grpo_aggregations() {
        let sum: f64 = L0.iter().sum::<f64>() + L1.iter().sum::<f64>();
        let (loss, _, _) = case(ObjectiveConfig { aggregation: Aggregation::Dapo, ..Default::default() });
        assert!((loss - sum / 5.0).abs() < 1e-9);
        let (loss, _, _) = case(ObjectiveConfig { aggregation: Aggregation::DrGrpo, dr_grpo_length: 4, ..Default::default() });
        assert!((loss - sum / 8.0).abs() < 1e-9);
    }

    #[test]
    fn clip_higher_and_kl() {
        // ε_high = 0.3 leaves token (0,0) unclipped: −e^0.2.
        let (loss, _, _) = case(ObjectiveConfig { epsilon_high: Some(0.3), aggregation: Aggregation::Dapo, ..Default::default() });
        let sum = -(0.2f64).exp() + L0[1] + L0[2] + L1[0] + L1[1];
        assert!((loss - sum / 5.0).abs() < 1e-9);
        // k3 with d = ref − logp: (0,1) d = 0.1, (1,0) d = −0.1; others 0.
        let k3 = |d: f64| d.exp() - d - 1.0;
        let (loss, _, o) = case(ObjectiveConfig { beta: 0.5, aggregation: Aggregation::Dapo, ..Default::default() });
        let kl = k3(0.1) + k3(-0.1);
        assert!((o.kl - kl / 5.0).abs() < 1e-12);
        let sum: f64 = L0.iter().sum::<f64>() + L1.iter().sum::<f64>();
        assert!((loss - (sum + 0.5 * kl) / 5.0).abs() < 1e-9);
    }

    #[test]
    fn micro_batches_add_up_to_the_big_batch() {
        // The two completions of `case` as two micro-batches of one, each
        // normalised by the step's totals: losses, gradients, KL and clip
        // fractions add up to the big batch's, for every aggregation.
        let lp = [[-1.0, -0.5, -2.0], [-0.2, -1.5, -0.7]];
        let old = [[-1.2, -0.5, -1.0], [-0.1, -1.0, -0.7]];
        let reference = [[-1.0, -0.4, -2.0], [-0.3, -1.5, -0.7]];
        let adv = [1.0f64, -2.0];
        let mask = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]];
        let dev = Device::Cpu;
        let row = |v: &[[f64; 3]; 2], i: usize| Tensor::new(&[v[i]], &dev).unwrap();
        for aggregation in [Aggregation::Grpo, Aggregation::Dapo, Aggregation::DrGrpo] {
            let cfg = ObjectiveConfig { aggregation, beta: 0.3, dr_grpo_length: 4, ..Default::default() };
            let (big_loss, big_grad, big) = case(cfg);
            let totals = Totals { completions: 2, active_tokens: 5.0 };
            let (mut loss, mut kl, mut clip) = (0.0, 0.0, 0.0);
            for i in 0..2 {
                let v = Var::from_tensor(&row(&lp, i)).unwrap();
                let o = objective_part(v.as_tensor(), &row(&old, i), Some(&row(&reference, i)), None, &Tensor::new(&[adv[i]], &dev).unwrap(), &row(&mask, i), &cfg, &totals).unwrap();
                loss += o.loss.to_scalar::<f64>().unwrap();
                kl += o.kl;
                clip += o.clip_fraction;
                let g = o.loss.backward().unwrap().get(v.as_tensor()).unwrap().to_vec2::<f64>().unwrap();
                for t in 0..3 {
                    assert!((g[0][t] - big_grad[i][t]).abs() < 1e-12, "{aggregation:?}: gradient of ({i}, {t})");
                }
            }
            assert!((loss - big_loss).abs() < 1e-12, "{aggregation:?}: {loss} vs {big_loss}");
            assert!((kl - big.kl).abs() < 1e-12 && (clip - big.clip_fraction).abs() < 1e-12);
        }
    }

    #[test]
    fn truncated_importance_sampling_weights_the_policy_term() {
        // The engine's log-probs of `case`'s tokens: log(π_old/π_engine) =
        // old − engine per token.
        let lp = Var::from_tensor(&t2(&[[-1.0, -0.5, -2.0], [-0.2, -1.5, -0.7]])).unwrap();
        let old = t2(&[[-1.2, -0.5, -1.0], [-0.1, -1.0, -0.7]]);
        let engine = t2(&[[-1.5, -0.4, -2.0], [-0.1, -0.9, 9.0]]);
        let adv = Tensor::new(&[1.0f64, -2.0], &Device::Cpu).unwrap();
        let mask = t2(&[[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]);
        let run = |tis: Tis| {
            let cfg = ObjectiveConfig { aggregation: Aggregation::Dapo, tis, tis_cap: 2.0, ..Default::default() };
            let o = objective_part(lp.as_tensor(), &old, None, Some(&engine), &adv, &mask, &cfg, &Totals::of(&mask).unwrap()).unwrap();
            (o.loss.to_scalar::<f64>().unwrap(), o.tis_weight)
        };
        // Token weights: e^0.3 = 1.3499, e^−0.1 = 0.9048, e^1 = 2.718 → 2
        // (capped), e^0 = 1, e^−0.1 = 0.9048; the masked token (engine 9.0)
        // does not count.
        let w = [[0.3f64.exp(), (-0.1f64).exp(), 2.0], [1.0, (-0.1f64).exp(), 0.0]];
        let want = (L0[0] * w[0][0] + L0[1] * w[0][1] + L0[2] * w[0][2] + L1[0] * w[1][0] + L1[1] * w[1][1]) / 5.0;
        let (loss, mean_w) = run(Tis::Token);
        assert!((loss - want).abs() < 1e-9, "{loss} vs {want}");
        assert!((mean_w - (w[0][0] + w[0][1] + 2.0 + 1.0 + w[1][1]) / 5.0).abs() < 1e-9);
        // Sequence weights: seq 0 e^(0.3 − 0.1 + 1) = e^1.2 → 2; seq 1 e^−0.1.
        let s1 = (-0.1f64).exp();
        let want = ((L0[0] + L0[1] + L0[2]) * 2.0 + (L1[0] + L1[1]) * s1) / 5.0;
        let (loss, _) = run(Tis::Sequence);
        assert!((loss - want).abs() < 1e-9, "{loss} vs {want}");
        // Off: the plain objective.
        let (loss, mean_w) = run(Tis::Off);
        assert!((loss - (L0.iter().sum::<f64>() + L1.iter().sum::<f64>()) / 5.0).abs() < 1e-9);
        assert_eq!(mean_w, 1.0);
    }
}
