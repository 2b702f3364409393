//! CPU kernels with backward passes of their own, for the places where
//! candle's generic autograd does work a training step does not need:
//!
//! - [`frozen_matmul`]: `x·Wᵀ` with a frozen `W` (LoRA's base). candle's
//!   matmul backward always computes the weight gradient too (and throws it
//!   away for a detached weight): 6N FLOPs per token instead of 4N.
//! - [`token_logprobs`]: the LM head and a log-softmax fused, row-chunked, on
//!   the rows that carry loss only, at the sampler's temperature and top-p;
//!   the `[rows, vocab]` logits are never an autograd tensor.
//! - [`masked_softmax`]: a one-pass softmax with the attention scale and
//!   mask folded in, whose backward is
//!   `p ⊙ (g − Σ g⊙p)` (candle's fused softmax has no backward; one built
//!   from primitives keeps five `[b, h, t, t]` tensors alive).
//! - [`lora_linear`]: `x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ` as one op with a frozen W:
//!   one output tensor instead of four, the rank-r product recomputed in
//!   the backward.
//! - [`rms_norm`], [`swiglu`] and [`rope`] (which also moves heads before
//!   positions, so attention needs no copies): one saved tensor each instead
//!   of four to seven.
//!
//! Fewer saved tensors is most of the memory of a training step: the
//! autograd graph keeps every op's inputs until the backward pass.
//!
//! Each runs on CPU in f32 (the trainer's compute type there); other devices
//! and dtypes (CUDA, the f64 gradient checks) take the primitive path, and
//! tests hold the two paths to the same values and gradients.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Storage, Tensor, D};
use rayon::prelude::*;

type CResult<T> = candle_core::Result<T>;

/// Whether `t` can take the CPU kernels.
pub fn fast_path(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// `dst[m×n] = a[m×k]·b[k×n]` (or `+=` with `accumulate`), row/column
/// strides in elements, on candle's matmul path (the `gemm` crate, rayon
/// threads as candle counts them).
#[allow(clippy::too_many_arguments)]
pub fn sgemm(m: usize, n: usize, k: usize, a: &[f32], a_rs: usize, a_cs: usize, b: &[f32], b_rs: usize, b_cs: usize, dst: &mut [f32], accumulate: bool) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst.len() >= m * n, "sgemm: destination too small");
    if k > 0 {
        assert!(a.len() > (m - 1) * a_rs + (k - 1) * a_cs, "sgemm: lhs too small");
        assert!(b.len() > (k - 1) * b_rs + (n - 1) * b_cs, "sgemm: rhs too small");
    }
    let threads = candle_core::utils::get_num_threads();
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the asserts above keep every index the strides reach inside
    // the slices; dst does not alias a or b (it is a unique borrow).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> CResult<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("{what}: expected f32, got {:?}", s.dtype()) };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: input must be contiguous"),
    }
}

/// Run `f` on the f32 contents of a contiguous CPU tensor.
fn with_f32<R>(t: &Tensor, what: &str, f: impl FnOnce(&[f32]) -> CResult<R>) -> CResult<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => f(f32_slice(s, layout, what)?),
        _ => candle_core::bail!("{what}: CPU tensors only"),
    }
}

/// The rows × width view of a tensor whose last dimension is the width.
fn rows_of(l: &Layout) -> (usize, usize) {
    let dims = l.dims();
    let w = dims.last().copied().unwrap_or(1);
    (dims.iter().product::<usize>() / w.max(1), w)
}

/// `x·Wᵀ + bias` for `x` (layout `l`, `[…, in]`) and `W` `[out, in]`, with
/// the output's shape `[…, out]`.
fn frozen_product(x: &[f32], l: &Layout, w: &Tensor, bias: Option<&Tensor>) -> CResult<(Vec<f32>, Shape)> {
    let (rows, inner) = rows_of(l);
    let (out_dim, w_in) = w.dims2()?;
    if w_in != inner {
        candle_core::bail!("frozen linear: input width {inner}, weight {:?}", w.dims());
    }
    let mut out = vec![0f32; rows * out_dim];
    with_f32(w, "frozen weight", |w| {
        // rhs[k][j] = W[j][k]: Wᵀ read in place.
        sgemm(rows, out_dim, inner, x, inner, 1, w, 1, inner, &mut out, false);
        Ok(())
    })?;
    add_bias(&mut out, bias)?;
    let mut dims = l.dims().to_vec();
    *dims.last_mut().expect("rank ≥ 1") = out_dim;
    Ok((out, Shape::from(dims)))
}

