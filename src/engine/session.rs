//! Solve options, prompt and context sizing, and the single-sequence tools
//! that measure or check the engine (a bare decode loop, reference logits,
//! prefill timing). Solving itself runs in [`super::batch`]: the KV cache is
//! kept across injections (an extension or a forced delimiter is decoded on
//! top of what is there; held-back tokens are removed from the end of the
//! cache, never re-processed).

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use serde::{Deserialize, Serialize};

use super::abort::AbortGate;
use super::{backend, Engine, SamplingConfig};
use crate::budget::{BudgetConfig, TokenId};
use crate::error::{ReckonError, Result};
use crate::format::{render_prompt, DEFAULT_SYSTEM_PROMPT};

/// Tokens decoded per llama.cpp call during prefill.
pub(super) const BATCH: usize = 512;
/// Context slack beyond what the budgets need (re-opened think blocks).
const SLACK: u32 = 64;

/// Everything one solve may vary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SolveOptions {
    /// Thinking and answer budgets.
    pub budget: BudgetConfig,
    /// Sampling.
    pub sampling: SamplingConfig,
    /// CPU threads (`None`: the performance cores, see
    /// [`default_threads`](super::default_threads); all cores where they are alike).
    pub threads: Option<u32>,
    /// System prompt; `None` for none. Defaults to asking for step-by-step
    /// reasoning and a boxed answer.
    pub system_prompt: Option<String>,
}

impl Default for SolveOptions {
    fn default() -> Self {
        Self {
            budget: BudgetConfig::default(),
            sampling: SamplingConfig::default(),
            threads: None,
            system_prompt: Some(DEFAULT_SYSTEM_PROMPT.to_string()),
        }
    }
}

impl SolveOptions {
    pub(super) fn threads(&self) -> Result<i32> {
        match self.threads {
            None => Ok(super::threads::default_threads() as i32),
            Some(t @ 1..=512) => Ok(t as i32),
            Some(t) => Err(ReckonError::InvalidOption(format!("threads {t} must be in 1..=512"))),
        }
    }
}

/// Figures of a bare decode loop: llama-cpp-2 with no controller.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BareDecode {
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Prompt processing time.
    pub prefill_ms: f64,
    /// Tokens generated.
    pub tokens: u32,
    /// Generation time.
    pub decode_ms: f64,
    /// Tokens per second of generation.
    pub decode_tok_s: f64,
    /// The greedy continuation.
    #[serde(skip)]
    pub generated: Vec<TokenId>,
}

/// A context plus its position and the index of its last logits.
struct Seq<'a> {
    ctx: LlamaContext<'a>,
    batch: LlamaBatch<'a>,
    pos: u32,
    n_ctx: u32,
    last_logits: i32,
}

impl<'a> Seq<'a> {
    fn new(engine: &'a Engine, n_ctx: u32, threads: i32) -> Result<Self> {
        Self::with_cache(engine, n_ctx, threads, false)
    }

    /// `f32_cache`: keep keys and values in F32 (default F16) and compute
    /// attention without flash attention (whose CPU kernel rounds Q·K
    /// through F16), for exact comparisons with a reference implementation.
    fn with_cache(engine: &'a Engine, n_ctx: u32, threads: i32, f32_cache: bool) -> Result<Self> {
        let mut params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(BATCH as u32)
            .with_n_ubatch(BATCH as u32)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        if f32_cache {
            params = params
                .with_type_k(KvCacheType::F32)
                .with_type_v(KvCacheType::F32)
                .with_flash_attention_policy(llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED);
        }
        let ctx = engine.new_context(params)?;
        Ok(Self { ctx, batch: LlamaBatch::new(BATCH, 1), pos: 0, n_ctx, last_logits: 0 })
    }

    /// Append tokens to the sequence; logits for the last one.
    fn feed(&mut self, tokens: &[TokenId]) -> Result<()> {
        if self.pos as usize + tokens.len() > self.n_ctx as usize {
            return Err(ReckonError::Decode(format!(
                "context full: {} + {} tokens > {}",
                self.pos,
                tokens.len(),
                self.n_ctx
            )));
        }
        for (ci, chunk) in tokens.chunks(BATCH).enumerate() {
            let last_chunk = (ci + 1) * BATCH >= tokens.len();
            self.batch.clear();
            for (i, &t) in chunk.iter().enumerate() {
                let logits = last_chunk && i + 1 == chunk.len();
                self.batch
                    .add(LlamaToken(t), self.pos as i32, &[0], logits)
                    .map_err(|e| ReckonError::Decode(e.to_string()))?;
                self.pos += 1;
            }
            self.ctx.decode(&mut self.batch).map_err(|e| ReckonError::Decode(e.to_string()))?;
            self.last_logits = chunk.len() as i32 - 1;
        }
        Ok(())
    }

