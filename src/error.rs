//! The runtime's typed errors. Every bad input ends here, never in a panic.

use std::path::PathBuf;

use crate::budget::BudgetError;
use crate::gguf::GgufError;

/// Everything that can go wrong in the runtime.
#[derive(Debug, thiserror::Error)]
pub enum ReckonError {
    /// No file at the model path.
    #[error("model file not found: {0} (fetch the default model with `reckon fetch-model`, or pass --model)")]
    ModelNotFound(PathBuf),
    /// The model path is a directory.
    #[error("model path is a directory, not a GGUF file: {0}")]
    ModelIsDirectory(PathBuf),
    /// The file is not a sound GGUF.
    #[error("invalid model file {path}: {source}")]
    InvalidModel {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: GgufError,
    },
    /// A GGUF of an architecture this runtime does not run.
    #[error("unsupported model architecture '{arch}' in {path} (reckon runs decoder-only chat models such as qwen2, qwen3, llama)")]
    UnsupportedArchitecture {
        /// The file.
        path: PathBuf,
        /// Its `general.architecture`.
        arch: String,
    },
    /// llama.cpp refused the model.
    #[error("llama.cpp could not load {path}: {reason} (RUST_LOG=llama.cpp=debug shows its log)")]
    ModelLoad {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A LoRA adapter file that cannot be applied to the model.
    #[error("cannot apply LoRA adapter {path}: {reason}")]
    InvalidAdapter {
        /// The adapter file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The question is empty or only whitespace.
    #[error("the question is empty")]
    EmptyQuestion,
    /// Prompt plus budgets do not fit the context.
    #[error("the question does not fit: the prompt is {prompt_tokens} tokens and the budgets need {budget_tokens} more, but the context holds {context_limit}; shorten the question or lower --max-think")]
    PromptTooLong {
        /// Prompt tokens.
        prompt_tokens: u32,
        /// Thinking + delimiters + answer.
        budget_tokens: u32,
        /// The most the context can hold.
        context_limit: u32,
    },
    /// Parallel sequences that together need more context than allowed.
    #[error("{slots} parallel sequences of {slot_context} context tokens each need {} tokens, but the context limit is {context_limit}; {fits} fit (lower the parallel count or the budgets, or raise --ctx)", u64::from(*slots) * u64::from(*slot_context))]
    BatchTooLarge {
        /// Sequences asked for.
        slots: u32,
        /// Context per sequence.
        slot_context: u32,
        /// The model's context (or `max_context`).
        context_limit: u32,
        /// How many sequences of that size fit.
        fits: u32,
    },
    /// The budget cannot be honoured.
    #[error("invalid budget: {0}")]
    InvalidBudget(#[from] BudgetError),
    /// An option out of range.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// llama.cpp could not create a context (out of memory, usually).
    #[error("could not create an inference context: {0}")]
    Context(String),
    /// A decode step failed.
    #[error("decoding failed: {0}")]
    Decode(String),
    /// The llama.cpp backend could not start.
    #[error("llama.cpp backend: {0}")]
    Backend(String),
    /// Fetching the default model failed.
    #[error("model fetch failed: {0}")]
    Fetch(String),
    /// A downloaded model did not have the expected hash; it was deleted.
    #[error("model hash mismatch: expected {expected}, got {actual}; the bad file was deleted")]
    HashMismatch {
        /// Expected SHA-256.
        expected: String,
        /// What the bytes hashed to.
        actual: String,
    },
    /// An I/O error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Stopped by the caller (a progress callback that said no).
    #[error("{0} cancelled")]
    Cancelled(String),
    /// A bug: a panic caught at a boundary.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result with [`ReckonError`].
pub type Result<T, E = ReckonError> = std::result::Result<T, E>;

/// What kind of failure an error is: what a program does about it (the
/// CLI's exit code, the bindings' error class, the server's status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// What was asked cannot be done: an empty question, a prompt too long,
    /// invalid budgets or options. Fix the request.
    Input,
    /// The model or adapter file is missing, corrupt or unsupported.
    Model,
    /// Fetching or verifying a model failed.
    Fetch,
    /// Reading or writing a file failed.
    Io,
    /// llama.cpp failed while running (context, decode, backend).
    Runtime,
    /// The caller stopped it.
    Cancelled,
    /// A bug in reckon.
    Internal,
}

impl ReckonError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        use ReckonError as E;
        match self {
            E::EmptyQuestion | E::PromptTooLong { .. } | E::BatchTooLarge { .. } | E::InvalidBudget(_) | E::InvalidOption(_) => ErrorKind::Input,
            E::ModelNotFound(_)
            | E::ModelIsDirectory(_)
            | E::InvalidModel { .. }
            | E::UnsupportedArchitecture { .. }
            | E::ModelLoad { .. }
            | E::InvalidAdapter { .. } => ErrorKind::Model,
            E::Fetch(_) | E::HashMismatch { .. } => ErrorKind::Fetch,
            E::Io { .. } => ErrorKind::Io,
            E::Context(_) | E::Decode(_) | E::Backend(_) => ErrorKind::Runtime,
            E::Cancelled(_) => ErrorKind::Cancelled,
            E::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Wrap an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ReckonError::Io { context: context.into(), source }
    }
}
