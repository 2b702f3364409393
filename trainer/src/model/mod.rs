//! A training-mode Qwen2, written out in one file.
//!
//! candle-transformers' `qwen2.rs` is for inference: it returns only the last
//! position's logits, keeps an internal KV cache, and uses fused ops with no
//! backward pass (`softmax_last_dim`, contiguous `rms_norm`, fused `rope`), so
//! parameters upstream of them silently get no gradient. Every op here is a
//! primitive candle can differentiate: RMSNorm, rotate-half RoPE, GQA
//! attention with q/k/v biases, SwiGLU, causal plus padding masks, logits for
//! every position. [`Qwen2::forward_cached`] is the separate KV-cached path for
//! sampling.
//!
//! Weights are fp32 master copies held in [`Var`]s and named as in the
//! Hugging Face checkpoint (`model.layers.0.self_attn.q_proj.weight`, ...);
//! the forward casts them to the compute dtype (bf16 on CUDA), so gradients
//! and optimizer state stay fp32. LoRA adapters (`...q_proj.lora_A.weight`,
//! `lora_B`) wrap chosen linear layers; with LoRA on, base weights are
//! detached and only adapters train.
//!
//! This folder owns the network: [`Qwen2`] with its LoRA adapters and KV
//! cache, and [`kernels`] (fused CPU forward/backward ops). It imports
//! nothing else of the trainer.

pub mod kernels;

use std::collections::BTreeMap;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Hyperparameters, read from a Hugging Face `config.json` (unknown keys are
/// ignored) or from GGUF metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Qwen2Config {
    /// Rows of the embedding (and LM head).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// SwiGLU inner width.
    pub intermediate_size: usize,
    /// Decoder blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention).
    pub num_key_value_heads: usize,
    /// Context length the model was trained for.
    pub max_position_embeddings: usize,
    /// RoPE base frequency.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// Whether the LM head reuses the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn default_theta() -> f64 {
    1_000_000.0
}
fn default_eps() -> f64 {
    1e-6
}

/// The tiny architecture for tests and demos: 2 layers, width 64.
pub fn tiny_config(vocab_size: usize) -> Qwen2Config {
    Qwen2Config {
        vocab_size,
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 1024,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-6,
        tie_word_embeddings: true,
    }
}

impl Qwen2Config {
    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Check shapes that the forward relies on.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.vocab_size > 0 && self.hidden_size > 0 && self.num_hidden_layers > 0, "model config: vocab_size, hidden_size and num_hidden_layers must be positive");
        ensure!(
            self.num_attention_heads > 0 && self.hidden_size % self.num_attention_heads == 0,
            "model config: hidden_size {} is not a multiple of num_attention_heads {}",
            self.hidden_size,
            self.num_attention_heads
        );
        ensure!(
            self.num_key_value_heads > 0 && self.num_attention_heads % self.num_key_value_heads == 0,
            "model config: num_attention_heads {} is not a multiple of num_key_value_heads {}",
            self.num_attention_heads,
            self.num_key_value_heads
        );
        ensure!(self.head_dim() % 2 == 0, "model config: head dimension {} must be even for RoPE", self.head_dim());
        Ok(())
    }

    /// Names and shapes of every base weight, in HF naming.
    pub fn weight_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let kv = self.num_key_value_heads * self.head_dim();
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
        for l in 0..self.num_hidden_layers {
            let p = format!("model.layers.{l}");
            for (n, s) in [
                ("self_attn.q_proj.weight", vec![h, h]),
                ("self_attn.q_proj.bias", vec![h]),
                ("self_attn.k_proj.weight", vec![kv, h]),
                ("self_attn.k_proj.bias", vec![kv]),
                ("self_attn.v_proj.weight", vec![kv, h]),
                ("self_attn.v_proj.bias", vec![kv]),
                ("self_attn.o_proj.weight", vec![h, h]),
                ("mlp.gate_proj.weight", vec![i, h]),
                ("mlp.up_proj.weight", vec![i, h]),
                ("mlp.down_proj.weight", vec![h, i]),
                ("input_layernorm.weight", vec![h]),
                ("post_attention_layernorm.weight", vec![h]),
            ] {
                out.push((format!("{p}.{n}"), s));
            }
        }
        out.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![v, h]));
        }
        out
    }

    /// Parameter count of the base model.
    pub fn n_params(&self) -> usize {
        self.weight_shapes().iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }
}