    fn sample(&self, sampler: &mut LlamaSampler) -> TokenId {
        sampler.sample(&self.ctx, self.last_logits).0
    }
}

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub(super) fn per_second(n: u32, ms: f64) -> f64 {
    if ms > 0.0 {
        n as f64 / (ms / 1e3)
    } else {
        0.0
    }
}

/// Context parameters for `slots` sequences: by default one KV stream per
/// sequence (its own cells, attention computed as for a single sequence);
/// with `unified`, every sequence's cells in one stream, so a step's tokens
/// are one ubatch whatever slots are live and a prompt copied to G sequences
/// is stored once (`seq_cp` shares cells). With `abort`, llama.cpp asks that
/// gate between graph nodes whether to stop the decode in flight (see
/// [`AbortGate`]); the gate must outlive the context. Without `flash`,
/// attention is computed without llama.cpp's flash-attention kernel.
///
/// llama-cpp-2 exposes no setter for `kv_unified` or the abort callback, so
/// they are set on the wrapped `llama_context_params` directly, after
/// checking that the wrapper is exactly that struct (same size, known fields
/// read back through the pointer); if not, the cache stays split per
/// sequence and cancels wait for the decode in flight, which is correct too.
pub(super) fn batch_params(n_ctx: u32, slots: u32, threads: i32, unified: bool, flash: bool, abort: Option<&AbortGate>) -> LlamaContextParams {
    let mut params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(BATCH as u32)
        .with_n_ubatch(BATCH as u32)
        .with_n_seq_max(slots)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    if !flash {
        params = params.with_flash_attention_policy(llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED);
    }
    let unified = unified && slots > 1;
    if (unified || abort.is_some()) && std::mem::size_of::<LlamaContextParams>() == std::mem::size_of::<llama_cpp_sys_2::llama_context_params>() {
        let raw = (&mut params as *mut LlamaContextParams).cast::<llama_cpp_sys_2::llama_context_params>();
        // SAFETY: the wrapper's only field is a `llama_context_params` (same
        // size, checked above); the read-back below confirms it sits at
        // offset 0 before anything is written. The abort data pointer is
        // the gate's, which the caller keeps alive beside the context.
        unsafe {
            if (*raw).n_seq_max == params.n_seq_max() && (*raw).n_ctx == params.n_ctx().map_or(0, NonZeroU32::get) {
                if unified {
                    (*raw).kv_unified = true;
                }
                if let Some(gate) = abort {
                    let (cb, data) = gate.callback();
                    (*raw).abort_callback = Some(cb);
                    (*raw).abort_callback_data = data;
                }
            } else {
                log::warn!("llama-cpp-2's context params are laid out unexpectedly: one KV stream per sequence, no abort inside a decode");
            }
        }
    }
    params
}

