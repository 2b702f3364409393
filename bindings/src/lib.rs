//! uniffi bindings of the Reckon runtime (Kotlin/Android, Swift/iOS, Python).
//!
//! The runtime crate knows nothing of uniffi: this crate mirrors its types
//! as uniffi records and enums, wraps the engine as an object, and converts
//! its errors into one public error enum. Nothing panics across the FFI
//! boundary: every call is wrapped in `catch_unwind`, and an exception thrown
//! inside the app's listener stops the solve and comes back as
//! [`ReckonError::Listener`].

#![deny(missing_docs)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use reckon::budget::{BudgetConfig, InjectReason as CoreInject, Segment as CoreSegment, ThinkEnd as CoreThinkEnd};
use reckon::engine::{EngineOptions as CoreEngineOptions, SamplingConfig, SolveOptions as CoreSolveOptions};
use reckon::events::{CancelHandle, Event as CoreEvent, FinishReason as CoreFinish};
use reckon::format::ThinkFormat as CoreFormat;

uniffi::setup_scaffolding!();

/// The one error type apps see.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum ReckonError {
    /// No model file at the path.
    #[error("{reason}")]
    ModelNotFound {
        /// What happened.
        reason: String,
    },
    /// The file is not a usable model (corrupt, truncated, unsupported).
    #[error("{reason}")]
    InvalidModel {
        /// What happened.
        reason: String,
    },
    /// The question, budget or options are not acceptable.
    #[error("{reason}")]
    InvalidInput {
        /// What happened.
        reason: String,
    },
    /// The question and budgets do not fit the context.
    #[error("{reason}")]
    PromptTooLong {
        /// What happened.
        reason: String,
    },
    /// Inference failed (out of memory, decode error).
    #[error("{reason}")]
    Inference {
        /// What happened.
        reason: String,
    },
    /// Reading or writing a file failed (disk full, no permission).
    #[error("{reason}")]
    Io {
        /// What happened.
        reason: String,
    },
    /// A model download failed (no network, HTTP error, cut off).
    #[error("{reason}")]
    Download {
        /// What happened.
        reason: String,
    },
    /// A model's bytes do not have the expected SHA-256; nothing was kept.
    #[error("{reason}")]
    HashMismatch {
        /// What happened.
        reason: String,
    },
    /// Stopped through a [`CancelToken`] or a listener that said no.
    #[error("{reason}")]
    Cancelled {
        /// What was cancelled.
        reason: String,
    },
    /// The app's listener threw; the solve was stopped.
    #[error("listener failed: {reason}")]
    Listener {
        /// What it threw.
        reason: String,
    },
    /// A bug in reckon (a panic caught at the boundary).
    #[error("internal error: {reason}")]
    Internal {
        /// What happened.
        reason: String,
    },
}

impl From<reckon::ReckonError> for ReckonError {
    fn from(e: reckon::ReckonError) -> Self {
        use reckon::ReckonError as E;
        let reason = e.to_string();
        match e {
            E::ModelNotFound(_) => ReckonError::ModelNotFound { reason },
            E::ModelIsDirectory(_) | E::InvalidModel { .. } | E::UnsupportedArchitecture { .. } | E::ModelLoad { .. } | E::InvalidAdapter { .. } => {
                ReckonError::InvalidModel { reason }
            }
            E::EmptyQuestion | E::InvalidBudget(_) | E::InvalidOption(_) | E::BatchTooLarge { .. } => ReckonError::InvalidInput { reason },
            E::PromptTooLong { .. } => ReckonError::PromptTooLong { reason },
            E::Context(_) | E::Decode(_) | E::Backend(_) => ReckonError::Inference { reason },
            E::Io { .. } => ReckonError::Io { reason },
            E::Fetch(_) => ReckonError::Download { reason },
            E::HashMismatch { .. } => ReckonError::HashMismatch { reason },
            E::Cancelled(_) => ReckonError::Cancelled { reason },
            E::Internal(_) => ReckonError::Internal { reason },
        }
    }
}

impl From<uniffi::UnexpectedUniFFICallbackError> for ReckonError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        ReckonError::Listener { reason: e.reason }
    }
}

/// Run `f`, turning a panic into [`ReckonError::Internal`].
fn guarded<T>(f: impl FnOnce() -> Result<T, ReckonError>) -> Result<T, ReckonError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let reason = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        Err(ReckonError::Internal { reason })
    })
}