/// The linear layers LoRA may wrap, by their HF short names.
pub const LORA_TARGETS: &[&str] = &["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// LoRA settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Adapter rank r.
    pub rank: usize,
    /// Scale numerator: the update is (alpha / r) · B A.
    pub alpha: f64,
    /// Dropout on the adapter's input while training.
    #[serde(default)]
    pub dropout: f64,
    /// Which linear layers get adapters (of [`LORA_TARGETS`]).
    pub targets: Vec<String>,
}

impl LoraConfig {
    /// Check the settings.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.rank > 0, "lora.rank must be at least 1");
        ensure!(self.alpha > 0.0, "lora.alpha must be positive");
        ensure!((0.0..1.0).contains(&self.dropout), "lora.dropout must be in [0, 1)");
        ensure!(!self.targets.is_empty(), "lora.targets is empty: name at least one of {LORA_TARGETS:?}");
        for t in &self.targets {
            ensure!(LORA_TARGETS.contains(&t.as_str()), "lora.targets: unknown module '{t}' (expected some of {LORA_TARGETS:?})");
        }
        Ok(())
    }

    fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// Where a LoRA pair for `weight` (a `.weight` name) is stored.
pub fn lora_names(weight: &str) -> (String, String) {
    let base = weight.trim_end_matches(".weight");
    (format!("{base}.lora_A.weight"), format!("{base}.lora_B.weight"))
}

/// The model: configuration, fp32 weights, optional LoRA adapters.
pub struct Qwen2 {
    /// Hyperparameters.
    pub config: Qwen2Config,
    weights: BTreeMap<String, Var>,
    lora: Option<(LoraConfig, BTreeMap<String, Var>)>,
    compute: DType,
    device: Device,
}

/// Per-layer keys and values for [`Qwen2::forward_cached`].
#[derive(Default, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// Tokens already in the cache.
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map_or(0, |(k, _)| k.dim(2).unwrap_or(0))
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drop everything after the first `n` tokens (the controller's rollback).
    pub fn truncate(&mut self, n: usize) -> Result<()> {
        for (k, v) in self.layers.iter_mut().flatten() {
            if n < k.dim(2)? {
                *k = k.narrow(2, 0, n)?;
                *v = v.narrow(2, 0, n)?;
            }
        }
        Ok(())
    }
}

/// Dropout randomness for one forward: drawn from the trainer's seeded RNG
/// so runs (and resumed runs) are reproducible; `None` means no dropout.
pub type DropoutRng<'a> = Option<&'a mut ChaCha8Rng>;

