//! Many budget-forced sequences in one llama.cpp context: the engine's one
//! decode loop. A single solve is a batch of one; eval, self-consistency,
//! RL rollouts and the server use more slots.
//!
//! Each slot is one llama.cpp sequence (`seq_id` = slot index, its own KV
//! stream of `slot_context` cells, or a share of one unified cache with
//! `EngineOptions::unified_kv`) with its own [`Controller`], sampler
//! (seed), listener and cancel handle. A [`Batch::step`] samples every slot
//! whose logits are ready, executes each controller's step for that slot
//! only (a rollback removes that sequence's cells; "Wait" and forced
//! delimiters are queued for it), then decodes everything queued (new
//! prompts, sampled tokens, injections) in one `llama_decode`.
//!
//! A [`Job`] with several [`Sample`]s is G completions of one prompt: the
//! prompt is decoded once in the first sample's slot and its cells copied to
//! the others (`llama_memory_seq_cp`), which then sample from the same logits.
//!
//! Every completion token is recorded ([`SeqToken`]): sampled or injected,
//! and the log-probability of a sampled token under the distribution it was
//! drawn from (the trainer's behaviour log-probs).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::LlamaToken;
use serde::{Deserialize, Serialize};

use super::abort::AbortGate;
use super::session::{batch_params, ms, per_second, BATCH};
use super::{Engine, SolveOptions};
use crate::answer::extract_answer;
use crate::budget::{Controller, Emit, Finish, Segment, Step, ThinkEnd, TokenId};
use crate::error::{ReckonError, Result};
use crate::events::{CancelHandle, Event, FinishReason, Listener, Silent, SolveResult, Timings};

/// The most sequences one context holds (llama.cpp's `LLAMA_MAX_SEQ`).
pub const MAX_SLOTS: u32 = 256;

/// The shape of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchConfig {
    /// Sequences decoded together.
    pub slots: u32,
    /// Context cells per slot: the largest prompt plus budgets a slot must
    /// hold (see [`Engine::slot_context`]). Rounded up to 256.
    pub slot_context: u32,
    /// CPU threads (`None`: [`default_threads`](super::default_threads)). Per-job `threads` are ignored in a
    /// batch: the context has one thread pool.
    pub threads: Option<u32>,
}

/// One token of a completion, as it finally stands in the sequence (tokens
/// held back and rolled back are gone).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SeqToken {
    /// The token.
    pub id: TokenId,
    /// Sampled from the model (`true`) or injected by the controller.
    pub sampled: bool,
    /// For a sampled token, `ln p` under the distribution it was drawn from
    /// (after penalties, top-k/top-p/min-p truncation and temperature; 0.0
    /// for a greedy pick, whose probability is 1). `None` when injected.
    pub logprob: Option<f32>,
}

/// One completion of a job: its id for the caller, and where its events go.
pub struct Sample<'a> {
    /// The caller's id for this completion, returned in [`Finished`].
    pub tag: u64,
    /// Sampling seed (`None`: the job's `options.sampling.seed`).
    pub seed: Option<u32>,
    /// Receives this completion's events.
    pub listener: Box<dyn Listener + 'a>,
    /// Cancels this completion alone.
    pub cancel: Option<CancelHandle>,
}

impl Sample<'_> {
    /// A completion nobody listens to.
    pub fn silent(tag: u64, seed: Option<u32>) -> Self {
        Sample { tag, seed, listener: Box::new(Silent), cancel: None }
    }
}

/// A question and its completions: one for a plain solve, G for RL groups
/// or self-consistency (the prompt is decoded once for all of them).
pub struct Job<'a> {
    /// The question (a person's text: special tokens stay plain).
    pub question: String,
    /// Budgets, sampling, system prompt.
    pub options: SolveOptions,
    /// The completions, each in its own slot.
    pub samples: Vec<Sample<'a>>,
}

impl<'a> Job<'a> {
    /// One silent completion.
    pub fn single(tag: u64, question: impl Into<String>, options: SolveOptions) -> Self {
        Job { question: question.into(), options, samples: vec![Sample::silent(tag, None)] }
    }

    /// `n` silent completions of one prompt, seeds `options.sampling.seed + i`,
    /// tags `first_tag + i`.
    pub fn group(first_tag: u64, question: impl Into<String>, options: SolveOptions, n: u32) -> Self {
        let seed = options.sampling.seed;
        let samples = (0..n).map(|i| Sample::silent(first_tag + u64::from(i), Some(seed.wrapping_add(i)))).collect();
        Job { question: question.into(), options, samples }
    }
}