/// How a model delimits thinking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ThinkFormat {
    /// `<|im_start|>think` … `<|im_start|>answer`.
    S1,
    /// `<think>` … `</think>`.
    R1,
    /// No delimiter: the whole reply is thinking.
    Plain,
}

impl From<CoreFormat> for ThinkFormat {
    fn from(f: CoreFormat) -> Self {
        match f {
            CoreFormat::S1 => ThinkFormat::S1,
            CoreFormat::R1 => ThinkFormat::R1,
            CoreFormat::Plain => ThinkFormat::Plain,
        }
    }
}

impl From<ThinkFormat> for CoreFormat {
    fn from(f: ThinkFormat) -> Self {
        match f {
            ThinkFormat::S1 => CoreFormat::S1,
            ThinkFormat::R1 => CoreFormat::R1,
            ThinkFormat::Plain => CoreFormat::Plain,
        }
    }
}

/// How to load a model.
#[derive(Debug, Clone, uniffi::Record)]
pub struct EngineOptions {
    /// Force a think format (default: detected).
    #[uniffi(default = None)]
    pub format: Option<ThinkFormat>,
    /// Upper bound on a solve's context in tokens, to save memory on phones.
    #[uniffi(default = None)]
    pub max_context: Option<u32>,
    /// Layers offloaded to a GPU (Metal on iOS, CUDA builds); 0 = CPU.
    /// Default: the build's (all layers in a GPU build, none on CPU).
    #[uniffi(default = None)]
    pub gpu_layers: Option<u32>,
    /// A GGUF LoRA adapter file applied on top of the model (a fine-tune
    /// downloaded as a few megabytes); `InvalidModel` if it does not fit.
    #[uniffi(default = None)]
    pub adapter_path: Option<String>,
    /// The adapter's strength: 1.0 as trained.
    #[uniffi(default = 1.0)]
    pub adapter_scale: f32,
}

/// Budget and sampling for one solve.
#[derive(Debug, Clone, uniffi::Record)]
pub struct SolveOptions {
    /// Thinking floor: an earlier end of thinking is replaced by "Wait".
    #[uniffi(default = 0)]
    pub min_thinking_tokens: u32,
    /// Thinking cap; then the answer is forced.
    #[uniffi(default = 1024)]
    pub max_thinking_tokens: u32,
    /// The most "Wait" extensions (default: as many as the floor needs).
    #[uniffi(default = None)]
    pub max_extensions: Option<u32>,
    /// Bound on the answer.
    #[uniffi(default = 256)]
    pub max_answer_tokens: u32,
    /// Wall-clock thinking budget in milliseconds ("think for at most 8 s").
    #[uniffi(default = None)]
    pub max_thinking_ms: Option<u64>,
    /// 0 = greedy.
    #[uniffi(default = 0.0)]
    pub temperature: f32,
    /// Top-k for non-greedy sampling.
    #[uniffi(default = 40)]
    pub top_k: i32,
    /// Top-p for non-greedy sampling.
    #[uniffi(default = 0.95)]
    pub top_p: f32,
    /// Min-p for non-greedy sampling.
    #[uniffi(default = 0.05)]
    pub min_p: f32,
    /// Repetition penalty (1.0 = off).
    #[uniffi(default = 1.0)]
    pub repeat_penalty: f32,
    /// Random seed.
    #[uniffi(default = 0)]
    pub seed: u32,
    /// CPU threads (default: the performance cores on big.LITTLE phones, else all cores).
    #[uniffi(default = None)]
    pub threads: Option<u32>,
    /// System prompt (default: step-by-step with a boxed answer; "" = none).
    #[uniffi(default = None)]
    pub system_prompt: Option<String>,
}

impl From<&SolveOptions> for CoreSolveOptions {
    fn from(o: &SolveOptions) -> Self {
        let default = CoreSolveOptions::default();
        CoreSolveOptions {
            budget: BudgetConfig {
                min_thinking_tokens: o.min_thinking_tokens,
                max_thinking_tokens: o.max_thinking_tokens,
                max_extensions: o.max_extensions,
                max_answer_tokens: o.max_answer_tokens,
                max_thinking_ms: o.max_thinking_ms,
            },
            sampling: SamplingConfig {
                temperature: o.temperature,
                top_k: o.top_k,
                top_p: o.top_p,
                min_p: o.min_p,
                seed: o.seed,
                repeat_penalty: o.repeat_penalty,
                ..SamplingConfig::default()
            },
            threads: o.threads,
            system_prompt: o.system_prompt.clone().or(default.system_prompt),
        }
    }
}