impl Qwen2 {
    /// Build from named tensors (every name of [`Qwen2Config::weight_shapes`]
    /// with its shape). With `lora`, adapters found among the tensors are
    /// used (a checkpoint); missing ones are initialized from `rng` (A
    /// uniform in ±1/√in, B zero, so training starts at the base model).
    pub fn from_tensors(
        config: Qwen2Config,
        mut tensors: BTreeMap<String, Tensor>,
        lora: Option<LoraConfig>,
        rng: &mut ChaCha8Rng,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        // A tied model's file may still carry lm_head; it is the embedding.
        if config.tie_word_embeddings {
            tensors.remove("lm_head.weight");
        }
        let mut weights = BTreeMap::new();
        let mut missing = Vec::new();
        for (name, shape) in config.weight_shapes() {
            match tensors.remove(&name) {
                None => missing.push(name),
                Some(t) => {
                    ensure!(t.dims() == shape.as_slice(), "tensor '{name}' has shape {:?}, the config needs {:?}", t.dims(), shape);
                    // Detached first, so the Var is always a copy: a model never
                    // shares storage with another (a frozen reference would
                    // otherwise move with the policy it was built beside).
                    let t = t.to_dtype(DType::F32)?.to_device(device)?.detach();
                    weights.insert(name, Var::from_tensor(&t)?);
                }
            }
        }
        if !missing.is_empty() {
            bail!("{} weight(s) missing or misnamed, the first: '{}'", missing.len(), missing[0]);
        }
        let mut adapters = BTreeMap::new();
        if let Some(cfg) = &lora {
            cfg.validate()?;
            for (name, shape) in config.weight_shapes() {
                if !cfg.targets.iter().any(|t| name.ends_with(&format!("{t}.weight"))) {
                    continue;
                }
                let (out_dim, in_dim) = (shape[0], shape[1]);
                let (a_name, b_name) = lora_names(&name);
                let a = match tensors.remove(&a_name) {
                    Some(t) => t,
                    None => uniform(rng, &[cfg.rank, in_dim], 1.0 / (in_dim as f64).sqrt(), device)?,
                };
                let b = match tensors.remove(&b_name) {
                    Some(t) => t,
                    None => Tensor::zeros((out_dim, cfg.rank), DType::F32, device)?,
                };
                ensure!(a.dims() == [cfg.rank, in_dim], "adapter '{a_name}' has shape {:?}, expected {:?}", a.dims(), [cfg.rank, in_dim]);
                ensure!(b.dims() == [out_dim, cfg.rank], "adapter '{b_name}' has shape {:?}, expected {:?}", b.dims(), [out_dim, cfg.rank]);
                adapters.insert(a_name, Var::from_tensor(&a.to_dtype(DType::F32)?.to_device(device)?.detach())?);
                adapters.insert(b_name, Var::from_tensor(&b.to_dtype(DType::F32)?.to_device(device)?.detach())?);
            }
        }
        if let Some(name) = tensors.keys().next() {
            bail!("unexpected tensor '{name}' (not a weight of this Qwen2 config{})", if lora.is_none() { ", and LoRA is off" } else { "" });
        }
        Ok(Self { config, weights, lora: lora.map(|c| (c, adapters)), compute: DType::F32, device: device.clone() })
    }

    /// Random initialization (normal, std 0.02; norms at 1; biases 0), for
    /// tiny models made from scratch.
    pub fn init_random(config: Qwen2Config, rng: &mut ChaCha8Rng, device: &Device) -> Result<Self> {
        let mut tensors = BTreeMap::new();
        for (name, shape) in config.weight_shapes() {
            let t = if name.ends_with("norm.weight") {
                Tensor::ones(shape.as_slice(), DType::F32, device)?
            } else if name.ends_with(".bias") {
                Tensor::zeros(shape.as_slice(), DType::F32, device)?
            } else {
                normal(rng, &shape, 0.02, device)?
            };
            tensors.insert(name, t);
        }
        Self::from_tensors(config, tensors, None, rng, device)
    }

    /// Compute in `dtype` (bf16 on CUDA); weights stay fp32.
    pub fn set_compute_dtype(&mut self, dtype: DType) {
        self.compute = dtype;
    }

    /// Convert the master weights (and adapters) to `dtype` and compute in
    /// it: f64 for finite-difference gradient checks.
    pub fn cast(&mut self, dtype: DType) -> Result<()> {
        for v in self.weights.values_mut() {
            *v = Var::from_tensor(&v.as_tensor().to_dtype(dtype)?)?;
        }
        if let Some((_, a)) = &mut self.lora {
            for v in a.values_mut() {
                *v = Var::from_tensor(&v.as_tensor().to_dtype(dtype)?)?;
            }
        }
        self.compute = dtype;
        Ok(())
    }