struct FrozenMatmul {
    w: Tensor,
    bias: Option<Tensor>,
}

/// Add a `[n]` bias to every row of `y` `[rows, n]`.
fn add_bias(y: &mut [f32], bias: Option<&Tensor>) -> CResult<()> {
    if let Some(b) = bias {
        with_f32(b, "bias", |b| {
            y.par_chunks_mut(b.len().max(1)).for_each(|row| row.iter_mut().zip(b).for_each(|(v, x)| *v += x));
            Ok(())
        })?;
    }
    Ok(())
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "frozen-matmul input")?;
        let (out, shape) = frozen_product(x, l, &self.w, self.bias.as_ref())?;
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        // dL/dx = dL/dy · W; no dL/dW (the weight is frozen).
        let (rows, _) = rows_of(x.layout());
        let g = grad.detach().contiguous()?.reshape((rows, ()))?;
        Ok(Some(g.matmul(&self.w)?.reshape(x.shape())?))
    }
}

/// `x·Wᵀ (+ bias)` for `x` `[…, in]` and a frozen `W` `[out, in]`: the
/// backward returns only the input gradient. CPU f32 (see [`fast_path`]).
pub fn frozen_matmul(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> CResult<Tensor> {
    let bias = bias.map(|b| b.detach().contiguous()).transpose()?;
    x.contiguous()?.apply_op1(FrozenMatmul { w: w.detach().contiguous()?, bias })
}

struct LoraLinear {
    w: Tensor,
    bias: Option<Tensor>,
    scale: f64,
    /// Dropout's keep-mask (already scaled by 1/(1−p)) on the adapter's
    /// input, shaped like `x`.
    mask: Option<Tensor>,
}

impl LoraLinear {
    fn adapter_input(&self, x: &Tensor) -> CResult<Tensor> {
        match &self.mask {
            Some(m) => x * m,
            None => Ok(x.clone()),
        }
    }
}

impl candle_core::CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, as_: &CpuStorage, al: &Layout, bs: &CpuStorage, bl: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = f32_slice(xs, xl, "lora input")?;
        let a = f32_slice(as_, al, "lora A")?;
        let b = f32_slice(bs, bl, "lora B")?;
        let (rows, inner) = rows_of(xl);
        let (out_dim, _) = self.w.dims2()?;
        let (r, a_in) = rows_of(al);
        let (b_out, b_r) = rows_of(bl);
        if a_in != inner || b_out != out_dim || b_r != r {
            candle_core::bail!("lora-linear: input width {inner}, W {:?}, A {r}×{a_in}, B {b_out}×{b_r}", self.w.dims());
        }
        let (mut out, shape) = frozen_product(x, xl, &self.w, self.bias.as_ref())?;
        // u = x'·Aᵀ [rows, r]; y += u·(s·B)ᵀ.
        let masked;
        let xin: &[f32] = match &self.mask {
            Some(m) => {
                masked = with_f32(m, "dropout mask", |m| Ok(x.iter().zip(m).map(|(a, b)| a * b).collect::<Vec<f32>>()))?;
                &masked
            }
            None => x,
        };
        let mut u = vec![0f32; rows * r];
        sgemm(rows, r, inner, xin, inner, 1, a, 1, inner, &mut u, false);
        let bs: Vec<f32> = b.iter().map(|v| v * self.scale as f32).collect();
        sgemm(rows, out_dim, r, &u, r, 1, &bs, 1, r, &mut out, true);
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(&self, x: &Tensor, a: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Detached: the backward builds no graph of its own (and its results
        // keep no reference to the forward's).
        let (x, a, b) = (&x.detach(), &a.detach(), &b.detach());
        let grad = &grad.detach();
        let (rows, _) = rows_of(x.layout());
        let x2 = x.reshape((rows, ()))?;
        let g = grad.contiguous()?.reshape((rows, ()))?;
        let xin = self.adapter_input(&x2)?;
        let u = xin.matmul(&a.t()?)?; // [rows, r]
        let db = (g.t()?.matmul(&u)? * self.scale)?; // [out, r]
        let du = (g.matmul(b)? * self.scale)?; // [rows, r]
        let da = du.t()?.matmul(&xin)?; // [r, in]
        let dxa = du.matmul(a)?;
        let dxa = match &self.mask {
            Some(m) => (dxa * m)?,
            None => dxa,
        };
        let dx = (g.matmul(&self.w)? + dxa)?.reshape(x.shape())?;
        Ok((Some(dx), Some(da), Some(db)))
    }
}

/// `x·Wᵀ + bias + scale·(x'·Aᵀ)·Bᵀ` (x' = x with dropout's `mask`) for a
/// frozen `W` `[out, in]` and bias, and trained `A` `[r, in]`, `B` `[out, r]`:
/// gradients for x, A and B. CPU f32 (see [`fast_path`]).
pub fn lora_linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, a: &Tensor, b: &Tensor, scale: f64, mask: Option<Tensor>) -> CResult<Tensor> {
    let bias = bias.map(|b| b.detach().contiguous()).transpose()?;
    let mask = mask.map(|m| m.contiguous()).transpose()?;
    x.contiguous()?.apply_op3(&a.contiguous()?, &b.contiguous()?, LoraLinear { w: w.detach().contiguous()?, bias, scale, mask })
}

