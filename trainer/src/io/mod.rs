//! Files in and out: Hugging Face safetensors and GGUF weights
//! ([`weights`]), the tokenizer with its vocabulary ([`tokenizer`]),
//! verified resumable checkpoints ([`checkpoint`]), GGUF export and
//! import ([`export`]), and JSON Lines ([`jsonl`]).
//!
//! May import [`crate::model`] (the shapes and names it stores); nothing
//! of the stages.

pub mod checkpoint;
pub mod export;
pub mod jsonl;
pub mod tokenizer;
pub mod weights;