    /// Norms, attention scores and logits: f64 when computing in f64, else f32.
    fn acc(&self) -> DType {
        if self.compute == DType::F64 {
            DType::F64
        } else {
            DType::F32
        }
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// LoRA settings, when adapters are attached.
    pub fn lora(&self) -> Option<&LoraConfig> {
        self.lora.as_ref().map(|(c, _)| c)
    }

    /// Every tensor (base weights and adapters) by name, for checkpoints.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out: BTreeMap<String, Tensor> = self.weights.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
        if let Some((_, a)) = &self.lora {
            out.extend(a.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())));
        }
        out
    }

    /// The parameters the optimizer updates: adapters under LoRA, every
    /// base weight otherwise.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        match &self.lora {
            Some((_, a)) => a.iter().map(|(n, v)| (n.clone(), v.clone())).collect(),
            None => self.weights.iter().map(|(n, v)| (n.clone(), v.clone())).collect(),
        }
    }

    /// Fold the adapters into the base weights (W += (α/r)·B·A) and drop
    /// them: the result is a plain model with the same logits.
    pub fn merge_lora(&mut self) -> Result<()> {
        let Some((cfg, adapters)) = self.lora.take() else { return Ok(()) };
        for (name, w) in &self.weights {
            let (a_name, b_name) = lora_names(name);
            if let (Some(a), Some(b)) = (adapters.get(&a_name), adapters.get(&b_name)) {
                let delta = (b.as_tensor().matmul(a.as_tensor())? * cfg.scale())?;
                w.set(&(w.as_tensor() + delta)?)?;
            }
        }
        Ok(())
    }

    /// Switch adapters off (the frozen reference for a KL term) or back on.
    pub fn without_lora(&self) -> Self {
        Self {
            config: self.config.clone(),
            weights: self.weights.clone(),
            lora: None,
            compute: self.compute,
            device: self.device.clone(),
        }
    }

    fn w(&self, name: &str) -> Result<Tensor> {
        let var = self.weights.get(name).with_context(|| format!("no weight '{name}'"))?;
        // Under LoRA the base is frozen: detached, it gets no gradient.
        let t = if self.lora.is_some() { var.as_tensor().detach() } else { var.as_tensor().clone() };
        Ok(if t.dtype() == self.compute { t } else { t.to_dtype(self.compute)? })
    }

    fn linear(&self, x: &Tensor, prefix: &str, bias: bool, dropout: &mut DropoutRng) -> Result<Tensor> {
        let w_name = format!("{prefix}.weight");
        let w = self.w(&w_name)?;
        let (b, t, d) = x.dims3()?;
        let flat = x.reshape((b * t, d))?;
        let bias_t = if bias { Some(self.w(&format!("{prefix}.bias"))?) } else { None };
        let adapter = self.lora.as_ref().and_then(|(cfg, adapters)| {
            let (a_name, b_name) = lora_names(&w_name);
            Some((cfg, adapters.get(&a_name)?, adapters.get(&b_name)?))
        });
        let fast = kernels::fast_path(&flat) && kernels::fast_path(&w);
        let y = match (&self.lora, adapter) {
            // A frozen base: one op with only the gradients it needs.
            (Some(_), Some((cfg, a, bm))) if fast => {
                let mask = match dropout {
                    Some(rng) if cfg.dropout > 0.0 => Some(dropout_mask(&flat, cfg.dropout, rng)?),
                    _ => None,
                };
                kernels::lora_linear(&flat, &w, bias_t.as_ref(), a.as_tensor(), bm.as_tensor(), cfg.scale(), mask)?
            }
            (Some(_), None) if fast => kernels::frozen_matmul(&flat, &w, bias_t.as_ref())?,
            _ => {
                let mut y = flat.matmul(&w.t()?)?;
                if let Some(bt) = &bias_t {
                    y = y.broadcast_add(bt)?;
                }
                if let Some((cfg, a, bm)) = adapter {
                    let a = a.as_tensor().to_dtype(self.compute)?;
                    let bm = bm.as_tensor().to_dtype(self.compute)?;
                    let input = match dropout {
                        Some(rng) if cfg.dropout > 0.0 => (&flat * dropout_mask(&flat, cfg.dropout, rng)?)?,
                        _ => flat.clone(),
                    };
                    let delta = (input.matmul(&a.t()?)?.matmul(&bm.t()?)? * cfg.scale())?;
                    y = (y + delta)?;
                }
                y
            }
        };
        Ok(y.reshape((b, t, ()))?)
    }

    fn rms_norm(&self, x: &Tensor, name: &str) -> Result<Tensor> {
        if kernels::fast_path(x) {
            let w = self.weights.get(name).with_context(|| format!("no weight '{name}'"))?;
            let w = if self.lora.is_some() { w.as_tensor().detach() } else { w.as_tensor().clone() };
            if kernels::fast_path(&w) {
                return Ok(kernels::rms_norm(x, &w, self.config.rms_norm_eps)?);
            }
        }
        let x32 = x.to_dtype(self.acc())?;
        let ms = x32.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = x32.broadcast_div(&(ms + self.config.rms_norm_eps)?.sqrt()?)?;
        let w = self.weights.get(name).with_context(|| format!("no weight '{name}'"))?;
        let w = if self.lora.is_some() { w.as_tensor().detach() } else { w.as_tensor().clone() };
        Ok(normed.broadcast_mul(&w.to_dtype(self.acc())?)?.to_dtype(self.compute)?)
    }

    /// cos and sin tables for positions `start..start+len`, each
    /// `[len, head_dim]` (the half-table repeated, as HF's rotate-half).
    fn rope_tables(&self, start: usize, len: usize) -> Result<(Tensor, Tensor)> {
        let hd = self.config.head_dim();
        let inv: Vec<f32> =
            (0..hd / 2).map(|i| (1.0 / self.config.rope_theta.powf(2.0 * i as f64 / hd as f64)) as f32).collect();
        let mut cos = Vec::with_capacity(len * hd);
        let mut sin = Vec::with_capacity(len * hd);
        for p in start..start + len {
            for _ in 0..2 {
                for f in &inv {
                    let angle = p as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let cos = Tensor::from_vec(cos, (len, hd), &self.device)?.to_dtype(self.compute)?;
        let sin = Tensor::from_vec(sin, (len, hd), &self.device)?.to_dtype(self.compute)?;
        Ok((cos, sin))
    }

    /// The decoder over `input_ids` `[batch, len]` at positions starting at
    /// `start`, attending to `cache` (if any) and `bias` (additive mask
    /// `[batch, 1, len, start+len]`). Returns final hidden states.
    fn decoder(
        &self,
        input_ids: &Tensor,
        start: usize,
        bias: &Tensor,
        mut cache: Option<&mut KvCache>,
        dropout: &mut DropoutRng,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let (b, t) = input_ids.dims2()?;
        let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim());
        let emb = self.w("model.embed_tokens.weight")?;
        let mut x = emb.index_select(&input_ids.flatten_all()?, 0)?.reshape((b, t, cfg.hidden_size))?;
        let (cos, sin) = self.rope_tables(start, t)?;
        if let Some(c) = cache.as_deref_mut() {
            c.layers.resize(cfg.num_hidden_layers, None);
        }
        let scale = 1.0 / (hd as f64).sqrt();
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let h = self.rms_norm(&x, &format!("{p}.input_layernorm.weight"))?;
            let q = self.linear(&h, &format!("{p}.self_attn.q_proj"), true, dropout)?;
            let k = self.linear(&h, &format!("{p}.self_attn.k_proj"), true, dropout)?;
            let v = self.linear(&h, &format!("{p}.self_attn.v_proj"), true, dropout)?;
            let fast = kernels::fast_path(&q);
            let (q, mut k) = if fast {
                // Rotated and moved to [b, heads, t, hd] in one op each.
                (kernels::rope(&q.reshape((b, t, nh, hd))?, &cos, &sin)?, kernels::rope(&k.reshape((b, t, nkv, hd))?, &cos, &sin)?)
            } else {
                (rope(&q.reshape((b, t, nh, hd))?.transpose(1, 2)?, &cos, &sin)?, rope(&k.reshape((b, t, nkv, hd))?.transpose(1, 2)?, &cos, &sin)?)
            };
            let mut v = v.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
            if let Some(c) = cache.as_deref_mut() {
                // The cache is for sampling: no autograd graph is kept
                // across decode steps.
                if let Some((pk, pv)) = &c.layers[l] {
                    k = Tensor::cat(&[pk, &k.detach()], 2)?;
                    v = Tensor::cat(&[pv, &v.detach()], 2)?;
                }
                c.layers[l] = Some((k.detach(), v.detach()));
            }
            // Grouped-query attention without copying K/V per query head:
            // the n_rep query heads of one KV head are stacked along the rows
            // (query head h reads KV head h / n_rep, as HF's repeat_kv).
            let (n_rep, s) = (nh / nkv, k.dim(2)?);
            let qg = q.contiguous()?.reshape((b, nkv, n_rep * t, hd))?;
            let raw = qg.matmul(&k.t()?)?.reshape((b, nh, t, s))?;
            let probs = if fast && kernels::fast_path(bias) {
                kernels::masked_softmax(&raw, scale, bias)?
            } else {
                let scores = (raw * scale)?.to_dtype(self.acc())?.broadcast_add(&bias.to_dtype(self.acc())?)?;
                softmax_last(&scores)?.to_dtype(self.compute)?
            };
            let probs = probs.reshape((b, nkv, n_rep * t, s))?;
            let attn = probs.matmul(&v)?.reshape((b, nh, t, hd))?.transpose(1, 2)?.reshape((b, t, nh * hd))?;
            let o = self.linear(&attn, &format!("{p}.self_attn.o_proj"), false, dropout)?;
            x = (x + o)?;
            let h = self.rms_norm(&x, &format!("{p}.post_attention_layernorm.weight"))?;
            let gate = self.linear(&h, &format!("{p}.mlp.gate_proj"), false, dropout)?;
            let up = self.linear(&h, &format!("{p}.mlp.up_proj"), false, dropout)?;
            let act = if kernels::fast_path(&gate) { kernels::swiglu(&gate, &up)? } else { (gate.silu()? * up)? };
            let m = self.linear(&act, &format!("{p}.mlp.down_proj"), false, dropout)?;
            x = (x + m)?;
        }
        self.rms_norm(&x, "model.norm.weight")
    }

    fn head_weight(&self) -> Result<Tensor> {
        self.w(if self.config.tie_word_embeddings { "model.embed_tokens.weight" } else { "lm_head.weight" })
    }

    fn lm_head(&self, h: &Tensor) -> Result<Tensor> {
        let w = self.head_weight()?;
        let (b, t, d) = h.dims3()?;
        Ok(h.reshape((b * t, d))?.matmul(&w.t()?)?.reshape((b, t, ()))?.to_dtype(self.acc())?)
    }

    /// Logits `[batch, len, vocab]` (fp32; f64 when computing in f64) for every position. `attention`
    /// is `[batch, len]`, 1 for real tokens and 0 for padding; pad on the
    /// right (positions are 0..len).
    pub fn forward(&self, input_ids: &Tensor, attention: &Tensor, dropout: DropoutRng) -> Result<Tensor> {
        let h = self.hidden(input_ids, attention, dropout)?;
        self.lm_head(&h)
    }

    /// Final hidden states `[batch, len, hidden]` (before the LM head), with
    /// `attention` as in [`Qwen2::forward`].
    pub fn hidden(&self, input_ids: &Tensor, attention: &Tensor, mut dropout: DropoutRng) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let bias = causal_padding_bias(attention, b, t, &self.device)?;
        self.decoder(input_ids, 0, &bias, None, &mut dropout)
    }

    /// `ln p(targets[r])` for hidden rows `h` `[rows, hidden]` (rows of
    /// [`Qwen2::hidden`] that carry loss), where p is the sampler's
    /// distribution: softmax of logits / `temperature`, then the top-p
    /// nucleus renormalised (a target outside it joins it). On CPU in f32 this
    /// is one fused op that never materialises the logits as a graph tensor;
    /// elsewhere the same from primitives.
    pub fn row_logprobs(&self, h: &Tensor, targets: &[u32], temperature: f64, top_p: f64) -> Result<Tensor> {
        ensure!(temperature > 0.0, "log-probs need a positive temperature (got {temperature})");
        ensure!(h.dim(0)? == targets.len(), "{} hidden rows for {} targets", h.dim(0)?, targets.len());
        let w = self.head_weight()?;
        if kernels::fast_path(h) && kernels::fast_path(&w) {
            return Ok(kernels::token_logprobs(h, &w, targets, temperature, top_p, self.lora.is_none())?);
        }
        let mut z = (h.matmul(&w.t()?)?.to_dtype(self.acc())? / temperature)?;
        if top_p < 1.0 {
            // The nucleus is a constant of the sampler: mask what it drops.
            let mut rows: Vec<Vec<f32>> = z.to_dtype(DType::F32)?.to_vec2()?;
            let mask: Vec<f32> = rows
                .iter_mut()
                .zip(targets)
                .flat_map(|(r, &t)| {
                    kernels::row_distribution(r, t as usize, top_p as f32);
                    r.iter().map(|&p| if p > 0.0 { 0.0 } else { MASKED }).collect::<Vec<_>>()
                })
                .collect();
            z = z.broadcast_add(&Tensor::from_vec(mask, z.shape(), &self.device)?.to_dtype(z.dtype())?)?;
        }
        let tg = Tensor::new(targets, &self.device)?;
        Ok(log_softmax_last(&z)?.gather(&tg.unsqueeze(1)?, 1)?.squeeze(1)?)
    }

    /// The KV-cached path for sampling: feed `tokens` (one sequence) after
    /// what `cache` holds; returns the logits `[vocab]` of the last one.
    pub fn forward_cached(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        ensure!(!tokens.is_empty(), "forward_cached needs at least one token");
        let start = cache.len();
        let t = tokens.len();
        ensure!(
            start + t <= self.config.max_position_embeddings,
            "sequence of {} tokens exceeds the model's context of {}",
            start + t,
            self.config.max_position_embeddings
        );
        let ids = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let mut bias = vec![0f32; t * (start + t)];
        for i in 0..t {
            for j in start + i + 1..start + t {
                bias[i * (start + t) + j] = MASKED;
            }
        }
        let bias = Tensor::from_vec(bias, (1, 1, t, start + t), &self.device)?;
        let h = self.decoder(&ids, start, &bias, Some(cache), &mut None)?;
        let last = h.narrow(1, t - 1, 1)?;
        Ok(self.lm_head(&last)?.flatten_all()?.detach())
    }
}

