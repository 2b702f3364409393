//! Reinforcement learning (GRPO): budget-forced rollouts on the trainer's
//! own sampler ([`rollout`]) or on the runtime's batched engine
//! ([`engine`]), verifiable rewards with length terms ([`rewards`]), the
//! clipped objective with truncated importance sampling ([`objective`]),
//! the config ([`config`]), the loop ([`grpo`], on the shared skeleton) and
//! the choice of problems to train on ([`curriculum`]).
//!
//! May import [`crate::model`], [`crate::io`], [`crate::run`] and the s1
//! prompt of [`crate::sft::data`]; the budget-forcing controller, answer
//! checker and engine are the runtime's (`reckon`), not copies.

pub mod config;
pub mod curriculum;
pub mod engine;
pub mod grpo;
pub mod objective;
pub mod rewards;
pub mod rollout;

pub use config::GrpoConfig;
pub use grpo::{run_grpo, GrpoMetrics};