struct MaskedSoftmax {
    scale: f32,
    /// Additive mask `[b, 1, t, s]`, broadcast over heads.
    bias: Tensor,
}

impl CustomOp1 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "attention scores")?;
        let (b, h, t, k) = l.shape().dims4()?;
        if self.bias.dims() != [b, 1, t, k] {
            candle_core::bail!("masked-softmax: scores {:?}, mask {:?}", l.dims(), self.bias.dims());
        }
        let mut out = x.to_vec();
        let scale = self.scale;
        with_f32(&self.bias, "attention mask", |m| {
            out.par_chunks_mut(k.max(1)).enumerate().for_each(|(r, row)| {
                let (bi, i) = (r / (h * t), r % t);
                let mrow = &m[(bi * t + i) * k..(bi * t + i + 1) * k];
                let mut max = f32::NEG_INFINITY;
                for (v, mv) in row.iter_mut().zip(mrow) {
                    *v = *v * scale + mv;
                    max = max.max(*v);
                }
                let mut sum = 0f32;
                for v in row.iter_mut() {
                    *v = (*v - max).exp();
                    sum += *v;
                }
                let inv = 1.0 / sum;
                row.iter_mut().for_each(|v| *v *= inv);
            });
            Ok(())
        })?;
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, p: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        let (p, grad) = (&p.detach(), &grad.detach());
        let gp = (grad * p)?;
        let s = gp.sum_keepdim(D::Minus1)?;
        Ok(Some(((gp - p.broadcast_mul(&s)?)? * self.scale as f64)?))
    }
}

/// `softmax(scores · scale + bias)` over the last dimension, for attention
/// scores `[b, h, t, s]` and an additive mask `bias` `[b, 1, t, s]` (a
/// constant). CPU f32 (see [`fast_path`]).
pub fn masked_softmax(scores: &Tensor, scale: f64, bias: &Tensor) -> CResult<Tensor> {
    scores.contiguous()?.apply_op1(MaskedSoftmax { scale: scale as f32, bias: bias.detach().to_dtype(DType::F32)?.contiguous()? })
}

struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = f32_slice(xs, xl, "rms-norm input")?;
        let w = f32_slice(ws, wl, "rms-norm weight")?;
        let (_, d) = rows_of(xl);
        if w.len() != d {
            candle_core::bail!("rms-norm: width {d}, weight of {}", w.len());
        }
        let mut out = x.to_vec();
        let eps = self.eps;
        out.par_chunks_mut(d.max(1)).for_each(|row| {
            let ms = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
            let r = 1.0 / (ms + eps).sqrt();
            row.iter_mut().zip(w).for_each(|(v, w)| *v = *v * r * w);
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, g: &Tensor) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        // n = x·r, r = 1/√(mean x² + ε): dx = r·(g⊙w − n·mean(g⊙w⊙n)), dw = Σ g⊙n.
        let (x, w, g) = (&x.detach(), &w.detach(), &g.detach());
        let r = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps as f64)?.sqrt()?.recip()?;
        let n = x.broadcast_mul(&r)?;
        let gw = g.broadcast_mul(w)?;
        let dot = (&gw * &n)?.mean_keepdim(D::Minus1)?;
        let dx = (gw - n.broadcast_mul(&dot)?)?.broadcast_mul(&r)?;
        let d = w.dim(0)?;
        let dw = (g * &n)?.reshape(((), d))?.sum(0)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// RMSNorm over the last dimension with weight `w` `[d]`. CPU f32 (see
/// [`fast_path`]).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> CResult<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps: eps as f32 })
}

struct Swiglu;