impl Engine {
    /// A llama.cpp context on this model, with the adapter set. Creation is
    /// serialized: llama.cpp mutates the model while creating one.
    pub(super) fn new_context(&self, params: LlamaContextParams) -> Result<LlamaContext<'_>> {
        let _guard = self.context_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut ctx = self.model.new_context(backend()?, params).map_err(|e| ReckonError::Context(e.to_string()))?;
        if let Some(adapter) = &self.adapter {
            let mut adapter = adapter.lock().unwrap_or_else(|p| p.into_inner());
            ctx.lora_adapter_set(&mut adapter, self.options.adapter_scale)
                .map_err(|e| ReckonError::Context(format!("setting the LoRA adapter: {e}")))?;
        }
        Ok(ctx)
    }

    /// The prompt's tokens for a question, as a solve would decode them.
    pub fn prompt_tokens(&self, question: &str, options: &SolveOptions) -> Result<Vec<TokenId>> {
        if question.trim().is_empty() {
            return Err(ReckonError::EmptyQuestion);
        }
        let system = options.system_prompt.as_deref().filter(|s| !s.is_empty());
        let pieces = render_prompt(self.template.as_deref(), self.format, system, question, None, None);
        self.vocab.tokenize_prompt(&self.model, &pieces)
    }

    pub(super) fn context_size(&self, prompt: usize, budget: &BudgetConfig) -> Result<u32> {
        let d = &self.delims;
        let budget_tokens = u64::from(budget.max_thinking_tokens)
            + (d.close.len() + d.answer_prefix.len()) as u64
            + u64::from(budget.max_answer_tokens)
            + 1;
        let limit = self.context_limit();
        let needed = prompt as u64 + budget_tokens;
        if needed > u64::from(limit) {
            return Err(ReckonError::PromptTooLong {
                prompt_tokens: prompt.min(u32::MAX as usize) as u32,
                budget_tokens: budget_tokens.min(u64::from(u32::MAX)) as u32,
                context_limit: limit,
            });
        }
        let padded = (needed + u64::from(SLACK)).div_ceil(256) * 256;
        Ok(padded.min(u64::from(limit)) as u32)
    }

    /// A bare llama-cpp-2 greedy decode loop with no controller, for
    /// measuring the controller's overhead: prefill `prompt`, then decode
    /// exactly `n_predict` tokens (end-of-turn tokens included).
    pub fn bare_decode(&self, prompt: &[TokenId], n_predict: u32, threads: Option<u32>) -> Result<BareDecode> {
        self.bare_decode_with(prompt, n_predict, threads, false)
    }

    /// A bare batched greedy decode loop with no controllers, the shape of
    /// `llama-batched-bench` with a shared prompt: `prompt` decoded once in
    /// sequence 0 and copied to `n_seq` sequences, then `n_predict` tokens
    /// for each, one `llama_decode` per step for all of them. `tokens` and
    /// `decode_tok_s` are aggregates over the sequences.
    pub fn bare_batched_decode(&self, prompt: &[TokenId], n_seq: u32, n_predict: u32, threads: Option<u32>) -> Result<BareDecode> {
        let threads = SolveOptions { threads, ..SolveOptions::default() }.threads()?;
        let slot = (prompt.len() as u64 + u64::from(n_predict) + 1).div_ceil(256) * 256;
        let total = slot * u64::from(n_seq.max(1));
        if n_seq == 0 || n_seq > super::batch::MAX_SLOTS || total > u64::from(self.context_limit()) {
            return Err(ReckonError::BatchTooLarge {
                slots: n_seq,
                slot_context: slot.min(u64::from(u32::MAX)) as u32,
                context_limit: self.context_limit(),
                fits: (u64::from(self.context_limit()) / slot) as u32,
            });
        }
        let mut ctx = self.new_context(batch_params(total as u32, n_seq, threads, self.options.unified_kv, self.options.flash_attention, None))?;
        let mut batch = LlamaBatch::new(BATCH, 1);
        let err = |e: &dyn std::fmt::Display| ReckonError::Decode(e.to_string());
        let t = Instant::now();
        for (ci, chunk) in prompt.chunks(BATCH).enumerate() {
            batch.clear();
            for (k, &tok) in chunk.iter().enumerate() {
                let last = ci * BATCH + k + 1 == prompt.len();
                batch.add(LlamaToken(tok), (ci * BATCH + k) as i32, &[0], last).map_err(|e| err(&e))?;
            }
            ctx.decode(&mut batch).map_err(|e| err(&e))?;
        }
        for s in 1..n_seq as i32 {
            ctx.copy_kv_cache_seq(0, s, None, None).map_err(|e| err(&e))?;
        }
        let prefill_ms = ms(t.elapsed());
        let mut sampler = LlamaSampler::greedy();
        let mut idx = vec![batch.n_tokens() - 1; n_seq as usize];
        let mut generated = Vec::with_capacity(n_predict as usize);
        let t = Instant::now();
        for step in 0..n_predict {
            let tokens: Vec<LlamaToken> = idx.iter().map(|&i| sampler.sample(&ctx, i)).collect();
            generated.push(tokens[0].0);
            batch.clear();
            for (s, &tok) in tokens.iter().enumerate() {
                batch.add(tok, (prompt.len() as u32 + step) as i32, &[s as i32], true).map_err(|e| err(&e))?;
                idx[s] = s as i32;
            }
            ctx.decode(&mut batch).map_err(|e| err(&e))?;
        }
        let decode_ms = ms(t.elapsed());
        let tokens = n_predict * n_seq;
        Ok(BareDecode { prompt_tokens: prompt.len() as u32, prefill_ms, tokens, decode_ms, decode_tok_s: per_second(tokens, decode_ms), generated })
    }

    /// The greedy continuation of `prompt` with keys and values cached in
    /// F32: the reference a trainer's own greedy decoding must reproduce.
    pub fn reference_greedy(&self, prompt: &[TokenId], n_predict: u32, threads: Option<u32>) -> Result<Vec<TokenId>> {
        Ok(self.bare_decode_with(prompt, n_predict, threads, true)?.generated)
    }

    fn bare_decode_with(&self, prompt: &[TokenId], n_predict: u32, threads: Option<u32>, f32_cache: bool) -> Result<BareDecode> {
        let opts = SolveOptions { threads, ..SolveOptions::default() };
        let n_ctx = (prompt.len() as u64 + u64::from(n_predict) + 1).div_ceil(256) * 256;
        if n_ctx > u64::from(self.context_limit()) {
            return Err(ReckonError::PromptTooLong {
                prompt_tokens: prompt.len() as u32,
                budget_tokens: n_predict,
                context_limit: self.context_limit(),
            });
        }
        let mut seq = Seq::with_cache(self, n_ctx as u32, opts.threads()?, f32_cache)?;
        let mut sampler = LlamaSampler::greedy();
        let t = Instant::now();
        seq.feed(prompt)?;
        let prefill_ms = ms(t.elapsed());
        let t = Instant::now();
        let mut generated = Vec::with_capacity(n_predict as usize);
        for _ in 0..n_predict {
            let token = seq.sample(&mut sampler);
            generated.push(token);
            seq.feed(&[token])?;
        }
        let decode_ms = ms(t.elapsed());
        Ok(BareDecode {
            prompt_tokens: prompt.len() as u32,
            prefill_ms,
            tokens: n_predict,
            decode_ms,
            decode_tok_s: per_second(n_predict, decode_ms),
            generated,
        })
    }

    /// The model's logits at every position of `tokens` (one row of
    /// `n_vocab` per token), in a fresh context: what a trainer compares its
    /// own forward against. Keys and values are cached in F32 and flash
    /// attention is off here (F16 and auto in `solve`), so an F32 model's
    /// logits are full precision.
    pub fn logits(&self, tokens: &[TokenId], threads: Option<u32>) -> Result<Vec<Vec<f32>>> {
        let mut forced = self.teacher_forced(tokens.to_vec(), threads)?;
        let mut rows = Vec::with_capacity(tokens.len());
        loop {
            let span = forced.advance()?;
            if span.is_empty() {
                return Ok(rows);
            }
            rows.extend(span.map(|p| forced.logits(p).to_vec()));
        }
    }

    /// Teacher forcing over `tokens` in a fresh context (F32 cache, flash
    /// attention off, as [`Engine::logits`]), a chunk at a time, so that
    /// sequences of any length fit and two models can be stepped side by
    /// side: see [`TeacherForced`].
    pub fn teacher_forced(&self, tokens: Vec<TokenId>, threads: Option<u32>) -> Result<TeacherForced<'_>> {
        let opts = SolveOptions { threads, ..SolveOptions::default() };
        if tokens.is_empty() || tokens.len() as u64 >= u64::from(self.context_limit()) {
            return Err(ReckonError::PromptTooLong { prompt_tokens: tokens.len().min(u32::MAX as usize) as u32, budget_tokens: 0, context_limit: self.context_limit() });
        }
        let n_ctx = (tokens.len() as u64 + 1).div_ceil(256) * 256;
        let seq = Seq::with_cache(self, n_ctx.min(u64::from(self.context_limit())) as u32, opts.threads()?, true)?;
        Ok(TeacherForced { seq, tokens, next: 0, chunk: 0 })
    }

    /// Time a prefill of `tokens` in a fresh context (what a stateless
    /// server pays to continue after an injection).
    pub fn prefill_ms(&self, tokens: &[TokenId], threads: Option<u32>) -> Result<f64> {
        let opts = SolveOptions { threads, ..SolveOptions::default() };
        let n_ctx = (tokens.len() as u64 + 1).div_ceil(256) * 256;
        let mut seq = Seq::new(self, n_ctx.min(u64::from(self.context_limit())) as u32, opts.threads()?)?;
        let t = Instant::now();
        seq.feed(tokens)?;
        Ok(ms(t.elapsed()))
    }
}

