//! AdamW (Loshchilov & Hutter, decoupled weight decay) with fp32 moments,
//! weight decay only on matrices, global-norm clipping, and a linear-warmup
//! cosine schedule.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use candle_core::{DType, Tensor, Var};

use crate::config::OptimConfig;

/// Optimizer state: first and second moments per parameter name.
pub struct AdamW {
    cfg: OptimConfig,
    /// Moments (m, v) by parameter name.
    pub moments: BTreeMap<String, (Tensor, Tensor)>,
    /// Updates applied so far (bias correction uses it).
    pub t: u64,
}

/// Learning rate at `step` (0-based) of `total`: linear warmup to the peak,
/// then cosine down to `min_lr_ratio × lr`.
pub fn lr_at(cfg: &OptimConfig, step: u64, total: u64) -> f64 {
    if cfg.warmup_steps > 0 && step < cfg.warmup_steps {
        return cfg.lr * (step + 1) as f64 / cfg.warmup_steps as f64;
    }
    let span = total.saturating_sub(cfg.warmup_steps).max(1) as f64;
    let progress = ((step - cfg.warmup_steps.min(step)) as f64 / span).clamp(0.0, 1.0);
    let min = cfg.lr * cfg.min_lr_ratio;
    min + (cfg.lr - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// √(Σ‖g‖²) over all gradients.
pub fn global_norm(grads: &BTreeMap<String, Tensor>) -> Result<f64> {
    let mut sq = 0f64;
    for g in grads.values() {
        sq += g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
    }
    Ok(sq.sqrt())
}

impl AdamW {
    /// Fresh state.
    pub fn new(cfg: OptimConfig) -> Self {
        Self { cfg, moments: BTreeMap::new(), t: 0 }
    }

    /// One update of `params` with `grads` (fp32) at learning rate `lr`;
    /// gradients are first clipped to the configured global norm. Returns
    /// the norm before clipping.
    pub fn step(&mut self, params: &[(String, Var)], grads: &BTreeMap<String, Tensor>, lr: f64) -> Result<f64> {
        let norm = global_norm(grads)?;
        let clip = if self.cfg.clip_grad_norm > 0.0 && norm > self.cfg.clip_grad_norm { self.cfg.clip_grad_norm / (norm + 1e-6) } else { 1.0 };
        self.t += 1;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let c1 = 1.0 - b1.powi(self.t as i32);
        let c2 = 1.0 - b2.powi(self.t as i32);
        for (name, var) in params {
            let Some(g) = grads.get(name) else { continue };
            let w = var.as_tensor();
            let g = (g.to_dtype(w.dtype())? * clip)?;
            let (m, v) = match self.moments.remove(name) {
                Some(mv) => mv,
                None => (w.zeros_like()?, w.zeros_like()?),
            };
            let m = ((m * b1)? + (&g * (1.0 - b1))?)?;
            let v = ((v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let update = ((&m / c1)? / ((&v / c2)?.sqrt()? + self.cfg.eps)?)?;
            let mut new_w = (w - (update * lr)?)?;
            // Decay matrices only: norms and biases (1-D) are left alone.
            if self.cfg.weight_decay > 0.0 && w.rank() >= 2 {
                new_w = (new_w - (w * (lr * self.cfg.weight_decay))?)?;
            }
            var.set(&new_w).with_context(|| format!("updating {name}"))?;
            self.moments.insert(name.clone(), (m, v));
        }
        Ok(norm)
    }

    /// State as named tensors (`m.NAME`, `v.NAME`) for a checkpoint.
    pub fn state_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (n, (m, v)) in &self.moments {
            out.insert(format!("m.{n}"), m.clone());
            out.insert(format!("v.{n}"), v.clone());
        }
        out
    }

    /// Restore from [`AdamW::state_tensors`] and the update count.
    pub fn restore(cfg: OptimConfig, mut tensors: BTreeMap<String, Tensor>, t: u64) -> Result<Self> {
        let names: Vec<String> = tensors.keys().filter_map(|k| k.strip_prefix("m.").map(str::to_string)).collect();
        let mut moments = BTreeMap::new();
        for n in names {
            let m = tensors.remove(&format!("m.{n}")).context("optimizer state: missing m")?;
            let v = tensors.remove(&format!("v.{n}")).with_context(|| format!("optimizer state: missing v.{n}"))?;
            moments.insert(n, (m, v));
        }
        Ok(Self { cfg, moments, t })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let cfg = OptimConfig { lr: 1.0, warmup_steps: 4, min_lr_ratio: 0.1, ..Default::default() };
        assert!((lr_at(&cfg, 0, 14) - 0.25).abs() < 1e-12);
        assert!((lr_at(&cfg, 3, 14) - 1.0).abs() < 1e-12);
        assert!((lr_at(&cfg, 4, 14) - 1.0).abs() < 1e-12);
        assert!((lr_at(&cfg, 9, 14) - 0.55).abs() < 1e-12, "half-way is the mean of peak and floor");
        assert!((lr_at(&cfg, 14, 14) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn adamw_first_step_matches_hand_computation() -> Result<()> {
        // After one step m̂ = g and v̂ = g², so the update is lr·g/(|g|+ε)
        // plus decoupled decay lr·λ·w on the matrix only.
        let cfg = OptimConfig { lr: 0.1, weight_decay: 0.5, clip_grad_norm: 0.0, eps: 1e-8, ..Default::default() };
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::new(&[[1f32, -2.0]], &dev)?)?;
        let b = Var::from_tensor(&Tensor::new(&[3f32], &dev)?)?;
        let params = vec![("w".to_string(), w.clone()), ("b".to_string(), b.clone())];
        let grads = BTreeMap::from([
            ("w".to_string(), Tensor::new(&[[0.5f32, -4.0]], &dev)?),
            ("b".to_string(), Tensor::new(&[2f32], &dev)?),
        ]);
        let mut opt = AdamW::new(cfg);
        let norm = opt.step(&params, &grads, 0.1)?;
        assert!((norm - (0.25f64 + 16.0 + 4.0).sqrt()).abs() < 1e-6);
        let w_new: Vec<Vec<f32>> = w.as_tensor().to_vec2()?;
        assert!((w_new[0][0] - (1.0 - 0.1 - 0.1 * 0.5 * 1.0)).abs() < 1e-5);
        assert!((w_new[0][1] - (-2.0 + 0.1 - 0.1 * 0.5 * -2.0)).abs() < 1e-5);
        let b_new: Vec<f32> = b.as_tensor().to_vec1()?;
        assert!((b_new[0] - (3.0 - 0.1)).abs() < 1e-5, "no decay on a bias");
        Ok(())
    }

    #[test]
    fn clipping_scales_to_the_global_norm() -> Result<()> {
        let cfg = OptimConfig { lr: 1.0, clip_grad_norm: 1.0, beta1: 0.0, beta2: 0.0, eps: 0.0, ..Default::default() };
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::new(&[0f32, 0.0], &dev)?)?;
        let grads = BTreeMap::from([("w".to_string(), Tensor::new(&[3f32, 4.0], &dev)?)]);
        let mut opt = AdamW::new(cfg);
        let norm = opt.step(&[("w".to_string(), w)], &grads, 1.0)?;
        assert!((norm - 5.0).abs() < 1e-6, "the norm before clipping is reported");
        Ok(())
    }
}