impl CustomOp2 for Swiglu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, us: &CpuStorage, ul: &Layout) -> CResult<(CpuStorage, Shape)> {
        let g = f32_slice(gs, gl, "swiglu gate")?;
        let u = f32_slice(us, ul, "swiglu up")?;
        if g.len() != u.len() {
            candle_core::bail!("swiglu: gate {:?}, up {:?}", gl.dims(), ul.dims());
        }
        let mut out = vec![0f32; g.len()];
        out.par_chunks_mut(1 << 14).zip(g.par_chunks(1 << 14)).zip(u.par_chunks(1 << 14)).for_each(|((o, g), u)| {
            for i in 0..o.len() {
                o[i] = g[i] / (1.0 + (-g[i]).exp()) * u[i];
            }
        });
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }

    fn bwd(&self, gate: &Tensor, up: &Tensor, _res: &Tensor, g: &Tensor) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        // silu(x) = x·σ(x); silu'(x) = σ(x)·(1 + x·(1 − σ(x))).
        let (gate, up, g) = (&gate.detach(), &up.detach(), &g.detach());
        let sig = (gate.neg()?.exp()? + 1.0)?.recip()?;
        let silu = (gate * &sig)?;
        let dsilu = (&sig * ((gate * (sig.ones_like()? - &sig)?)? + 1.0)?)?;
        let dgate = ((g * up)? * dsilu)?;
        let dup = (g * silu)?;
        Ok((Some(dgate), Some(dup)))
    }
}

/// `silu(gate) ⊙ up`. CPU f32 (see [`fast_path`]).
pub fn swiglu(gate: &Tensor, up: &Tensor) -> CResult<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, Swiglu)
}

struct Rope {
    /// `[t, hd]` tables (the half-table repeated, as HF's rotate-half).
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    /// out[b, h, t, :] = rot(in[b, t, h, :]) with `dir` = 1 (forward) or −1
    /// (the inverse rotation), and the head/position axes swapped (`back`
    /// swaps them back: input `[b, h, t, d]`, output `[b, t, h, d]`).
    fn apply(&self, x: &[f32], (_b, t, h, d): (usize, usize, usize, usize), dir: f32, back: bool) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        let half = d / 2;
        out.par_chunks_mut(d).enumerate().for_each(|(r, o)| {
            // r indexes the output's rows.
            let (bi, hi, ti) = if back { (r / (t * h), r % h, (r / h) % t) } else { (r / (h * t), (r / t) % h, r % t) };
            let src = if back { ((bi * h + hi) * t + ti) * d } else { ((bi * t + ti) * h + hi) * d };
            let xi = &x[src..src + d];
            let (c, s) = (&self.cos[ti * d..(ti + 1) * d], &self.sin[ti * d..(ti + 1) * d]);
            for j in 0..d {
                // rotate_half(x) = [−x2, x1].
                let rot = if j < half { -xi[j + half] } else { xi[j - half] };
                o[j] = xi[j] * c[j] + dir * rot * s[j];
            }
        });
        out
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "rope input")?;
        let (b, t, h, d) = l.shape().dims4()?;
        if self.cos.len() != t * d {
            candle_core::bail!("rope: {t} positions × {d}, tables of {}", self.cos.len());
        }
        Ok((CpuStorage::F32(self.apply(x, (b, t, h, d), 1.0, false)), Shape::from((b, h, t, d))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        // The rotation is orthogonal: its gradient rotates back (−θ), and
        // the axes swap back. rot(−θ)(g) = g·cos − rotate_half(g)·sin, but
        // the transpose of rotate_half is −rotate_half, so dir = −1 is it.
        let (b, t, h, d) = x.dims4()?;
        let g = grad.detach().contiguous()?;
        let out = with_f32(&g, "rope gradient", |g| Ok(self.apply(g, (b, t, h, d), -1.0, true)))?;
        Ok(Some(Tensor::from_vec(out, (b, t, h, d), x.device())?))
    }
}

/// RoPE (rotate-half) on `x` `[b, t, heads, hd]` with `[t, hd]` cos/sin
/// tables, returned as `[b, heads, t, hd]` (contiguous, ready for
/// attention). CPU f32 (see [`fast_path`]).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> CResult<Tensor> {
    let cos = cos.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let sin = sin.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    x.contiguous()?.apply_op1(Rope { cos, sin })
}

/// Rows of logits per chunk of the fused LM head: 128 × 151,936 × 4 B ≈
/// 78 MB of scratch at a time.
const CHUNK_ROWS: usize = 128;

/// The fused head keeps each row's probabilities for the backward pass
/// while they fit in this many bytes; beyond it they are recomputed (one
/// more head matmul) so memory stays flat for long batches.
pub const KEEP_PROBS_BYTES: usize = 1 << 30;