/// Where text belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Segment {
    /// Reasoning.
    Thinking,
    /// The answer.
    Answer,
}

/// Why the runtime injected text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum InjectReason {
    /// "Wait": thinking ended before the floor.
    Extension,
    /// The token cap was reached.
    TokenCap,
    /// The time budget elapsed.
    TimeBudget,
    /// The end-of-thinking delimiter was completed.
    DelimiterCompletion,
}

/// How a solve ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum FinishReason {
    /// The model ended its turn.
    EndOfTurn,
    /// The answer reached its bound.
    AnswerCap,
    /// Cancelled through a [`CancelToken`].
    Cancelled,
    /// The listener returned false.
    Stopped,
}

/// How thinking ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ThinkEnd {
    /// The model closed its thinking.
    Natural,
    /// Forced by the token cap.
    TokenCap,
    /// Forced by the time budget.
    TimeBudget,
}

/// A streamed event, in order. Thinking and answer texts concatenate to the
/// result's `thinking` and `answer`; the last event is `Done`, with the result.
#[derive(Debug, Clone, PartialEq, uniffi::Enum)]
pub enum SolveEvent {
    /// Thinking text.
    Thinking {
        /// The text.
        text: String,
        /// Thinking tokens so far ("thinking 212 of 1024").
        thinking_tokens: u32,
        /// The cap they run to.
        max_thinking_tokens: u32,
    },
    /// Answer text.
    Answer {
        /// The text.
        text: String,
        /// Answer tokens so far.
        answer_tokens: u32,
    },
    /// Text the runtime fed.
    Injected {
        /// Where.
        segment: Segment,
        /// The text.
        text: String,
        /// Why.
        reason: InjectReason,
    },
    /// The end, with the result `solve` also returns.
    Done {
        /// How it ended.
        finish: FinishReason,
        /// The whole outcome.
        result: SolveResult,
    },
}

impl SolveEvent {
    /// The app's view of a core event; None for the core's `Done`, which
    /// the bindings send themselves once the result is known.
    fn from_core(e: &CoreEvent, max_thinking_tokens: u32) -> Option<Self> {
        let seg = |s: &CoreSegment| match s {
            CoreSegment::Thinking => Segment::Thinking,
            CoreSegment::Answer => Segment::Answer,
        };
        Some(match e {
            CoreEvent::Thinking { text, tokens } => SolveEvent::Thinking { text: text.clone(), thinking_tokens: *tokens, max_thinking_tokens },
            CoreEvent::Answer { text, tokens } => SolveEvent::Answer { text: text.clone(), answer_tokens: *tokens },
            CoreEvent::Injected { segment, text, reason } => SolveEvent::Injected {
                segment: seg(segment),
                text: text.clone(),
                reason: match reason {
                    CoreInject::Extension => InjectReason::Extension,
                    CoreInject::TokenCap => InjectReason::TokenCap,
                    CoreInject::TimeBudget => InjectReason::TimeBudget,
                    CoreInject::DelimiterCompletion => InjectReason::DelimiterCompletion,
                },
            },
            CoreEvent::Done { .. } => return None,
        })
    }
}

impl From<CoreFinish> for FinishReason {
    fn from(f: CoreFinish) -> Self {
        match f {
            CoreFinish::EndOfTurn => FinishReason::EndOfTurn,
            CoreFinish::AnswerCap => FinishReason::AnswerCap,
            CoreFinish::Cancelled => FinishReason::Cancelled,
            CoreFinish::Stopped => FinishReason::Stopped,
        }
    }
}

/// Where the extracted answer was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum AnswerSource {
    /// Inside `\boxed{}`.
    Boxed,
    /// After "Final Answer:".
    FinalAnswer,
    /// The last number in the text (a weaker guess).
    LastNumber,
}

/// Timings of a solve.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Timings {
    /// Model load (once per engine), ms.
    pub load_ms: f64,
    /// Prompt processing, ms.
    pub prefill_ms: f64,
    /// Prompt tokens per second.
    pub prefill_tok_s: f64,
    /// Time to the first token, ms.
    pub ttft_ms: f64,
    /// Generation, ms.
    pub decode_ms: f64,
    /// Generated tokens per second.
    pub decode_tok_s: f64,
    /// The whole solve, ms.
    pub total_ms: f64,
}

