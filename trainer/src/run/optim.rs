//! AdamW (Loshchilov & Hutter, decoupled weight decay) with fp32 moments,
//! weight decay only on matrices, global-norm clipping, and a linear-warmup
//! cosine schedule.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Storage, Tensor, Var};
use rayon::prelude::*;

use crate::run::config::OptimConfig;
use crate::model::kernels;

/// Optimizer state: first and second moments per parameter name.
pub struct AdamW {
    cfg: OptimConfig,
    /// Moments (m, v) by parameter name.
    pub moments: BTreeMap<String, Moments>,
    /// Updates applied so far (bias correction uses it).
    pub t: u64,
}

/// One parameter's first and second moments.
pub enum Moments {
    /// CPU f32 parameters: plain buffers, updated in place with the weight.
    Host {
        /// The parameter's shape.
        shape: Vec<usize>,
        /// First moment.
        m: Vec<f32>,
        /// Second moment.
        v: Vec<f32>,
    },
    /// Other devices and dtypes: tensors, updated with tensor ops.
    Tensors(Tensor, Tensor),
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
        sq += if kernels::fast_path(g) {
            with_host(g, |x| Ok(x.par_chunks(1 << 16).map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>()).sum::<f64>()))?
        } else {
            g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?
        };
    }
    Ok(sq.sqrt())
}

fn with_host<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    match (&*s, l.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => f(&v[a..b]),
        _ => anyhow::bail!("expected a contiguous CPU f32 tensor"),
    }
}

/// The scalars of one AdamW update.
#[derive(Clone, Copy)]
struct Step {
    lr: f32,
    b1: f32,
    b2: f32,
    c1: f32,
    c2: f32,
    eps: f32,
    decay: f32,
    clip: f32,
}

/// AdamW on a CPU f32 weight, in place, with its moments.
struct HostUpdate<'a> {
    g: &'a [f32],
    mv: std::sync::Mutex<(&'a mut [f32], &'a mut [f32])>,
    s: Step,
}

impl InplaceOp1 for HostUpdate<'_> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let CpuStorage::F32(w) = storage else { candle_core::bail!("adamw: expected f32 weights") };
        let Some((a, b)) = layout.contiguous_offsets() else { candle_core::bail!("adamw: weights must be contiguous") };
        let w = &mut w[a..b];
        let mut mv = self.mv.lock().expect("not poisoned");
        let (m, v) = &mut *mv;
        let s = self.s;
        const CH: usize = 1 << 14;
        w.par_chunks_mut(CH).zip(m.par_chunks_mut(CH)).zip(v.par_chunks_mut(CH)).zip(self.g.par_chunks(CH)).for_each(|(((w, m), v), g)| {
            for i in 0..w.len() {
                let gi = g[i] * s.clip;
                m[i] = m[i] * s.b1 + gi * (1.0 - s.b1);
                v[i] = v[i] * s.b2 + gi * gi * (1.0 - s.b2);
                let update = (m[i] / s.c1) / ((v[i] / s.c2).sqrt() + s.eps);
                // Decoupled decay uses the weight before this update.
                w[i] = w[i] - update * s.lr - w[i] * s.decay;
            }
        });
        Ok(())
    }
}

impl AdamW {
    /// Fresh state.
    pub fn new(cfg: OptimConfig) -> Self {
        Self { cfg, moments: BTreeMap::new(), t: 0 }
    }

    /// One update of `params` with `grads` (fp32) at learning rate `lr`;
    /// gradients are first clipped to the configured global norm. Returns
    /// the norm before clipping. CPU f32 parameters are updated in place
    /// (no temporaries the size of the model); others with tensor ops.
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
            let decay = if self.cfg.weight_decay > 0.0 && w.rank() >= 2 { lr * self.cfg.weight_decay } else { 0.0 };
            let host = kernels::fast_path(w) && kernels::fast_path(g) && w.is_contiguous();
            let moments = match self.moments.remove(name) {
                Some(mv) => mv,
                None if host => Moments::Host { shape: w.dims().to_vec(), m: vec![0.0; w.elem_count()], v: vec![0.0; w.elem_count()] },
                None => Moments::Tensors(w.zeros_like()?, w.zeros_like()?),
            };
            let moments = match moments {
                Moments::Host { shape, mut m, mut v } if host => {
                    anyhow::ensure!(m.len() == w.elem_count(), "optimizer state for {name} has {} values, the weight {}", m.len(), w.elem_count());
                    let s = Step { lr: lr as f32, b1: b1 as f32, b2: b2 as f32, c1: c1 as f32, c2: c2 as f32, eps: self.cfg.eps as f32, decay: decay as f32, clip: clip as f32 };
                    with_host(g, |gs| {
                        let op = HostUpdate { g: gs, mv: std::sync::Mutex::new((&mut m, &mut v)), s };
                        w.inplace_op1(&op).with_context(|| format!("updating {name}"))
                    })?;
                    Moments::Host { shape, m, v }
                }
                other => {
                    let (m, v) = match other {
                        Moments::Tensors(m, v) => (m, v),
                        Moments::Host { shape, m, v } => (Tensor::from_vec(m, shape.as_slice(), w.device())?, Tensor::from_vec(v, shape.as_slice(), w.device())?),
                    };
                    let g = (g.to_dtype(w.dtype())? * clip)?;
                    let m = ((m * b1)? + (&g * (1.0 - b1))?)?;
                    let v = ((v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
                    let update = ((&m / c1)? / ((&v / c2)?.sqrt()? + self.cfg.eps)?)?;
                    let mut new_w = (w - (update * lr)?)?;
                    // Decay matrices only: norms and biases (1-D) are left alone.
                    if decay > 0.0 {
                        new_w = (new_w - (w * decay)?)?;
                    }
                    var.set(&new_w).with_context(|| format!("updating {name}"))?;
                    Moments::Tensors(m, v)
                }
            };
            self.moments.insert(name.clone(), moments);
        }
        Ok(norm)
    }

    /// State as named tensors (`m.NAME`, `v.NAME`) for a checkpoint.
    pub fn state_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (n, mv) in &self.moments {
            let (m, v) = match mv {
                Moments::Tensors(m, v) => (m.clone(), v.clone()),
                Moments::Host { shape, m, v } => (
                    Tensor::from_slice(m, shape.as_slice(), &candle_core::Device::Cpu).expect("shape matches"),
                    Tensor::from_slice(v, shape.as_slice(), &candle_core::Device::Cpu).expect("shape matches"),
                ),
            };
            out.insert(format!("m.{n}"), m);
            out.insert(format!("v.{n}"), v);
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
            // Moments are kept in f32 (the master weights' type); a parked
            // checkpoint stores them rounded to bf16 (`slim --moments bf16`).
            let (m, v) = (m.to_dtype(DType::F32)?, v.to_dtype(DType::F32)?);
            let mv = if kernels::fast_path(&m) && kernels::fast_path(&v) {
                Moments::Host { shape: m.dims().to_vec(), m: m.flatten_all()?.to_vec1()?, v: v.flatten_all()?.to_vec1()? }
            } else {
                Moments::Tensors(m, v)
            };
            moments.insert(n, mv);
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