/// A completion that is over.
#[derive(Debug)]
pub struct Finished {
    /// The sample's tag.
    pub tag: u64,
    /// The result, or why this completion failed.
    pub result: Result<SolveResult>,
    /// The prompt's tokens.
    pub prompt: Vec<TokenId>,
    /// The completion's tokens after the prompt, as finally in the sequence,
    /// plus a final end-of-turn token the model sampled (not decoded).
    pub tokens: Vec<SeqToken>,
}

/// The tokens of one completion ([`Engine::solve_traced`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    /// The prompt's tokens.
    pub prompt: Vec<TokenId>,
    /// The completion's tokens, as in [`Finished::tokens`].
    pub tokens: Vec<SeqToken>,
}

/// A job checked and tokenized, with the context one of its slots needs.
struct Prepared {
    prompt: Vec<TokenId>,
    need: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The prompt is being decoded in this slot.
    Prefill,
    /// Waits for the prompt decoded in another slot.
    Follows(usize),
    /// Sampling.
    Running,
}

#[derive(Default)]
struct Run {
    thinking: String,
    answer: String,
    injected_decode_ms: f64,
}

struct Slot<'a> {
    tag: u64,
    phase: Phase,
    ctl: Controller,
    sampler: LlamaSampler,
    greedy: bool,
    listener: Box<dyn Listener + 'a>,
    cancel: Option<CancelHandle>,
    prompt: Vec<TokenId>,
    /// Tokens to decode before the next sample; the last `queued_injected`
    /// of them were injected.
    queue: VecDeque<TokenId>,
    queued_injected: usize,
    /// Cells of this sequence.
    pos: u32,
    /// Output index of this slot's logits in the last decode, when it may sample.
    logits: Option<i32>,
    tokens: Vec<SeqToken>,
    run: Run,
    sampled: u32,
    decoded: u32,
    rolled_back: u32,
    submitted: Instant,
    prefill_started: Option<Instant>,
    prefill_ms: f64,
    decode_started: Option<Instant>,
    ttft_ms: Option<f64>,
    finish: Option<Result<FinishReason>>,
}

impl Slot<'_> {
    fn elapsed(&self) -> Duration {
        self.decode_started.map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// Queue tokens to decode; the last `injected` are injected.
    fn enqueue(&mut self, tokens: &[TokenId], injected: usize) {
        if tokens.is_empty() {
            return;
        }
        self.queue.extend(tokens.iter().copied());
        self.queued_injected += injected;
        // The logits of the last decode are no longer this sequence's end.
        self.logits = None;
    }
}

/// Many sequences in one llama.cpp context. Create with [`Engine::batch`].
pub struct Batch<'a> {
    engine: &'a Engine,
    ctx: LlamaContext<'a>,
    batch: LlamaBatch<'a>,
    slots: Vec<Option<Slot<'a>>>,
    config: BatchConfig,
    context_ms: f64,
    candidates: LlamaTokenDataArray,
    decoded: u64,
    decode_calls: u64,
    aborted_decodes: u64,
    /// Read by llama.cpp between graph nodes (its address is in `ctx`):
    /// declared after `ctx`, so the context is freed first.
    abort: Box<AbortGate>,
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("config", &self.config).field("live", &self.live()).finish()
    }
}

impl Engine {
    /// The context cells a slot needs for a prompt of `prompt` tokens under
    /// `budget`, rounded up to 256; an error if the model's context (or
    /// `max_context`) cannot hold it.
    pub fn slot_context(&self, prompt: usize, budget: &crate::budget::BudgetConfig) -> Result<u32> {
        self.context_size(prompt, budget)
    }

    fn prepare(&self, question: &str, options: &SolveOptions) -> Result<Prepared> {
        options.budget.validate()?;
        options.sampling.validate()?;
        let prompt = self.prompt_tokens(question, options)?;
        let need = self.context_size(prompt.len(), &options.budget)?;
        Ok(Prepared { prompt, need })
    }