/// Probability mass kept for the nucleus' candidates: a token below it can
/// only be in a nucleus that these do not fill (then every token is sorted).
const NUCLEUS_CANDIDATE: f32 = 1e-4;

/// Turn one row of tempered logits `z` into the distribution the sampler
/// draws from (softmax, then the top-p nucleus renormalised; `target` is
/// always kept so its log-prob is finite) and return `ln p(target)`. On
/// return `z` holds the probabilities (0 outside the nucleus).
pub fn row_distribution(z: &mut [f32], target: usize, top_p: f32) -> f32 {
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for v in z.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let mut mass = sum;
    if top_p < 1.0 {
        let inv = (1.0 / sum) as f32;
        let keep = nucleus(z, inv, top_p);
        let mut in_set = vec![false; z.len()];
        for &i in &keep {
            in_set[i as usize] = true;
        }
        in_set[target] = true;
        mass = 0.0;
        for (v, &k) in z.iter_mut().zip(&in_set) {
            if k {
                mass += *v as f64;
            } else {
                *v = 0.0;
            }
        }
    }
    let lp = ((z[target] as f64) / mass).ln() as f32;
    let inv = (1.0 / mass) as f32;
    z.iter_mut().for_each(|v| *v *= inv);
    lp
}

/// The smallest set of most probable tokens whose mass reaches `top_p`
/// (probabilities are `e[i]·inv`), ties broken by token id as a stable sort
/// would.
fn nucleus(e: &[f32], inv: f32, top_p: f32) -> Vec<u32> {
    let take = |mut idx: Vec<u32>| -> Option<Vec<u32>> {
        idx.sort_unstable_by(|&a, &b| e[b as usize].total_cmp(&e[a as usize]).then(a.cmp(&b)));
        let mut acc = 0f64;
        for (n, &i) in idx.iter().enumerate() {
            acc += (e[i as usize] * inv) as f64;
            if acc >= top_p as f64 {
                idx.truncate(n + 1);
                return Some(idx);
            }
        }
        None
    };
    let floor = NUCLEUS_CANDIDATE / inv;
    let candidates: Vec<u32> = (0..e.len() as u32).filter(|&i| e[i as usize] >= floor).collect();
    take(candidates).or_else(|| take((0..e.len() as u32).collect())).unwrap_or_else(|| (0..e.len() as u32).collect())
}

struct TokenLogprobs {
    targets: Vec<u32>,
    inv_t: f32,
    top_p: f32,
    w_grad: bool,
    kept: Mutex<Option<Vec<f32>>>,
}

impl TokenLogprobs {
    /// Logits of rows `r0..r0+n` at the temperature, as distributions;
    /// returns each row's log-prob of its target.
    fn chunk(&self, h: &[f32], w: &[f32], d: usize, v: usize, r0: usize, n: usize, buf: &mut [f32]) -> Vec<f32> {
        sgemm(n, v, d, &h[r0 * d..], d, 1, w, 1, d, buf, false);
        let (inv_t, top_p) = (self.inv_t, self.top_p);
        buf[..n * v]
            .par_chunks_mut(v)
            .zip(&self.targets[r0..r0 + n])
            .map(|(row, &t)| {
                row.iter_mut().for_each(|x| *x *= inv_t);
                row_distribution(row, t as usize, top_p)
            })
            .collect()
    }
}

