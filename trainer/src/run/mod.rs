//! What every stage runs on: the loop skeleton ([`session`]: resume,
//! metrics, the NaN guard, checkpoint-when-due, progress), the shared
//! config sections with the device and compute type ([`config`]), AdamW
//! and its schedule ([`optim`]), throughput benchmarks ([`bench`]) and
//! curves ([`plot`]).
//!
//! May import [`crate::model`] and [`crate::io`]; a stage's own code stays
//! in [`crate::sft`] or [`crate::rl`] ([`bench`] measures their steps, so
//! it alone imports them).

pub mod bench;
pub mod config;
pub mod optim;
pub mod overrides;
pub mod plot;
pub mod session;

pub use session::{RunOptions, TrainError};