/// The outcome of a solve.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct SolveResult {
    /// The think format used.
    pub format: ThinkFormat,
    /// All thinking text.
    pub thinking: String,
    /// The answer text.
    pub answer: String,
    /// The normalized final answer, if found.
    pub extracted_answer: Option<String>,
    /// Where it was found.
    pub answer_source: Option<AnswerSource>,
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Thinking tokens generated.
    pub thinking_tokens: u32,
    /// Thinking tokens injected ("Wait").
    pub injected_tokens: u32,
    /// Answer tokens generated.
    pub answer_tokens: u32,
    /// Extensions used.
    pub extensions: u32,
    /// Whether the end of thinking was forced.
    pub forced_end: bool,
    /// How thinking ended (none if stopped while thinking).
    pub think_end: Option<ThinkEnd>,
    /// How the solve ended.
    pub finish: FinishReason,
    /// Timings.
    pub timings: Timings,
}

impl From<reckon::SolveResult> for SolveResult {
    fn from(r: reckon::SolveResult) -> Self {
        let t = r.timings;
        SolveResult {
            format: r.format.into(),
            thinking: r.thinking,
            answer: r.answer,
            extracted_answer: r.extracted_answer,
            answer_source: r.answer_source.map(|s| match s {
                reckon::answer::AnswerSource::Boxed => AnswerSource::Boxed,
                reckon::answer::AnswerSource::FinalAnswer => AnswerSource::FinalAnswer,
                reckon::answer::AnswerSource::LastNumber => AnswerSource::LastNumber,
            }),
            prompt_tokens: r.prompt_tokens,
            thinking_tokens: r.thinking_tokens,
            injected_tokens: r.injected_tokens,
            answer_tokens: r.answer_tokens,
            extensions: r.extensions,
            forced_end: r.forced_end,
            think_end: r.think_end.map(|e| match e {
                CoreThinkEnd::Natural => ThinkEnd::Natural,
                CoreThinkEnd::TokenCap => ThinkEnd::TokenCap,
                CoreThinkEnd::TimeBudget => ThinkEnd::TimeBudget,
            }),
            finish: r.finish.into(),
            timings: Timings {
                load_ms: t.load_ms,
                prefill_ms: t.prefill_ms,
                prefill_tok_s: t.prefill_tok_s,
                ttft_ms: t.ttft_ms,
                decode_ms: t.decode_ms,
                decode_tok_s: t.decode_tok_s,
                total_ms: t.total_ms,
            },
        }
    }
}

/// What a model file is.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct ModelInfo {
    /// `general.name`.
    pub name: Option<String>,
    /// `general.architecture`.
    pub architecture: String,
    /// File size in bytes.
    pub file_size: u64,
    /// Parameters.
    pub n_params: u64,
    /// Quantization (`Q4_K_M`).
    pub quantization: String,
    /// Training context length.
    pub context_length: Option<u64>,
    /// Whether a chat template is embedded.
    pub has_chat_template: bool,
    /// The think format in use.
    pub format: ThinkFormat,
}

/// Receives a solve's events on the solving thread. Return false to stop.
/// Throwing stops the solve too, and `solve` then throws
/// [`ReckonError::Listener`].
#[uniffi::export(foreign)]
pub trait SolveListener: Send + Sync {
    /// One event.
    fn on_event(&self, event: SolveEvent) -> Result<bool, ReckonError>;
}

/// Receives the events of a batch of solves, each tagged with the index of
/// its question. Return false to stop that question; throwing stops them all
/// and `solveBatch` then throws [`ReckonError::Listener`].
#[uniffi::export(foreign)]
pub trait BatchListener: Send + Sync {
    /// One event of question `index`.
    fn on_event(&self, index: u32, event: SolveEvent) -> Result<bool, ReckonError>;
}

/// One question's outcome in a batch: a result, or why it could not be
/// solved (the other questions are solved all the same).
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct BatchItem {
    /// The question's index in the input.
    pub index: u32,
    /// The result, if it was solved.
    pub result: Option<SolveResult>,
    /// Why not, otherwise (an empty question, one too long, ...).
    pub error: Option<String>,
}