impl CustomOp2 for TokenLogprobs {
    fn name(&self) -> &'static str {
        "token-logprobs"
    }

    fn cpu_fwd(&self, hs: &CpuStorage, hl: &Layout, ws: &CpuStorage, wl: &Layout) -> CResult<(CpuStorage, Shape)> {
        let h = f32_slice(hs, hl, "token-logprobs hidden")?;
        let w = f32_slice(ws, wl, "token-logprobs head")?;
        let (rows, d) = rows_of(hl);
        let (v, wd) = rows_of(wl);
        if wd != d || rows != self.targets.len() {
            candle_core::bail!("token-logprobs: {rows} rows of width {d}, head {v}×{wd}, {} targets", self.targets.len());
        }
        if let Some(&t) = self.targets.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("token-logprobs: target {t} outside the vocabulary of {v}");
        }
        let keep = rows * v * 4 <= KEEP_PROBS_BYTES;
        let mut kept = if keep { vec![0f32; rows * v] } else { Vec::new() };
        let mut scratch = if keep { Vec::new() } else { vec![0f32; CHUNK_ROWS.min(rows) * v] };
        let mut out = Vec::with_capacity(rows);
        for r0 in (0..rows).step_by(CHUNK_ROWS) {
            let n = CHUNK_ROWS.min(rows - r0);
            let buf = if keep { &mut kept[r0 * v..(r0 + n) * v] } else { &mut scratch[..n * v] };
            out.extend(self.chunk(h, w, d, v, r0, n, buf));
        }
        *self.kept.lock().expect("not poisoned") = keep.then_some(kept);
        Ok((CpuStorage::F32(out), Shape::from(rows)))
    }

    fn bwd(&self, h_t: &Tensor, w_t: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let g: Vec<f32> = grad.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let kept = self.kept.lock().expect("not poisoned").take();
        let (rows, d) = h_t.dims2()?;
        let (v, _) = w_t.dims2()?;
        let mut grad_h = vec![0f32; rows * d];
        let mut grad_w = if self.w_grad { vec![0f32; v * d] } else { Vec::new() };
        with_f32(&h_t.contiguous()?, "token-logprobs hidden", |h| {
            with_f32(&w_t.contiguous()?, "token-logprobs head", |w| {
                let mut scratch = if kept.is_some() { Vec::new() } else { vec![0f32; CHUNK_ROWS.min(rows) * v] };
                let mut kept = kept;
                for r0 in (0..rows).step_by(CHUNK_ROWS) {
                    let n = CHUNK_ROWS.min(rows - r0);
                    let buf: &mut [f32] = match kept.as_mut() {
                        Some(k) => &mut k[r0 * v..(r0 + n) * v],
                        None => {
                            self.chunk(h, w, d, v, r0, n, &mut scratch);
                            &mut scratch[..n * v]
                        }
                    };
                    // dlogp/dz = onehot − p, and z = logits / T.
                    let inv_t = self.inv_t;
                    buf.par_chunks_mut(v).enumerate().for_each(|(i, row)| {
                        let s = g[r0 + i] * inv_t;
                        row.iter_mut().for_each(|x| *x *= -s);
                        row[self.targets[r0 + i] as usize] += s;
                    });
                    sgemm(n, d, v, buf, v, 1, w, d, 1, &mut grad_h[r0 * d..(r0 + n) * d], false);
                    if self.w_grad {
                        // dW[V×d] += Gᵀ[V×n] · h[n×d]
                        sgemm(v, d, n, buf, 1, v, &h[r0 * d..], d, 1, &mut grad_w, true);
                    }
                }
                Ok(())
            })
        })?;
        let dev = h_t.device();
        let gh = Tensor::from_vec(grad_h, (rows, d), dev)?;
        let gw = if self.w_grad { Some(Tensor::from_vec(grad_w, (v, d), dev)?) } else { None };
        Ok((Some(gh), gw))
    }
}