/// A large negative for masked attention scores: finite, so a fully masked
/// row cannot turn into NaN.
const MASKED: f32 = -1e9;

fn causal_padding_bias(attention: &Tensor, b: usize, t: usize, device: &Device) -> Result<Tensor> {
    let att: Vec<Vec<f32>> = attention.to_dtype(DType::F32)?.to_vec2()?;
    ensure!(att.len() == b && att.iter().all(|r| r.len() == t), "attention mask shape must match input ids [{b}, {t}]");
    let mut bias = vec![0f32; b * t * t];
    for (bi, row) in att.iter().enumerate() {
        for i in 0..t {
            for j in 0..t {
                if j > i || row[j] < 0.5 {
                    bias[(bi * t + i) * t + j] = MASKED;
                }
            }
        }
    }
    Ok(Tensor::from_vec(bias, (b, 1, t, t), device)?)
}

/// Softmax over the last dimension from differentiable primitives (candle's
/// fused `softmax_last_dim` has no backward).
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// Log-softmax over the last dimension (fp32, differentiable).
pub fn log_softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let d = x.broadcast_sub(&max)?;
    let lse = d.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(d.broadcast_sub(&lse)?)
}

/// Log-probability of each `targets[b, t]` under `logits[b, t, vocab]`.
pub fn token_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let lp = log_softmax_last(logits)?;
    Ok(lp.gather(&targets.unsqueeze(D::Minus1)?.contiguous()?, D::Minus1)?.squeeze(D::Minus1)?)
}

fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let hd = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
    let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

/// Inverted dropout's keep-mask for `x`: 0 with probability `p`, else
/// 1/(1−p); drawn from the trainer's seeded RNG.
fn dropout_mask(x: &Tensor, p: f64, rng: &mut ChaCha8Rng) -> Result<Tensor> {
    let n = x.elem_count();
    let keep = (1.0 / (1.0 - p)) as f32;
    let mask: Vec<f32> = (0..n).map(|_| if rng.random::<f64>() < p { 0.0 } else { keep }).collect();
    Ok(Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?)
}

fn uniform(rng: &mut ChaCha8Rng, shape: &[usize], bound: f64, device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| ((rng.random::<f64>() * 2.0 - 1.0) * bound) as f32).collect();
    Ok(Tensor::from_vec(v, shape, device)?)
}

fn normal(rng: &mut ChaCha8Rng, shape: &[usize], std: f64, device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    // Box–Muller from the seeded stream.
    let v: Vec<f32> = (0..n)
        .map(|_| {
            let u1 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            let u2 = rng.random::<f64>();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * std) as f32
        })
        .collect();
    Ok(Tensor::from_vec(v, shape, device)?)
}