/// Cancels a solve (or a model install) from any thread; a solve stops
/// within one decode step and returns with [`FinishReason::Cancelled`].
///
/// Dropping the token cancels too: when the app lets go of its last
/// reference (Kotlin `close()`, a Swift token going out of scope, a
/// ViewModel cleared), what it was given to stops. Keep the token for as
/// long as the work should run; pass none for work that should not stop.
#[derive(Debug, Default, uniffi::Object)]
pub struct CancelToken {
    inner: CancelHandle,
}

impl Drop for CancelToken {
    fn drop(&mut self) {
        self.inner.cancel();
    }
}

/// The handle a call watches, without keeping the app's token alive (so
/// that dropping the token cancels the call).
fn watch(cancel: Option<Arc<CancelToken>>) -> Option<CancelHandle> {
    cancel.map(|c| c.inner.clone())
}

/// Call `listener` and turn a throw or a panic into [`ReckonError::Listener`].
fn call_listener(f: impl FnOnce() -> Result<bool, ReckonError>) -> Result<bool, ReckonError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(go_on)) => Ok(go_on),
        Ok(Err(ReckonError::Listener { reason })) => Err(ReckonError::Listener { reason }),
        Ok(Err(other)) => Err(ReckonError::Listener { reason: other.to_string() }),
        Err(_) => Err(ReckonError::Listener { reason: "the listener panicked".into() }),
    }
}

#[uniffi::export]
impl CancelToken {
    /// A fresh token.
    #[uniffi::constructor]
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Stop the solve using this token.
    pub fn cancel(&self) {
        self.inner.cancel();
    }

    /// Whether cancel was called.
    pub fn is_cancelled(&self) -> bool {
        self.inner.is_cancelled()
    }
}

/// A loaded model. Share one across threads; each `solve` blocks its
/// calling (background) thread.
#[derive(Debug, uniffi::Object)]
pub struct Engine {
    inner: reckon::Engine,
}

#[uniffi::export]
impl Engine {
    /// Load a GGUF model. Throws `ModelNotFound` or `InvalidModel` for bad files.
    #[uniffi::constructor]
    pub fn new(model_path: String, options: EngineOptions) -> Result<Arc<Self>, ReckonError> {
        guarded(|| {
            let core = CoreEngineOptions {
                format: options.format.map(Into::into),
                max_context: options.max_context,
                gpu_layers: options.gpu_layers.unwrap_or(reckon::engine::DEFAULT_GPU_LAYERS),
                adapter: options.adapter_path.map(Into::into),
                adapter_scale: options.adapter_scale,
                unified_kv: false,
                flash_attention: true,
            };
            let inner = reckon::Engine::load(&model_path, core)?;
            Ok(Arc::new(Self { inner }))
        })
    }

    /// What the model is.
    pub fn info(&self) -> ModelInfo {
        let i = self.inner.info();
        ModelInfo {
            name: i.name.clone(),
            architecture: i.architecture.clone(),
            file_size: i.file_size,
            n_params: i.n_params,
            quantization: i.quantization.clone(),
            context_length: i.context_length,
            has_chat_template: i.has_chat_template,
            format: self.inner.format().into(),
        }
    }

    /// Solve a question with budget forcing, streaming events to `listener`.
    /// Blocks the calling thread; cancel with `cancel` from another.
    pub fn solve(
        &self,
        question: String,
        options: SolveOptions,
        listener: Arc<dyn SolveListener>,
        cancel: Option<Arc<CancelToken>>,
    ) -> Result<SolveResult, ReckonError> {
        let cancel = watch(cancel);
        guarded(|| {
            let core: CoreSolveOptions = (&options).into();
            let cap = core.budget.max_thinking_tokens;
            let mut failure: Option<ReckonError> = None;
            let mut forward = |e: &CoreEvent| {
                let Some(event) = SolveEvent::from_core(e, cap) else { return true };
                call_listener(|| listener.on_event(event)).unwrap_or_else(|err| {
                    failure = Some(err);
                    false
                })
            };
            let result = self.inner.solve(&question, &core, &mut forward, cancel.as_ref());
            if let Some(err) = failure {
                return Err(err);
            }
            let result: SolveResult = result?.into();
            call_listener(|| listener.on_event(SolveEvent::Done { finish: result.finish, result: result.clone() }))?;
            Ok(result)
        })
    }
}