    /// A batch of `config.slots` sequences. Refused before anything is
    /// decoded when the slots do not fit the context limit (the model's
    /// training context, or `EngineOptions::max_context`), saying how many fit.
    pub fn batch(&self, config: BatchConfig) -> Result<Batch<'_>> {
        if config.slots == 0 || config.slots > MAX_SLOTS {
            return Err(ReckonError::InvalidOption(format!("parallel sequences {} must be in 1..={MAX_SLOTS}", config.slots)));
        }
        let threads = SolveOptions { threads: config.threads, ..SolveOptions::default() }.threads()?;
        let slot_context = config.slot_context.max(1).div_ceil(256) * 256;
        let limit = self.context_limit();
        let total = u64::from(config.slots) * u64::from(slot_context);
        if total > u64::from(limit) || slot_context > limit {
            return Err(ReckonError::BatchTooLarge {
                slots: config.slots,
                slot_context,
                context_limit: limit,
                fits: limit / slot_context,
            });
        }
        let t = Instant::now();
        let abort = Box::<AbortGate>::default();
        let ctx = self.new_context(batch_params(total as u32, config.slots, threads, self.options.unified_kv, self.options.flash_attention, Some(&abort)))?;
        let n_vocab = self.vocab.len();
        Ok(Batch {
            engine: self,
            ctx,
            batch: LlamaBatch::new(BATCH, 1),
            slots: (0..config.slots).map(|_| None).collect(),
            config: BatchConfig { slot_context, ..config },
            context_ms: ms(t.elapsed()),
            candidates: LlamaTokenDataArray::new(Vec::with_capacity(n_vocab), false),
            decoded: 0,
            decode_calls: 0,
            aborted_decodes: 0,
            abort,
        })
    }

    /// Answer a question with budget forcing, streaming events to the
    /// listener. Blocks the calling thread; `cancel` stops it from another.
    /// A batch of one.
    pub fn solve(
        &self,
        question: &str,
        options: &SolveOptions,
        listener: &mut dyn Listener,
        cancel: Option<&CancelHandle>,
    ) -> Result<SolveResult> {
        self.solve_traced(question, options, listener, cancel).map(|(result, _)| result)
    }

    /// [`Engine::solve`], also returning the completion's tokens: the
    /// prompt's ids and every token after it, sampled or injected (what a
    /// cross-platform check compares token by token).
    pub fn solve_traced(
        &self,
        question: &str,
        options: &SolveOptions,
        listener: &mut dyn Listener,
        cancel: Option<&CancelHandle>,
    ) -> Result<(SolveResult, Trace)> {
        let t0 = Instant::now();
        let prepared = self.prepare(question, options)?;
        let mut batch = self.batch(BatchConfig { slots: 1, slot_context: prepared.need, threads: options.threads })?;
        let sample = Sample { tag: 0, seed: None, listener: Box::new(Borrowed(listener)), cancel: cancel.cloned() };
        batch.start(prepared, options, vec![sample])?;
        let Finished { result, prompt, tokens, .. } = batch.run_to_end().pop().expect("one completion");
        let mut result = result?;
        result.timings.total_ms = ms(t0.elapsed());
        result.timings.ttft_ms += batch.context_ms;
        Ok((result, Trace { prompt, tokens }))
    }

    /// Run jobs through `slots` sequences, continuously: when a completion
    /// finishes, the next job starts in its slot. Each completion is handed
    /// to `on_finished` as it ends (a job that cannot run, e.g. a question
    /// too long, comes back at once as an error; the others go on). Slots
    /// are sized for the largest job. Errors only when the batch itself
    /// cannot be made.
    pub fn solve_queue<'a>(
        &'a self,
        jobs: Vec<Job<'a>>,
        slots: u32,
        threads: Option<u32>,
        on_finished: &mut dyn FnMut(Finished),
    ) -> Result<()> {
        let mut ready = VecDeque::new();
        let mut need = 0;
        let mut widest = 0;
        for job in jobs.into_iter().filter(|j| !j.samples.is_empty()) {
            match self.prepare(&job.question, &job.options) {
                Ok(p) => {
                    need = need.max(p.need);
                    widest = widest.max(job.samples.len());
                    ready.push_back((p, job));
                }
                Err(e) => {
                    let msg = e.to_string();
                    let mut first = Some(e);
                    for s in job.samples {
                        let err = first.take().unwrap_or_else(|| ReckonError::InvalidOption(msg.clone()));
                        on_finished(Finished { tag: s.tag, result: Err(err), prompt: Vec::new(), tokens: Vec::new() });
                    }
                }
            }
        }
        if ready.is_empty() {
            return Ok(());
        }
        if widest > slots as usize {
            return Err(ReckonError::InvalidOption(format!("a job has {widest} samples but only {slots} parallel sequences were asked for")));
        }
        let total: usize = ready.iter().map(|(_, j)| j.samples.len()).sum();
        let slots = slots.min(total as u32).max(widest as u32);
        let mut batch = self.batch(BatchConfig { slots, slot_context: need, threads })?;
        loop {
            while ready.front().is_some_and(|(_, job)| job.samples.len() <= batch.free_slots()) {
                let (p, job) = ready.pop_front().expect("front exists");
                batch.start(p, &job.options, job.samples)?;
            }
            if batch.is_idle() {
                break;
            }
            for f in batch.step() {
                on_finished(f);
            }
        }
        Ok(())
    }

    /// `members` completions of one question in one batch, the prompt decoded
    /// once; the results in the order of `members`.
    pub fn solve_samples<'a>(
        &'a self,
        question: &str,
        options: &SolveOptions,
        members: Vec<Sample<'a>>,
        threads: Option<u32>,
    ) -> Result<Vec<Finished>> {
        let n = members.len() as u32;
        let order: Vec<u64> = members.iter().map(|m| m.tag).collect();
        let job = Job { question: question.to_string(), options: options.clone(), samples: members };
        let mut out = Vec::new();
        self.solve_queue(vec![job], n.max(1), threads, &mut |f| out.push(f))?;
        out.sort_by_key(|f| order.iter().position(|t| *t == f.tag));
        Ok(out)
    }
}

