//! Reckon's trainer: fine-tune small Qwen2-architecture models so that,
//! under budget forcing, they reason well in few tokens.
//!
//! Folders by concern, each importing only those before it:
//!
//! - [`model`]: the training-mode Qwen2 with LoRA and a KV-cached sampling
//!   path, and its fused CPU kernels.
//! - [`io`]: weights (HF safetensors, GGUF), the tokenizer, checkpoints,
//!   GGUF export and import.
//! - [`run`]: the loop skeleton SFT and GRPO share, the shared config
//!   sections, AdamW, benchmarks, plots.
//! - [`sft`]: SFT data (s1 format, long traces, a synthetic task) and the
//!   SFT loop.
//! - [`rl`]: rollouts (trainer or engine), rewards, the objective, the GRPO
//!   loop.

pub mod io;
pub mod model;
pub mod rl;
pub mod run;
pub mod sft;

pub use io::tokenizer::Tok;
pub use model::{KvCache, LoraConfig, Qwen2, Qwen2Config};
pub use rl::GrpoConfig;
pub use run::RunOptions;
pub use sft::SftConfig;
