//! Supervised fine-tuning: records in the s1 think format ([`data`]: the
//! runtime's prompt, loss masks, truncation, batching, a resumable data
//! order), long reasoning traces from GSM8K ([`longtrace`]), a synthetic
//! task for tests ([`synth`]), the config ([`config`]) and the loop
//! ([`train`]: the masked next-token loss on the shared skeleton).
//!
//! May import [`crate::model`], [`crate::io`] and [`crate::run`].

pub mod config;
pub mod data;
pub mod longtrace;
pub mod synth;
pub mod train;

pub use config::SftConfig;
pub use train::{run_sft, Outcome, StepMetrics};