/// A borrowed listener in a box.
struct Borrowed<'l>(&'l mut dyn Listener);

impl Listener for Borrowed<'_> {
    fn on_event(&mut self, event: &Event) -> bool {
        self.0.on_event(event)
    }
}

impl<'a> Batch<'a> {
    /// The batch's shape (slot context rounded up).
    pub fn config(&self) -> BatchConfig {
        self.config
    }

    /// Slots with no sequence.
    pub fn free_slots(&self) -> usize {
        self.slots.iter().filter(|s| s.is_none()).count()
    }

    /// Sequences in flight.
    pub fn live(&self) -> usize {
        self.slots.len() - self.free_slots()
    }

    /// Nothing in flight.
    pub fn is_idle(&self) -> bool {
        self.free_slots() == self.slots.len()
    }

    /// Tokens handed to `llama_decode` so far, over all sequences.
    pub fn decoded_tokens(&self) -> u64 {
        self.decoded
    }

    /// `llama_decode` calls so far.
    pub fn decode_calls(&self) -> u64 {
        self.decode_calls
    }

    /// `llama_decode` calls stopped part-way because every sequence in
    /// them had been cancelled (see `abort.rs`).
    pub fn aborted_decodes(&self) -> u64 {
        self.aborted_decodes
    }

    /// Milliseconds spent creating the context.
    pub fn context_ms(&self) -> f64 {
        self.context_ms
    }

    /// Check that every sequence's KV cells are exactly its own: a live slot
    /// holds positions `0..pos` and a free one none. Cheap; tests call it
    /// after every step to prove that no rollback, injection or cancel of
    /// one sequence touched another's cache.
    pub fn check_cells(&self) -> Result<()> {
        for (i, slot) in self.slots.iter().enumerate() {
            let (lo, hi) = (self.ctx.kv_cache_seq_pos_min(i as i32), self.ctx.kv_cache_seq_pos_max(i as i32));
            let want = match slot {
                Some(s) if s.pos > 0 => (0, s.pos as i32 - 1),
                _ => (-1, -1),
            };
            if (lo, hi) != want {
                return Err(ReckonError::Internal(format!("slot {i} holds cells {lo}..={hi}, expected {}..={}", want.0, want.1)));
            }
        }
        Ok(())
    }

    /// Start a job in free slots (one per sample). Nothing is decoded until
    /// the next [`Batch::step`]. Refused (and nothing started) when the
    /// question or options are invalid, it does not fit a slot, or there are
    /// not enough free slots.
    pub fn submit(&mut self, job: Job<'a>) -> Result<()> {
        let p = self.engine.prepare(&job.question, &job.options)?;
        self.start(p, &job.options, job.samples)
    }

