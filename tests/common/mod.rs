//! Shared by the integration tests: the real default model, loaded once.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use reckon::engine::{Engine, EngineOptions, SolveOptions};
use reckon::models::{self, ModelSpec};
use reckon::BudgetConfig;

/// The default model, fetched and hash-verified if needed (tests never skip
/// for want of it).
pub fn model_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        models::ensure_model(&ModelSpec::default_model(), &models::models_dir(), None, false)
            .expect("the default model can be fetched and verified")
    })
    .clone()
}

/// One engine per test binary.
pub fn engine() -> Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| Arc::new(Engine::load(model_path(), EngineOptions::default()).expect("default model loads")))
        .clone()
}

/// Greedy, two threads, a given budget.
pub fn options(min: u32, max: u32, answer: u32) -> SolveOptions {
    SolveOptions {
        budget: BudgetConfig {
            min_thinking_tokens: min,
            max_thinking_tokens: max,
            max_extensions: None,
            max_answer_tokens: answer,
            max_thinking_ms: None,
        },
        threads: Some(2),
        ..SolveOptions::default()
    }
}

pub const JANET: &str = "Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck egg. How much in dollars does she make every day at the farmers' market?";

/// A question the model answers in a handful of tokens.
pub const SHORT: &str = "What is 2 + 3? Reply with only the number.";