#[uniffi::export]
impl Engine {
    /// Solve many questions (a worksheet) in one batch: `parallel` of them
    /// decoded together, the next starting as one finishes. Events go to
    /// `listener` tagged with the question's index; `cancel` stops them all.
    /// Returns one item per question, in input order.
    pub fn solve_batch(
        &self,
        questions: Vec<String>,
        options: SolveOptions,
        parallel: u32,
        listener: Option<Arc<dyn BatchListener>>,
        cancel: Option<Arc<CancelToken>>,
    ) -> Result<Vec<BatchItem>, ReckonError> {
        let cancel = watch(cancel);
        guarded(|| {
            let core: CoreSolveOptions = (&options).into();
            let cap = core.budget.max_thinking_tokens;
            let failure: Arc<Mutex<Option<ReckonError>>> = Arc::new(Mutex::new(None));
            let fail = |failure: &Mutex<Option<ReckonError>>, err| {
                failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(err);
            };
            let jobs = questions
                .iter()
                .enumerate()
                .map(|(i, q)| {
                    let listener = listener.clone();
                    let failure = failure.clone();
                    let cancel = cancel.clone();
                    let forward = move |e: &CoreEvent| {
                        // A throwing listener stops the whole batch.
                        if failure.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                            return false;
                        }
                        let Some(l) = &listener else { return true };
                        let Some(event) = SolveEvent::from_core(e, cap) else { return true };
                        call_listener(|| l.on_event(i as u32, event)).unwrap_or_else(|err| {
                            fail(&failure, err);
                            false
                        })
                    };
                    reckon::engine::Job {
                        question: q.clone(),
                        options: core.clone(),
                        samples: vec![reckon::engine::Sample { tag: i as u64, seed: None, listener: Box::new(forward), cancel }],
                    }
                })
                .collect();
            let mut items: Vec<BatchItem> =
                (0..questions.len() as u32).map(|index| BatchItem { index, result: None, error: None }).collect();
            self.inner.solve_queue(jobs, parallel.max(1), core.threads, &mut |f| {
                let item = &mut items[f.tag as usize];
                match f.result {
                    Ok(r) => {
                        let result: SolveResult = r.into();
                        if let Some(l) = &listener {
                            let done = SolveEvent::Done { finish: result.finish, result: result.clone() };
                            if let Err(err) = call_listener(|| l.on_event(f.tag as u32, done)) {
                                fail(&failure, err);
                            }
                        }
                        item.result = Some(result);
                    }
                    Err(e) => item.error = Some(e.to_string()),
                }
            })?;
            if let Some(err) = failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
                return Err(err);
            }
            Ok(items)
        })
    }
}

/// The runtime's own defaults for a solve (budgets, sampling), as the core
/// defines them: `SolveOptions()` in every language must equal this.
#[uniffi::export]
pub fn default_solve_options() -> SolveOptions {
    let core = CoreSolveOptions::default();
    SolveOptions {
        min_thinking_tokens: core.budget.min_thinking_tokens,
        max_thinking_tokens: core.budget.max_thinking_tokens,
        max_extensions: core.budget.max_extensions,
        max_answer_tokens: core.budget.max_answer_tokens,
        max_thinking_ms: core.budget.max_thinking_ms,
        temperature: core.sampling.temperature,
        top_k: core.sampling.top_k,
        top_p: core.sampling.top_p,
        min_p: core.sampling.min_p,
        repeat_penalty: core.sampling.repeat_penalty,
        seed: core.sampling.seed,
        threads: core.threads,
        // The record's None means the core's default prompt.
        system_prompt: None,
    }
}

/// The default models directory (`$RECKON_MODELS_DIR` or the user cache).
#[uniffi::export]
pub fn default_model_path() -> String {
    reckon::models::default_model_path().display().to_string()
}

/// What [`install_model`] is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum InstallPhase {
    /// Hashing a file already at the destination.
    Verifying,
    /// Downloading or copying (and hashing) the model.
    Copying,
}

/// Receives [`install_model`]'s progress on the installing thread, after
/// each MiB. Return false to stop (the install then throws `Cancelled`).
#[uniffi::export(foreign)]
pub trait InstallListener: Send + Sync {
    /// Bytes so far, and the total when known.
    fn on_progress(&self, phase: InstallPhase, done_bytes: u64, total_bytes: Option<u64>) -> Result<bool, ReckonError>;
}