    fn start(&mut self, p: Prepared, options: &SolveOptions, samples: Vec<Sample<'a>>) -> Result<()> {
        if samples.is_empty() {
            return Err(ReckonError::InvalidOption("a job needs at least one sample".into()));
        }
        if p.need > self.config.slot_context {
            return Err(ReckonError::PromptTooLong {
                prompt_tokens: p.prompt.len() as u32,
                budget_tokens: p.need.saturating_sub(p.prompt.len() as u32),
                context_limit: self.config.slot_context,
            });
        }
        let free: Vec<usize> = (0..self.slots.len()).filter(|&i| self.slots[i].is_none()).take(samples.len()).collect();
        if free.len() < samples.len() {
            return Err(ReckonError::InvalidOption(format!(
                "{} samples need as many free slots; {} of {} are free",
                samples.len(),
                free.len(),
                self.slots.len()
            )));
        }
        let leader = free[0];
        let now = Instant::now();
        let n_vocab = self.engine.vocab.len() as i32;
        for (k, (s, &i)) in samples.into_iter().zip(&free).enumerate() {
            let mut sampling = options.sampling.clone();
            if let Some(seed) = s.seed {
                sampling.seed = seed;
            }
            let mut slot = Slot {
                tag: s.tag,
                phase: if k == 0 { Phase::Prefill } else { Phase::Follows(leader) },
                ctl: Controller::new(options.budget.clone(), self.engine.delims.clone()),
                sampler: sampling.build(n_vocab),
                greedy: sampling.temperature <= 0.0,
                listener: s.listener,
                cancel: s.cancel,
                prompt: p.prompt.clone(),
                queue: VecDeque::new(),
                queued_injected: 0,
                pos: 0,
                logits: None,
                tokens: Vec::new(),
                run: Run::default(),
                sampled: 0,
                decoded: 0,
                rolled_back: 0,
                submitted: now,
                prefill_started: None,
                prefill_ms: 0.0,
                decode_started: None,
                ttft_ms: None,
                finish: None,
            };
            if k == 0 {
                slot.enqueue(&p.prompt, 0);
            }
            self.slots[i] = Some(slot);
        }
        Ok(())
    }

    /// Run until every sequence in flight is over; the completions in the
    /// order they finished.
    pub fn run_to_end(&mut self) -> Vec<Finished> {
        let mut out = Vec::new();
        while !self.is_idle() {
            out.extend(self.step());
        }
        out
    }

    /// One step: every slot with logits samples and its controller's step
    /// is executed; then everything queued is decoded in one `llama_decode`.
    /// Returns the completions that ended.
    pub fn step(&mut self) -> Vec<Finished> {
        for i in 0..self.slots.len() {
            self.sample_slot(i);
        }
        self.end_cancelled_prefills();
        let calls = self.decode_calls;
        self.decode_queued();
        let progressed = self.decode_calls > calls
            || self.slots.iter().flatten().any(|s| s.finish.is_some() || s.logits.is_some());
        if !progressed {
            // Nothing to sample and nothing to decode: a bug, not a hang.
            for s in self.slots.iter_mut().flatten() {
                s.finish = Some(Err(ReckonError::Internal("the batch stalled: no sequence can advance".into())));
            }
        }
        let mut out = Vec::new();
        for i in 0..self.slots.len() {
            if self.slots[i].as_ref().is_some_and(|s| s.finish.is_some()) {
                out.push(self.retire(i));
            }
        }
        out
    }

    /// A prompt still being decoded for sequences that have all been
    /// cancelled (its own slot and those that wait for it) is not decoded
    /// further: they end now, not after the rest of their prefill.
    fn end_cancelled_prefills(&mut self) {
        let cancelled = |s: &Slot<'_>| s.cancel.as_ref().is_some_and(CancelHandle::is_cancelled);
        for leader in 0..self.slots.len() {
            let Some(slot) = self.slots[leader].as_ref() else { continue };
            if slot.finish.is_some() || slot.phase != Phase::Prefill || !cancelled(slot) {
                continue;
            }
            let group: Vec<usize> = (0..self.slots.len())
                .filter(|&j| j == leader || self.slots[j].as_ref().is_some_and(|s| s.phase == Phase::Follows(leader) && s.finish.is_none()))
                .collect();
            if group.iter().all(|&j| self.slots[j].as_ref().is_some_and(cancelled)) {
                for j in group {
                    if let Some(s) = self.slots[j].as_mut() {
                        s.finish = Some(Ok(FinishReason::Cancelled));
                    }
                }
            }
        }
    }