/// `ln p(targets[r] | h[r])` for hidden rows `h` `[rows, d]` under the head
/// `w` `[vocab, d]`, where p is the sampler's distribution: softmax of the
/// logits over `temperature`, then the top-p nucleus renormalised (`top_p`
/// 1: all tokens). The head gets a gradient only with `head_grad` (full
/// fine-tuning). CPU f32 (see [`fast_path`]).
pub fn token_logprobs(h: &Tensor, w: &Tensor, targets: &[u32], temperature: f64, top_p: f64, head_grad: bool) -> CResult<Tensor> {
    let op = TokenLogprobs {
        targets: targets.to_vec(),
        inv_t: (1.0 / temperature) as f32,
        top_p: top_p as f32,
        w_grad: head_grad,
        kept: Mutex::new(None),
    };
    let w = if head_grad { w.contiguous()? } else { w.detach().contiguous()? };
    h.contiguous()?.apply_op2(&w, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect()
    }

    fn max_gap(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn sgemm_matches_a_naive_product_with_strides_and_accumulation() {
        let (m, n, k) = (5, 7, 3);
        let a = rand_vec(m * k, 1);
        let b = rand_vec(n * k, 2); // stored as [n][k]: rhs[k][j] = b[j*k + kk]
        let mut dst = vec![1f32; m * n];
        sgemm(m, n, k, &a, k, 1, &b, 1, k, &mut dst, true);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = 1.0 + (0..k).map(|kk| a[i * k + kk] * b[j * k + kk]).sum::<f32>();
                assert!((dst[i * n + j] - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn frozen_matmul_equals_matmul_and_gives_only_the_input_gradient() {
        let dev = Device::Cpu;
        let x = Var::from_vec(rand_vec(2 * 3 * 8, 3), (2, 3, 8), &dev).unwrap();
        let w = Var::from_vec(rand_vec(5 * 8, 4), (5, 8), &dev).unwrap();
        let y = frozen_matmul(x.as_tensor(), w.as_tensor(), None).unwrap();
        let want = x.as_tensor().broadcast_matmul(&w.as_tensor().t().unwrap()).unwrap();
        assert!(max_gap(&y, &want) < 1e-6);
        let g = (y.sqr().unwrap().sum_all().unwrap()).backward().unwrap();
        let g_ref = (want.sqr().unwrap().sum_all().unwrap()).backward().unwrap();
        assert!(max_gap(g.get(x.as_tensor()).unwrap(), g_ref.get(x.as_tensor()).unwrap()) < 1e-5);
        assert!(g.get(w.as_tensor()).is_none(), "the frozen weight gets no gradient");
    }

    #[test]
    fn fused_layer_ops_match_primitives_in_value_and_gradient() {
        let dev = Device::Cpu;
        let x = Var::from_vec(rand_vec(2 * 3 * 4 * 8, 5).iter().map(|v| v * 4.0).collect(), (2, 3, 4, 8), &dev).unwrap();
        let wts = Tensor::from_vec(rand_vec(2 * 3 * 4 * 8, 6), (2, 3, 4, 8), &dev).unwrap();
        let check = |ours: Tensor, theirs: Tensor, vars: &[&Var], what: &str| {
            assert!(max_gap(&ours, &theirs) < 1e-5, "{what}: values");
            let w = wts.reshape(ours.shape()).unwrap();
            let g1 = (&ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&theirs * &w).unwrap().sum_all().unwrap().backward().unwrap();
            for v in vars {
                assert!(max_gap(g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap()) < 1e-4, "{what}: gradient");
            }
        };
        // Masked softmax: scores [2, 3, 4, 8], mask [2, 1, 4, 8].
        let mask = Tensor::from_vec((0..64).map(|i| if i % 5 == 0 { -1e9f32 } else { 0.0 }).collect::<Vec<_>>(), (2, 1, 4, 8), &dev).unwrap();
        let theirs = crate::model::softmax_last(&(x.as_tensor() * 0.3).unwrap().broadcast_add(&mask).unwrap()).unwrap();
        check(masked_softmax(x.as_tensor(), 0.3, &mask).unwrap(), theirs, &[&x], "masked softmax");
        // RMSNorm with a weight.
        let w = Var::from_vec(rand_vec(8, 7).iter().map(|v| 1.0 + v).collect(), 8, &dev).unwrap();
        let xs = x.as_tensor();
        let ms = xs.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let theirs = xs.broadcast_div(&(ms + 1e-6).unwrap().sqrt().unwrap()).unwrap().broadcast_mul(w.as_tensor()).unwrap();
        check(rms_norm(xs, w.as_tensor(), 1e-6).unwrap(), theirs, &[&x, &w], "rms norm");
        // SwiGLU.
        let up = Var::from_vec(rand_vec(2 * 3 * 4 * 8, 8), (2, 3, 4, 8), &dev).unwrap();
        let theirs = (xs.silu().unwrap() * up.as_tensor()).unwrap();
        check(swiglu(xs, up.as_tensor()).unwrap(), theirs, &[&x, &up], "swiglu");
        // RoPE: x as [b=2, t=3, h=4, d=8] → [b, h, t, d].
        let cos = Tensor::from_vec(rand_vec(24, 9), (3, 8), &dev).unwrap();
        let sin = Tensor::from_vec(rand_vec(24, 10), (3, 8), &dev).unwrap();
        let (cos, sin) = (Tensor::cat(&[&cos.narrow(1, 0, 4).unwrap(), &cos.narrow(1, 0, 4).unwrap()], 1).unwrap(), Tensor::cat(&[&sin.narrow(1, 0, 4).unwrap(), &sin.narrow(1, 0, 4).unwrap()], 1).unwrap());
        let xt = xs.transpose(1, 2).unwrap();
        let (x1, x2) = (xt.narrow(3, 0, 4).unwrap(), xt.narrow(3, 4, 4).unwrap());
        let rot = Tensor::cat(&[&x2.neg().unwrap(), &x1], 3).unwrap();
        let theirs = (xt.broadcast_mul(&cos).unwrap() + rot.broadcast_mul(&sin).unwrap()).unwrap();
        check(rope(xs, &cos, &sin).unwrap(), theirs, &[&x], "rope");
    }

    #[test]
    fn lora_linear_matches_primitives_with_and_without_dropout() {
        let dev = Device::Cpu;
        let x = Var::from_vec(rand_vec(5 * 8, 11), (5, 8), &dev).unwrap();
        let w = Tensor::from_vec(rand_vec(6 * 8, 12), (6, 8), &dev).unwrap();
        let bias = Tensor::from_vec(rand_vec(6, 13), 6, &dev).unwrap();
        let a = Var::from_vec(rand_vec(3 * 8, 14), (3, 8), &dev).unwrap();
        let b = Var::from_vec(rand_vec(6 * 3, 15), (6, 3), &dev).unwrap();
        let wts = Tensor::from_vec(rand_vec(30, 16), (5, 6), &dev).unwrap();
        for mask in [None, Some(Tensor::from_vec((0..40).map(|i| if i % 3 == 0 { 0.0f32 } else { 1.5 }).collect::<Vec<_>>(), (5, 8), &dev).unwrap())] {
            let ours = lora_linear(x.as_tensor(), &w, Some(&bias), a.as_tensor(), b.as_tensor(), 0.7, mask.clone()).unwrap();
            let xin = match &mask {
                Some(m) => (x.as_tensor() * m).unwrap(),
                None => x.as_tensor().clone(),
            };
            let delta = (xin.matmul(&a.as_tensor().t().unwrap()).unwrap().matmul(&b.as_tensor().t().unwrap()).unwrap() * 0.7).unwrap();
            let theirs = ((x.as_tensor().matmul(&w.t().unwrap()).unwrap().broadcast_add(&bias).unwrap()) + delta).unwrap();
            assert!(max_gap(&ours, &theirs) < 1e-5);
            let g1 = (&ours * &wts).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&theirs * &wts).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &a, &b] {
                assert!(max_gap(g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap()) < 1e-5);
            }
        }
    }

    /// The fused head against logits + log-softmax from primitives, with and
    /// without a head gradient, at a temperature, over more rows than a chunk.
    #[test]
    fn fused_head_matches_primitives_in_value_and_gradients() {
        let dev = Device::Cpu;
        let (rows, d, v) = (CHUNK_ROWS + 3, 6, 11);
        let h = Var::from_vec(rand_vec(rows * d, 7).iter().map(|x| x * 3.0).collect(), (rows, d), &dev).unwrap();
        let w = Var::from_vec(rand_vec(v * d, 8).iter().map(|x| x * 3.0).collect(), (v, d), &dev).unwrap();
        let targets: Vec<u32> = (0..rows as u32).map(|i| (i * 7) % v as u32).collect();
        let wts = Tensor::from_vec(rand_vec(rows, 9), rows, &dev).unwrap();
        let temp = 0.7;
        for head_grad in [false, true] {
            let ours = token_logprobs(h.as_tensor(), w.as_tensor(), &targets, temp, 1.0, head_grad).unwrap();
            let wt = if head_grad { w.as_tensor().clone() } else { w.as_tensor().detach() };
            let logits = (h.as_tensor().matmul(&wt.t().unwrap()).unwrap() / temp).unwrap();
            let tg = Tensor::new(targets.as_slice(), &dev).unwrap();
            let theirs = crate::model::log_softmax_last(&logits).unwrap().gather(&tg.unsqueeze(1).unwrap(), 1).unwrap().squeeze(1).unwrap();
            assert!(max_gap(&ours, &theirs) < 1e-5);
            let g1 = (&ours * &wts).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&theirs * &wts).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(max_gap(g1.get(h.as_tensor()).unwrap(), g2.get(h.as_tensor()).unwrap()) < 1e-5);
            match head_grad {
                true => assert!(max_gap(g1.get(w.as_tensor()).unwrap(), g2.get(w.as_tensor()).unwrap()) < 1e-5),
                false => assert!(g1.get(w.as_tensor()).is_none()),
            }
        }
    }

    #[test]
    fn nucleus_keeps_the_smallest_top_set_and_the_target() {
        // Probabilities 0.5, 0.3, 0.15, 0.05 (shuffled): top-p 0.75 keeps the first two.
        let mut z: Vec<f32> = [0.15f32, 0.5, 0.05, 0.3].iter().map(|p| p.ln()).collect();
        let lp = row_distribution(&mut z, 3, 0.75);
        assert!((lp - (0.3f32 / 0.8).ln()).abs() < 1e-6);
        assert_eq!(z[0], 0.0);
        assert_eq!(z[2], 0.0);
        assert!((z[1] - 0.625).abs() < 1e-6);
        // A target outside the nucleus joins it.
        let mut z: Vec<f32> = [0.15f32, 0.5, 0.05, 0.3].iter().map(|p| p.ln()).collect();
        let lp = row_distribution(&mut z, 2, 0.75);
        assert!((lp - (0.05f32 / 0.85).ln()).abs() < 1e-6);
    }
}
