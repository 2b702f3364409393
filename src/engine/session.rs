//! One solve: prompt, prefill, then the controller's steps executed against
//! llama.cpp. The KV cache is kept across injections: an extension or a
//! forced delimiter is decoded on top of what is there, and held-back tokens
//! are removed from the end of the cache, never re-processed.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use serde::{Deserialize, Serialize};

use super::{backend, Engine, SamplingConfig};
use crate::answer::extract_answer;
use crate::budget::{BudgetConfig, Controller, Emit, Finish, Segment, Step, ThinkEnd, TokenId};
use crate::error::{ReckonError, Result};
use crate::events::{CancelHandle, Event, FinishReason, Listener, SolveResult, Timings};
use crate::format::{render_prompt, DEFAULT_SYSTEM_PROMPT};

/// Tokens decoded per llama.cpp call during prefill.
const BATCH: usize = 512;
/// Context slack beyond what the budgets need (re-opened think blocks).
const SLACK: u32 = 64;

/// Everything one solve may vary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SolveOptions {
    /// Thinking and answer budgets.
    pub budget: BudgetConfig,
    /// Sampling.
    pub sampling: SamplingConfig,
    /// CPU threads (`None`: all cores).
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
    fn threads(&self) -> Result<i32> {
        match self.threads {
            None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get()) as i32),
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
    decoded: u32,
    rolled_back: u32,
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
        let ctx = {
            // llama.cpp mutates the model while creating a context.
            let _guard = engine.context_lock.lock().unwrap_or_else(|p| p.into_inner());
            let mut ctx = engine.model.new_context(backend()?, params).map_err(|e| ReckonError::Context(e.to_string()))?;
            if let Some(adapter) = &engine.adapter {
                let mut adapter = adapter.lock().unwrap_or_else(|p| p.into_inner());
                ctx.lora_adapter_set(&mut adapter, engine.options.adapter_scale)
                    .map_err(|e| ReckonError::Context(format!("setting the LoRA adapter: {e}")))?;
            }
            ctx
        };
        Ok(Self { ctx, batch: LlamaBatch::new(BATCH, 1), pos: 0, n_ctx, last_logits: 0, decoded: 0, rolled_back: 0 })
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
            self.decoded += chunk.len() as u32;
        }
        Ok(())
    }

    /// Remove the last `n` tokens from the sequence (and the KV cache).
    fn rollback(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let from = self.pos.checked_sub(n as u32).ok_or_else(|| ReckonError::Internal("rollback past start".into()))?;
        self.ctx
            .clear_kv_cache_seq(Some(0), Some(from), None)
            .map_err(|e| ReckonError::Decode(e.to_string()))?;
        self.pos = from;
        self.rolled_back += n as u32;
        Ok(())
    }

    fn sample(&self, sampler: &mut LlamaSampler) -> TokenId {
        sampler.sample(&self.ctx, self.last_logits).0
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn per_second(n: u32, ms: f64) -> f64 {
    if ms > 0.0 {
        n as f64 / (ms / 1e3)
    } else {
        0.0
    }
}

impl Engine {
    /// The prompt's tokens for a question, as a solve would decode them.
    pub fn prompt_tokens(&self, question: &str, options: &SolveOptions) -> Result<Vec<TokenId>> {
        if question.trim().is_empty() {
            return Err(ReckonError::EmptyQuestion);
        }
        let system = options.system_prompt.as_deref().filter(|s| !s.is_empty());
        let pieces = render_prompt(self.template.as_deref(), self.format, system, question, None, None);
        Ok(self.vocab.tokenize_prompt(&self.model, &pieces))
    }

    fn context_size(&self, prompt: usize, budget: &BudgetConfig) -> Result<u32> {
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

    /// Answer a question with budget forcing, streaming events to the
    /// listener. Blocks the calling thread; `cancel` stops it from another.
    pub fn solve(
        &self,
        question: &str,
        options: &SolveOptions,
        listener: &mut dyn Listener,
        cancel: Option<&CancelHandle>,
    ) -> Result<SolveResult> {
        let t0 = Instant::now();
        options.budget.validate()?;
        options.sampling.validate()?;
        let threads = options.threads()?;
        let prompt = self.prompt_tokens(question, options)?;
        let n_ctx = self.context_size(prompt.len(), &options.budget)?;

        let t_ctx = Instant::now();
        let mut seq = Seq::new(self, n_ctx, threads)?;
        let context_ms = ms(t_ctx.elapsed());
        let mut sampler = options.sampling.build(self.vocab.len() as i32);

        let t_prefill = Instant::now();
        seq.feed(&prompt)?;
        let prefill_ms = ms(t_prefill.elapsed());

        let mut run = Run::default();
        let mut ctl = Controller::new(options.budget.clone(), self.delims.clone());
        let t_decode = Instant::now();
        let mut ttft_ms = None;
        let mut sampled = 0u32;
        let first = ctl.start(Duration::ZERO);
        let mut finish = self.apply(first, &mut seq, &mut sampler, &mut run, listener)?;
        while finish.is_none() {
            if cancel.is_some_and(CancelHandle::is_cancelled) {
                finish = Some(FinishReason::Cancelled);
                break;
            }
            let step = ctl.check_time(t_decode.elapsed());
            if step != Step::default() {
                finish = self.apply(step, &mut seq, &mut sampler, &mut run, listener)?;
                if finish.is_some() {
                    break;
                }
            }
            let token = seq.sample(&mut sampler);
            sampled += 1;
            ttft_ms.get_or_insert_with(|| ms(t0.elapsed()));
            let step = ctl.accept(token, t_decode.elapsed(), &self.vocab);
            finish = self.apply(step, &mut seq, &mut sampler, &mut run, listener)?;
        }
        let finish = finish.unwrap_or(FinishReason::EndOfTurn);
        let decode_ms = ms(t_decode.elapsed());
        listener.on_event(&Event::Done { finish });

        let counts = ctl.counts();
        let extracted = extract_answer(&run.answer, &run.thinking);
        let think_end = ctl.think_end();
        Ok(SolveResult {
            format: self.format,
            extracted_answer: extracted.as_ref().map(|e| e.value.clone()),
            answer_source: extracted.map(|e| e.source),
            thinking: run.thinking,
            answer: run.answer,
            prompt_tokens: prompt.len() as u32,
            thinking_tokens: counts.thinking_generated,
            injected_tokens: counts.thinking_injected,
            delimiter_tokens: counts.other_injected,
            answer_tokens: counts.answer_generated,
            extensions: counts.extensions,
            sampled_tokens: sampled,
            decoded_tokens: seq.decoded,
            rolled_back_tokens: seq.rolled_back,
            forced_end: matches!(think_end, Some(ThinkEnd::TokenCap | ThinkEnd::TimeBudget)),
            think_end,
            finish,
            timings: Timings {
                load_ms: self.load_ms,
                context_ms,
                prefill_ms,
                prefill_tok_s: per_second(prompt.len() as u32, prefill_ms),
                ttft_ms: ttft_ms.unwrap_or(0.0),
                decode_ms,
                decode_tok_s: per_second(sampled, decode_ms),
                injected_decode_ms: run.injected_decode_ms,
                total_ms: ms(t0.elapsed()),
            },
        })
    }

    /// Execute one controller step: stream its text, roll back, feed.
    fn apply(
        &self,
        step: Step,
        seq: &mut Seq<'_>,
        sampler: &mut LlamaSampler,
        run: &mut Run,
        listener: &mut dyn Listener,
    ) -> Result<Option<FinishReason>> {
        let mut keep_going = true;
        for emit in step.emits {
            let event = match emit {
                Emit::Text { segment: Segment::Thinking, text } => {
                    run.thinking.push_str(&text);
                    Event::Thinking { text }
                }
                Emit::Text { segment: Segment::Answer, text } => {
                    run.answer.push_str(&text);
                    Event::Answer { text }
                }
                Emit::Injected { segment, text, reason } => {
                    match segment {
                        Segment::Thinking => run.thinking.push_str(&text),
                        Segment::Answer => run.answer.push_str(&text),
                    }
                    Event::Injected { segment, text, reason }
                }
            };
            keep_going &= listener.on_event(&event);
        }
        if let Some(done) = step.done {
            return Ok(Some(match done {
                Finish::EndOfTurn => FinishReason::EndOfTurn,
                Finish::AnswerCap => FinishReason::AnswerCap,
            }));
        }
        seq.rollback(step.rollback)?;
        if seq.pos as usize + step.feed.len() > seq.n_ctx as usize {
            log::warn!("context full at {} tokens: ending the answer", seq.pos);
            return Ok(Some(FinishReason::AnswerCap));
        }
        let injected = &step.feed[step.sampled_fed..];
        let t = Instant::now();
        seq.feed(&step.feed)?;
        if !injected.is_empty() {
            let share = injected.len() as f64 / step.feed.len() as f64;
            run.injected_decode_ms += ms(t.elapsed()) * share;
            // Penalty samplers should see what is in the context.
            for &tok in injected {
                sampler.accept(LlamaToken(tok));
            }
        }
        Ok(if keep_going { None } else { Some(FinishReason::Stopped) })
    }

    /// A bare llama-cpp-2 greedy decode loop with no controller, for
    /// measuring the controller's overhead: prefill `prompt`, then decode
    /// exactly `n_predict` tokens (end-of-turn tokens included).
    pub fn bare_decode(&self, prompt: &[TokenId], n_predict: u32, threads: Option<u32>) -> Result<BareDecode> {
        self.bare_decode_with(prompt, n_predict, threads, false)
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
        let opts = SolveOptions { threads, ..SolveOptions::default() };
        if tokens.is_empty() || tokens.len() > BATCH || tokens.len() as u32 > self.context_limit() {
            return Err(ReckonError::Internal(format!("logits: give 1 to {BATCH} tokens (got {})", tokens.len())));
        }
        let n_ctx = (tokens.len() as u64 + 1).div_ceil(256) * 256;
        let mut seq = Seq::with_cache(self, n_ctx as u32, opts.threads()?, true)?;
        seq.batch.clear();
        for (i, &t) in tokens.iter().enumerate() {
            seq.batch.add(LlamaToken(t), i as i32, &[0], true).map_err(|e| ReckonError::Decode(e.to_string()))?;
        }
        seq.ctx.decode(&mut seq.batch).map_err(|e| ReckonError::Decode(e.to_string()))?;
        Ok((0..tokens.len() as i32).map(|i| seq.ctx.get_logits_ith(i).to_vec()).collect())
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

#[derive(Default)]
struct Run {
    thinking: String,
    answer: String,
    injected_decode_ms: f64,
}