    fn sample_slot(&mut self, i: usize) {
        let engine = self.engine;
        let Some(slot) = self.slots[i].as_mut() else { return };
        if slot.finish.is_some() || slot.phase != Phase::Running {
            return;
        }
        let Some(idx) = slot.logits.take() else { return };
        if slot.cancel.as_ref().is_some_and(CancelHandle::is_cancelled) {
            slot.finish = Some(Ok(FinishReason::Cancelled));
            return;
        }
        let step = slot.ctl.check_time(slot.elapsed());
        if step != Step::default() {
            self.apply(i, step, None);
            return;
        }
        let slot = self.slots[i].as_mut().expect("slot is live");
        let c = &mut self.candidates;
        c.data.clear();
        c.data.extend(self.ctx.get_logits_ith(idx).iter().enumerate().map(|(t, &l)| LlamaTokenData::new(LlamaToken(t as i32), l, 0.0)));
        c.selected = None;
        c.sorted = false;
        slot.sampler.apply(c);
        let Some(sel) = c.selected else {
            slot.finish = Some(Err(ReckonError::Internal("the sampler selected no token".into())));
            return;
        };
        let chosen = c.data[sel];
        let token = chosen.id().0;
        slot.sampler.accept(LlamaToken(token));
        let logprob = if slot.greedy { 0.0 } else { chosen.p().ln() };
        slot.sampled += 1;
        let submitted = slot.submitted;
        slot.ttft_ms.get_or_insert_with(|| ms(submitted.elapsed()));
        let step = slot.ctl.accept(token, slot.elapsed(), &engine.vocab);
        let ends_turn = step.done == Some(Finish::EndOfTurn) && engine.delims.end_of_turn.contains(&token);
        self.apply(i, step, Some(logprob));
        if ends_turn {
            // The model's end-of-turn token closes the completion (a trainer
            // learns to stop), though it is never decoded.
            if let Some(slot) = self.slots[i].as_mut() {
                slot.tokens.push(SeqToken { id: token, sampled: true, logprob: Some(logprob) });
            }
        }
    }

