//! What a solve streams to its listener, and what it returns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::answer::AnswerSource;
use crate::budget::{InjectReason, Segment, ThinkEnd};
use crate::format::ThinkFormat;

/// A streamed event. Text arrives in whole UTF-8 characters; concatenating
/// the thinking (and injected thinking) events gives the result's
/// `thinking`, the answer ones its `answer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Thinking text the model generated.
    Thinking {
        /// The text.
        text: String,
        /// Thinking tokens so far (generated and injected: the count the
        /// cap bounds), for "thinking n of cap" progress.
        tokens: u32,
    },
    /// Answer text the model generated.
    Answer {
        /// The text.
        text: String,
        /// Answer tokens generated so far.
        tokens: u32,
    },
    /// Text the runtime fed, and why.
    Injected {
        /// Where it belongs.
        segment: Segment,
        /// The text.
        text: String,
        /// Why.
        reason: InjectReason,
    },
    /// The solve is over.
    Done {
        /// How it ended.
        finish: FinishReason,
    },
}

/// Receives events while a solve runs. Returning `false` stops generation
/// (the result then reports [`FinishReason::Stopped`]).
pub trait Listener {
    /// One event.
    fn on_event(&mut self, event: &Event) -> bool;
}

impl<F: FnMut(&Event) -> bool> Listener for F {
    fn on_event(&mut self, event: &Event) -> bool {
        self(event)
    }
}

/// A listener that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Listener for Silent {
    fn on_event(&mut self, _: &Event) -> bool {
        true
    }
}

/// Cancels a running solve from any thread; it stops within one decode step.
#[derive(Debug, Clone, Default)]
pub struct CancelHandle(Arc<AtomicBool>);

impl CancelHandle {
    /// A fresh handle.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask the solve to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether cancel was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Make it usable again.
    pub fn reset(&self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// How a solve ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model ended its turn.
    EndOfTurn,
    /// The answer reached its token bound.
    AnswerCap,
    /// A cancel handle stopped it.
    Cancelled,
    /// The listener returned false.
    Stopped,
}

/// Timings of one solve, in milliseconds and tokens per second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Loading the model (once per engine).
    pub load_ms: f64,
    /// Creating the context.
    pub context_ms: f64,
    /// Prompt processing.
    pub prefill_ms: f64,
    /// Prompt tokens per second.
    pub prefill_tok_s: f64,
    /// From the start of the solve to the first sampled token.
    pub ttft_ms: f64,
    /// Generation after the prompt (sampling, decoding, injections).
    pub decode_ms: f64,
    /// Sampled tokens per second of `decode_ms`.
    pub decode_tok_s: f64,
    /// Time spent decoding injected tokens (extensions, delimiters).
    pub injected_decode_ms: f64,
    /// The whole solve.
    pub total_ms: f64,
}

/// The outcome of one solve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SolveResult {
    /// The think format used.
    pub format: ThinkFormat,
    /// All thinking text, extensions included.
    pub thinking: String,
    /// The answer segment (after the end of thinking), injected prefix
    /// included.
    pub answer: String,
    /// The normalized final answer, if one was found.
    pub extracted_answer: Option<String>,
    /// Where it was found.
    pub answer_source: Option<AnswerSource>,
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Thinking tokens the model generated.
    pub thinking_tokens: u32,
    /// Thinking tokens the runtime injected (extensions).
    pub injected_tokens: u32,
    /// Tokens injected outside thinking (delimiter, answer prefix).
    pub delimiter_tokens: u32,
    /// Answer tokens the model generated.
    pub answer_tokens: u32,
    /// Extensions ("Wait") appended.
    pub extensions: u32,
    /// Tokens sampled from the model (generated ones plus suppressed ends).
    pub sampled_tokens: u32,
    /// Tokens handed to llama.cpp's decode in total, prompt included. With a
    /// kept KV cache this is the prompt plus every fed token, once.
    pub decoded_tokens: u32,
    /// Tokens removed from the end of the KV cache (suppressed delimiters).
    pub rolled_back_tokens: u32,
    /// Whether the end of thinking was forced.
    pub forced_end: bool,
    /// How thinking ended (`None` if it never did: stopped while thinking).
    pub think_end: Option<ThinkEnd>,
    /// How the solve ended.
    pub finish: FinishReason,
    /// Timings.
    pub timings: Timings,
}

impl SolveResult {
    /// Thinking tokens in total, the number the cap bounds.
    pub fn total_thinking_tokens(&self) -> u32 {
        self.thinking_tokens + self.injected_tokens
    }

    /// Tokens the model generated in total.
    pub fn generated_tokens(&self) -> u32 {
        self.thinking_tokens + self.answer_tokens
    }
}