/// Put a model at `dest_path`: from `source`, an `https://` (or `http://`)
/// URL the app supplies or a file path (a download the app made itself),
/// checked against `sha256` (64 hex digits) while it is written. A file
/// already at `dest_path` with that hash is kept (only verified). Nothing
/// is left behind on failure: a download cut off, a wrong hash
/// (`HashMismatch`), no network (`Download`), a full disk (`Io`), or a
/// cancel (`Cancelled`, through `cancel` or the listener). Blocks: call
/// from a background thread, or use [`install_model_async`].
#[uniffi::export]
pub fn install_model(
    source: String,
    dest_path: String,
    sha256: String,
    listener: Option<Arc<dyn InstallListener>>,
    cancel: Option<Arc<CancelToken>>,
) -> Result<String, ReckonError> {
    let cancel = watch(cancel);
    guarded(|| {
        let mut failure: Option<ReckonError> = None;
        let mut progress = |phase: reckon::models::InstallPhase, done: u64, total: Option<u64>| {
            if cancel.as_ref().is_some_and(CancelHandle::is_cancelled) {
                return false;
            }
            let Some(l) = &listener else { return true };
            let phase = match phase {
                reckon::models::InstallPhase::Verifying => InstallPhase::Verifying,
                reckon::models::InstallPhase::Copying => InstallPhase::Copying,
            };
            call_listener(|| l.on_progress(phase, done, total)).unwrap_or_else(|err| {
                failure = Some(err);
                false
            })
        };
        let installed = reckon::models::install_model(&source, std::path::Path::new(&dest_path), &sha256, &mut progress);
        if let Some(err) = failure {
            return Err(err);
        }
        Ok(installed?.display().to_string())
    })
}

/// Run `work` on a thread of its own and await it: the async forms of the
/// blocking calls, for `suspend` (Kotlin), `async` (Swift, Python) callers.
async fn off_thread<T: Send + 'static>(work: impl FnOnce() -> Result<T, ReckonError> + Send + 'static) -> Result<T, ReckonError> {
    let (tx, rx) = futures_channel::oneshot::channel();
    std::thread::Builder::new()
        .name("reckon-worker".into())
        .spawn(move || {
            let _ = tx.send(guarded(work));
        })
        .map_err(|e| ReckonError::Internal { reason: format!("could not start a thread: {e}") })?;
    rx.await.unwrap_or_else(|_| Err(ReckonError::Internal { reason: "the worker thread ended without a result".into() }))
}

/// Load a model without blocking the caller: [`Engine::new`] on a thread
/// of its own (loading takes seconds on a phone).
#[uniffi::export]
pub async fn load_engine(model_path: String, options: EngineOptions) -> Result<Arc<Engine>, ReckonError> {
    off_thread(move || Engine::new(model_path, options)).await
}

/// [`install_model`] without blocking the caller.
#[uniffi::export]
pub async fn install_model_async(
    source: String,
    dest_path: String,
    sha256: String,
    listener: Option<Arc<dyn InstallListener>>,
    cancel: Option<Arc<CancelToken>>,
) -> Result<String, ReckonError> {
    off_thread(move || install_model(source, dest_path, sha256, listener, cancel)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_the_last_token_cancels_what_watches_it() {
        let token = CancelToken::new();
        let watched = watch(Some(token.clone())).unwrap();
        assert!(!watched.is_cancelled(), "a call's own reference is gone, the app's remains");
        drop(token);
        assert!(watched.is_cancelled());
    }

    #[test]
    fn core_errors_keep_their_kind() {
        let io = reckon::ReckonError::io("writing", std::io::Error::other("disk full"));
        assert!(matches!(ReckonError::from(io), ReckonError::Io { .. }));
        assert!(matches!(ReckonError::from(reckon::ReckonError::Fetch("offline".into())), ReckonError::Download { .. }));
        let bad = reckon::ReckonError::HashMismatch { expected: "a".into(), actual: "b".into() };
        assert!(matches!(ReckonError::from(bad), ReckonError::HashMismatch { .. }));
        assert!(matches!(ReckonError::from(reckon::ReckonError::Cancelled("install".into())), ReckonError::Cancelled { .. }));
        assert!(matches!(ReckonError::from(reckon::ReckonError::EmptyQuestion), ReckonError::InvalidInput { .. }));
    }
}