    /// Execute one controller step for slot `i`: stream its text, roll back
    /// this sequence's held cells, queue what it feeds.
    fn apply(&mut self, i: usize, step: Step, logprob: Option<f32>) {
        let slot_context = self.config.slot_context;
        let Some(slot) = self.slots[i].as_mut() else { return };
        let mut keep_going = true;
        for emit in step.emits {
            let event = match emit {
                Emit::Text { segment: Segment::Thinking, text } => {
                    slot.run.thinking.push_str(&text);
                    Event::Thinking { text, tokens: slot.ctl.counts().thinking() }
                }
                Emit::Text { segment: Segment::Answer, text } => {
                    slot.run.answer.push_str(&text);
                    Event::Answer { text, tokens: slot.ctl.counts().answer_generated }
                }
                Emit::Injected { segment, text, reason } => {
                    match segment {
                        Segment::Thinking => slot.run.thinking.push_str(&text),
                        Segment::Answer => slot.run.answer.push_str(&text),
                    }
                    Event::Injected { segment, text, reason }
                }
            };
            keep_going &= slot.listener.on_event(&event);
        }
        let record = |slot: &mut Slot<'_>, feed: &[TokenId], sampled_fed: usize| {
            for (k, &id) in feed.iter().enumerate() {
                let sampled = k < sampled_fed;
                slot.tokens.push(SeqToken { id, sampled, logprob: if sampled { logprob } else { None } });
            }
        };
        if let Some(done) = step.done {
            record(slot, &step.feed, step.sampled_fed);
            slot.finish = Some(Ok(match done {
                Finish::EndOfTurn => FinishReason::EndOfTurn,
                Finish::AnswerCap => FinishReason::AnswerCap,
            }));
            return;
        }
        if step.rollback > 0 {
            let n = step.rollback as u32;
            let Some(from) = slot.pos.checked_sub(n).filter(|_| slot.queue.is_empty()) else {
                slot.finish = Some(Err(ReckonError::Internal("rollback past the decoded sequence".into())));
                return;
            };
            match self.ctx.clear_kv_cache_seq(Some(i as u32), Some(from), None) {
                Ok(true) => {}
                Ok(false) => {
                    slot.finish = Some(Err(ReckonError::Decode(format!(
                        "this model's cache cannot remove the last {n} tokens of a sequence (recurrent or SWA cache); use a think format whose delimiters are single tokens"
                    ))));
                    return;
                }
                Err(e) => {
                    slot.finish = Some(Err(ReckonError::Decode(e.to_string())));
                    return;
                }
            }
            slot.pos = from;
            slot.rolled_back += n;
            let keep = slot.tokens.len().saturating_sub(step.rollback);
            slot.tokens.truncate(keep);
        }
        if slot.pos as usize + slot.queue.len() + step.feed.len() > slot_context as usize {
            log::warn!("context full at {} tokens: ending the answer", slot.pos);
            slot.finish = Some(Ok(FinishReason::AnswerCap));
            return;
        }
        record(slot, &step.feed, step.sampled_fed);
        let injected = &step.feed[step.sampled_fed..];
        // Penalty samplers should see what is in the context.
        for &tok in injected {
            slot.sampler.accept(LlamaToken(tok));
        }
        slot.enqueue(&step.feed, injected.len());
        if !keep_going {
            slot.finish = Some(Ok(FinishReason::Stopped));
        }
    }

    /// Decode every slot's queue (sampled tokens and injections first, then
    /// prompts, up to the batch size), then hand out logits.
    fn decode_queued(&mut self) {
        self.batch.clear();
        let mut room = BATCH;
        // (slot, injected tokens taken, batch index of its logits if its queue emptied)
        let mut taken: Vec<(usize, usize, Option<i32>)> = Vec::new();
        for prompts in [false, true] {
            for i in 0..self.slots.len() {
                let Some(slot) = self.slots[i].as_mut() else { continue };
                if slot.finish.is_some() || slot.queue.is_empty() || (slot.phase == Phase::Prefill) != prompts {
                    continue;
                }
                let n = slot.queue.len().min(room);
                if n == 0 {
                    continue;
                }
                let empties = n == slot.queue.len();
                let injected_before = slot.queued_injected;
                for k in 0..n {
                    let tok = slot.queue.pop_front().expect("n ≤ queue length");
                    let logits = empties && k + 1 == n;
                    if let Err(e) = self.batch.add(LlamaToken(tok), slot.pos as i32, &[i as i32], logits) {
                        slot.finish = Some(Err(ReckonError::Decode(e.to_string())));
                        break;
                    }
                    slot.pos += 1;
                }
                // Injected tokens sit at the end of the queue.
                let injected_taken = injected_before.saturating_sub(slot.queue.len());
                slot.queued_injected -= injected_taken;
                slot.decoded += n as u32;
                if slot.phase == Phase::Prefill && slot.prefill_started.is_none() {
                    slot.prefill_started = Some(Instant::now());
                }
                let out = empties.then(|| self.batch.n_tokens() - 1);
                taken.push((i, injected_taken, out));
                room -= n;
            }
        }
        if taken.is_empty() {
            return;
        }
        let n_tokens = self.batch.n_tokens().max(1) as f64;
        // The decode may stop early only if every live sequence can be
        // cancelled (and then only once all of them are).
        let live: Option<Vec<CancelHandle>> = self.slots.iter().flatten().filter(|s| s.finish.is_none()).map(|s| s.cancel.clone()).collect();
        self.abort.arm(live);
        let t = Instant::now();
        let decoded = self.ctx.decode(&mut self.batch);
        let decode_ms = ms(t.elapsed());
        self.abort.arm(None);
        self.decode_calls += 1;
        self.decoded += n_tokens as u64;
        if decoded.is_err() && self.slots.iter().flatten().filter(|s| s.finish.is_none()).all(|s| s.cancel.as_ref().is_some_and(CancelHandle::is_cancelled)) {
            // Aborted (llama.cpp removed the unfinished ubatch's cells):
            // every sequence in it was cancelled, and ends so.
            self.aborted_decodes += 1;
            for s in self.slots.iter_mut().flatten() {
                if s.finish.is_none() {
                    s.finish = Some(Ok(FinishReason::Cancelled));
                }
            }
            return;
        }
        if let Err(e) = decoded {
            // A failed decode leaves no sequence usable: end them all.
            let msg = e.to_string();
            for s in self.slots.iter_mut().flatten() {
                if s.finish.is_none() {
                    s.finish = Some(Err(ReckonError::Decode(msg.clone())));
                }
            }
            return;
        }
        for (i, injected, idx) in taken {
            let Some(slot) = self.slots[i].as_mut() else { continue };
            slot.run.injected_decode_ms += decode_ms * injected as f64 / n_tokens;
            let Some(idx) = idx else { continue };
            slot.logits = Some(idx);
            if slot.phase == Phase::Prefill {
                self.prompt_done(i, idx);
            }
        }
    }

    /// The prompt of slot `leader` is decoded: start its controller and
    /// those of the slots that share its prompt.
    fn prompt_done(&mut self, leader: usize, idx: i32) {
        let (pos, prefill_ms) = {
            let slot = self.slots[leader].as_mut().expect("leader is live");
            slot.phase = Phase::Running;
            slot.prefill_ms = slot.prefill_started.map_or(0.0, |t| ms(t.elapsed()));
            (slot.pos, slot.prefill_ms)
        };
        let mut group = vec![leader];
        for j in 0..self.slots.len() {
            let follows = self.slots[j].as_ref().is_some_and(|s| s.phase == Phase::Follows(leader));
            if !follows {
                continue;
            }
            // Across KV streams llama.cpp copies the cells at the next decode,
            // before the new tokens are placed (in a unified cache it shares
            // them).
            if let Err(e) = self.ctx.copy_kv_cache_seq(leader as i32, j as i32, None, None) {
                let slot = self.slots[j].as_mut().expect("follower is live");
                slot.finish = Some(Err(ReckonError::Decode(e.to_string())));
                continue;
            }
            let slot = self.slots[j].as_mut().expect("follower is live");
            slot.phase = Phase::Running;
            slot.pos = pos;
            slot.prefill_ms = prefill_ms;
            slot.logits = Some(idx);
            group.push(j);
        }
        for i in group {
            let slot = self.slots[i].as_mut().expect("group member is live");
            slot.decode_started = Some(Instant::now());
            let first = slot.ctl.start(Duration::ZERO);
            self.apply(i, first, None);
        }
    }

    /// Free slot `i` and report its completion.
    fn retire(&mut self, i: usize) -> Finished {
        let mut slot = self.slots[i].take().expect("retiring a live slot");
        // Removing a whole sequence always succeeds.
        let _ = self.ctx.clear_kv_cache_seq(Some(i as u32), None, None);
        // A slot whose prompt others wait for cannot end before its prefill
        // (only a failed decode does that, and it ends them all).
        let finish = slot.finish.take().expect("retiring a finished slot");
        let result = finish.map(|finish| {
            slot.listener.on_event(&Event::Done { finish });
            let counts = slot.ctl.counts();
            let extracted = extract_answer(&slot.run.answer, &slot.run.thinking);
            let think_end = slot.ctl.think_end();
            let decode_ms = slot.decode_started.map_or(0.0, |t| ms(t.elapsed()));
            let prompt_tokens = slot.prompt.len() as u32;
            SolveResult {
                format: self.engine.format,
                extracted_answer: extracted.as_ref().map(|e| e.value.clone()),
                answer_source: extracted.map(|e| e.source),
                thinking: std::mem::take(&mut slot.run.thinking),
                answer: std::mem::take(&mut slot.run.answer),
                prompt_tokens,
                thinking_tokens: counts.thinking_generated,
                injected_tokens: counts.thinking_injected,
                delimiter_tokens: counts.other_injected,
                answer_tokens: counts.answer_generated,
                extensions: counts.extensions,
                sampled_tokens: slot.sampled,
                decoded_tokens: slot.decoded,
                rolled_back_tokens: slot.rolled_back,
                forced_end: matches!(think_end, Some(ThinkEnd::TokenCap | ThinkEnd::TimeBudget)),
                think_end,
                finish,
                timings: Timings {
                    load_ms: self.engine.load_ms,
                    context_ms: self.context_ms,
                    prefill_ms: slot.prefill_ms,
                    prefill_tok_s: per_second(prompt_tokens, slot.prefill_ms),
                    ttft_ms: slot.ttft_ms.unwrap_or(0.0),
                    decode_ms,
                    decode_tok_s: per_second(slot.sampled, decode_ms),
                    injected_decode_ms: slot.run.injected_decode_ms,
                    total_ms: ms(slot.submitted.elapsed()),
                },
            }
        });
        Finished { tag: slot.tag, result, prompt: std::mem::take(&mut slot.prompt), tokens: std::mem::take(&mut slot.tokens) }
    }
}
