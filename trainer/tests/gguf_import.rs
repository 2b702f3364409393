//! The runtime's default model in the trainer: its GGUF vocabulary becomes
//! a `tokenizers` BPE that tokenizes exactly as llama.cpp does, and its
//! dequantized weights make a working Qwen2.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use reckon::engine::{Engine, EngineOptions};
use reckon::gguf::GgufFile;
use reckon::models::{self, ModelSpec};
use reckon_trainer::io::weights;
use reckon_trainer::{KvCache, Qwen2, Tok};

fn model_path() -> PathBuf {
    models::ensure_model(&ModelSpec::default_model(), &models::models_dir(), None, false).expect("the default model can be fetched and verified")
}

fn questions() -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/gsm8k/test-1000.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["question"].as_str().unwrap().to_string()).collect()
}

#[test]
fn gguf_vocabulary_tokenizes_like_llama_cpp_on_all_1000_questions() {
    let path = model_path();
    let tok = Tok::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let engine = Engine::load(&path, EngineOptions::default()).unwrap();
    let qs = questions();
    assert_eq!(qs.len(), 1000);
    let mut mismatches = Vec::new();
    for (i, q) in qs.iter().enumerate() {
        let ours: Vec<i32> = tok.encode_plain(q).unwrap().into_iter().map(|t| t as i32).collect();
        let theirs = engine.tokenize(q, false).unwrap();
        if ours != theirs {
            mismatches.push(i);
        }
    }
    assert!(mismatches.is_empty(), "{} of 1000 questions tokenize differently, first #{}", mismatches.len(), mismatches[0]);
    // Scaffolding: special tokens parse to their ids in both; typed by a
    // user (plain) they stay text.
    let scaffold = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>think\n";
    let ours: Vec<i32> = tok.encode_scaffold(scaffold).unwrap().into_iter().map(|t| t as i32).collect();
    assert_eq!(ours, engine.tokenize(scaffold, true).unwrap());
    let plain = tok.encode_plain("<|im_end|>").unwrap();
    assert!(plain.len() > 1 && !plain.contains(&tok.id("<|im_end|>").unwrap()));
    assert_eq!(tok.decode(&tok.encode_plain(&qs[7]).unwrap()).unwrap(), qs[7], "decoding inverts encoding");
}

#[test]
fn dequantized_default_model_runs_in_the_trainer() {
    let path = model_path();
    let src = weights::load(&path).unwrap();
    let c = &src.config;
    assert_eq!((c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads), (896, 24, 14, 2));
    assert_eq!(c.intermediate_size, 4864);
    // This file carries its own output.weight (a separately quantized head).
    let has_output = GgufFile::open(&path).unwrap().tensors.iter().any(|t| t.name == "output.weight");
    assert_eq!(c.tie_word_embeddings, !has_output);
    assert!((c.rope_theta - 1_000_000.0).abs() < 1.0);
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let model = Qwen2::from_tensors(src.config.clone(), src.tensors, None, &mut rng, &Device::Cpu).unwrap();
    // Greedy continuation with the KV-cached path: real knowledge survives
    // dequantization, naming and RoPE.
    let prompt = src.tok.encode_plain("The capital of France is").unwrap();
    let mut cache = KvCache::default();
    let mut logits = model.forward_cached(&prompt, &mut cache).unwrap();
    let mut out = Vec::new();
    for _ in 0..3 {
        let next = logits.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        out.push(next);
        logits = model.forward_cached(&[next], &mut cache).unwrap();
    }
    let text = src.tok.decode(&out).unwrap();
    assert!(text.contains("Paris"), "continuation: {text:?}");
    // The full forward agrees with the cached path.
    let ids = Tensor::new(prompt.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let att = Tensor::ones((1, prompt.len()), DType::U8, &Device::Cpu).unwrap();
    let full = model.forward(&ids, &att, None).unwrap();
    let last = full.squeeze(0).unwrap().get(prompt.len() - 1).unwrap().argmax(0).unwrap().to_scalar::<u32>().unwrap();
    assert_eq!(last, out[0]);
}