/// A sequence decoded chunk by chunk with logits at every position (see
/// [`Engine::teacher_forced`]).
pub struct TeacherForced<'a> {
    seq: Seq<'a>,
    tokens: Vec<TokenId>,
    next: usize,
    chunk: usize,
}

impl TeacherForced<'_> {
    /// Decode the next chunk (up to 512 tokens); returns the positions it
    /// covers, empty once the sequence is done. [`Self::logits`] reads them.
    pub fn advance(&mut self) -> Result<std::ops::Range<usize>> {
        let start = self.next;
        let end = (start + BATCH).min(self.tokens.len());
        if start == end {
            return Ok(start..end);
        }
        self.seq.batch.clear();
        for (i, &t) in self.tokens[start..end].iter().enumerate() {
            self.seq.batch.add(LlamaToken(t), (start + i) as i32, &[0], true).map_err(|e| ReckonError::Decode(e.to_string()))?;
        }
        self.seq.ctx.decode(&mut self.seq.batch).map_err(|e| ReckonError::Decode(e.to_string()))?;
        self.seq.pos = end as u32;
        self.next = end;
        self.chunk = start;
        Ok(start..end)
    }

    /// The logits after position `pos` of the chunk last decoded (the
    /// distribution of token `pos + 1`).
    pub fn logits(&self, pos: usize) -> &[f32] {
        assert!((self.chunk..self.next).contains(&pos), "position {pos} is not in the chunk last decoded ({}..{})", self.chunk, self.next);
        self.seq.ctx.get_logits_ith((pos - self.chunk) as i32)
    }
}
