//! Shared helpers for the trainer's tests: tiny models from the project's
//! own arithmetic problems.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::Device;
use reckon_trainer::sft::data::SftRecord;
use reckon_trainer::sft::synth;
use reckon_trainer::sft::train::tiny_model;
use reckon_trainer::{Qwen2, Tok};

/// A tiny random model and its tokenizer trained on arithmetic problems.
pub fn tiny(seed: u64) -> (Qwen2, Tok) {
    let recs = synth::arithmetic(200, 1, true);
    let texts: Vec<String> = recs.iter().flat_map(|r| [r.question.clone(), r.thinking.clone()]).collect();
    tiny_model(&texts, 400, seed, &Device::Cpu).expect("tiny model")
}

/// Write records as JSONL.
pub fn write_sft(path: &Path, recs: &[SftRecord]) {
    let text: String = recs.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
    std::fs::write(path, text).unwrap();
}

/// A tiny-model SFT config file in `dir` over `data`, with extra TOML.
pub fn sft_config(dir: &Path, data: &Path, extra: &str) -> PathBuf {
    let path = dir.join("sft.toml");
    let text = format!(
        "[model]\nsource = \"tiny\"\n\n[data]\ntrain = \"{}\"\nmax_seq_len = 256\n\n{extra}",
        data.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}
