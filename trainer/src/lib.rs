//! Reckon's trainer: fine-tune small Qwen2-architecture models so that,
//! under budget forcing, they reason well in few tokens.
//!
//! Layers: [`model`] (a training-mode Qwen2 with LoRA and a KV-cached
//! sampling path), [`weights`] and [`tokenizer`] (HF safetensors, GGUF with
//! its vocabulary), [`data`] (SFT records in the s1 format), [`longtrace`]
//! (long reasoning traces from GSM8K solutions), [`optim`]
//! (AdamW, schedule, clipping), [`checkpoint`] (verified, resumable),
//! [`train`] (the SFT loop), [`bench`] (throughput and MFU), [`plot`].

pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod engine_rollout;
pub mod export;
pub mod kernels;
pub mod grpo;
pub mod longtrace;
pub mod model;
pub mod objective;
pub mod optim;
pub mod plot;
pub mod rewards;
pub mod rollout;
pub mod synth;
pub mod tokenizer;
pub mod train;
pub mod weights;

pub use config::SftConfig;
pub use model::{KvCache, LoraConfig, Qwen2, Qwen2Config};
pub use tokenizer::Tok;
