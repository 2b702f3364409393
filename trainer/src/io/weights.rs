//! Loading base models: a Hugging Face directory (`config.json`,
//! `model.safetensors` or sharded with `model.safetensors.index.json`,
//! `tokenizer.json`), or a GGUF file, dequantized, with its vocabulary.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use reckon::gguf::GgufFile;

use crate::model::Qwen2Config;
use crate::io::tokenizer::Tok;

/// A base model read from disk.
pub struct Source {
    /// Hyperparameters.
    pub config: Qwen2Config,
    /// Weights by HF name, fp32 on the CPU.
    pub tensors: BTreeMap<String, Tensor>,
    /// Its tokenizer.
    pub tok: Tok,
    /// Its chat template, when the source has one.
    pub chat_template: Option<String>,
}

/// Load a model from a trainer checkpoint directory (LoRA merged), a
/// Hugging Face directory, or a `.gguf` file.
pub fn load(path: &Path) -> Result<Source> {
    if path.join("manifest.json").is_file() {
        // A trainer checkpoint: verified, adapters merged.
        let ck = crate::io::checkpoint::load(path)?;
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
        let mut model = crate::model::Qwen2::from_tensors(ck.model_config.clone(), ck.tensors, ck.state.lora.clone(), &mut rng, &Device::Cpu)?;
        model.merge_lora()?;
        return Ok(Source { config: ck.model_config, tensors: model.tensors(), tok: ck.tok, chat_template: ck.state.chat_template });
    }
    if path.is_dir() {
        load_hf_dir(path)
    } else if path.is_file() {
        load_gguf(path)
    } else {
        bail!("model '{}' does not exist (give a Hugging Face model directory or a .gguf file)", path.display())
    }
}

/// `config.json` + safetensors (single or sharded) + `tokenizer.json`.
pub fn load_hf_dir(dir: &Path) -> Result<Source> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).with_context(|| format!("cannot read {}", cfg_path.display()))?;
    let config: Qwen2Config = serde_json::from_str(&text).with_context(|| format!("{} is not a Qwen2 config.json", cfg_path.display()))?;
    let files = safetensors_files(dir)?;
    let mut tensors = BTreeMap::new();
    for f in &files {
        let loaded = candle_core::safetensors::load(f, &Device::Cpu).with_context(|| format!("cannot read weights {}", f.display()))?;
        for (name, t) in loaded {
            tensors.insert(name, t.to_dtype(DType::F32)?);
        }
    }
    let tok = Tok::from_file(&dir.join("tokenizer.json"))?;
    let chat_template = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["chat_template"].as_str().map(str::to_string));
    Ok(Source { config, tensors, tok, chat_template })
}

fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index)?)
            .with_context(|| format!("{} is not valid JSON", index.display()))?;
        let map = json["weight_map"].as_object().with_context(|| format!("{} has no weight_map", index.display()))?;
        let mut shards: Vec<String> = map.values().filter_map(|v| v.as_str().map(str::to_string)).collect();
        shards.sort();
        shards.dedup();
        let paths: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
        for p in &paths {
            ensure!(p.is_file(), "shard {} named in the index is missing", p.display());
        }
        return Ok(paths);
    }
    let single = dir.join("model.safetensors");
    ensure!(single.is_file(), "{} has neither model.safetensors nor model.safetensors.index.json", dir.display());
    Ok(vec![single])
}

/// Hugging Face names to llama.cpp tensor names.
pub fn hf_to_gguf(name: &str) -> Option<String> {
    match name {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let g = match tail {
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}"))
}

/// llama.cpp tensor names to Hugging Face names (the inverse of its
/// `convert_hf_to_gguf.py` table for Qwen2).
pub fn gguf_to_hf(name: &str) -> Option<String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match tail {
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// A Qwen2 GGUF, dequantized to fp32, with a tokenizer from its vocabulary.
pub fn load_gguf(path: &Path) -> Result<Source> {
    // Our own checked reader first: a corrupt file is an error, not a crash.
    let checked = GgufFile::open(path).with_context(|| format!("{} is not a valid GGUF file", path.display()))?;
    let arch = checked.architecture().unwrap_or("");
    ensure!(arch == "qwen2", "{}: architecture '{arch}' (the trainer supports qwen2)", path.display());
    let u = |k: &str| -> Result<usize> {
        checked.get_u64(&format!("qwen2.{k}")).map(|v| v as usize).with_context(|| format!("GGUF lacks qwen2.{k}"))
    };
    let f = |k: &str, d: f64| checked.get(&format!("qwen2.{k}")).and_then(|v| v.as_f64()).unwrap_or(d);
    let mut file = File::open(path)?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).with_context(|| format!("cannot read {}", path.display()))?;
    let mut tensors = BTreeMap::new();
    for name in content.tensor_infos.keys() {
        let hf = gguf_to_hf(name).with_context(|| format!("unknown GGUF tensor '{name}' for qwen2"))?;
        let q = content.tensor(&mut file, name, &Device::Cpu)?;
        tensors.insert(hf, q.dequantize(&Device::Cpu)?.to_dtype(DType::F32)?);
    }
    let embd = tensors.get("model.embed_tokens.weight").context("GGUF has no token_embd.weight")?;
    let vocab_size = embd.dim(0)?;
    let config = Qwen2Config {
        vocab_size,
        hidden_size: u("embedding_length")?,
        intermediate_size: u("feed_forward_length")?,
        num_hidden_layers: u("block_count")?,
        num_attention_heads: u("attention.head_count")?,
        num_key_value_heads: u("attention.head_count_kv")?,
        max_position_embeddings: u("context_length")?,
        rope_theta: f("rope.freq_base", 1_000_000.0),
        rms_norm_eps: f("attention.layer_norm_rms_epsilon", 1e-6),
        tie_word_embeddings: !tensors.contains_key("lm_head.weight"),
    };
    let tok = Tok::from_gguf(&checked)?;
    let chat_template = checked.get_str("tokenizer.chat_template").map(str::to_string);
    Ok(Source { config, tensors, tok, chat_template })
}

/// Write a Hugging Face directory: `config.json`, `tokenizer.json`, and the
/// weights in `shards` safetensors files (with an index when more than one).
pub fn save_hf_dir(dir: &Path, config: &Qwen2Config, tensors: &BTreeMap<String, Tensor>, tok: &Tok, shards: usize) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut cfg = serde_json::to_value(config)?;
    cfg["architectures"] = serde_json::json!(["Qwen2ForCausalLM"]);
    cfg["model_type"] = serde_json::json!("qwen2");
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&cfg)?)?;
    tok.save(&dir.join("tokenizer.json"))?;
    let names: Vec<&String> = tensors.keys().collect();
    let shards = shards.clamp(1, names.len().max(1));
    if shards == 1 {
        let map: std::collections::HashMap<&String, Tensor> = tensors.iter().map(|(k, v)| (k, v.clone())).collect();
        candle_core::safetensors::save(&map, dir.join("model.safetensors"))?;
        return Ok(());
    }
    let per = names.len().div_ceil(shards);
    let mut weight_map = serde_json::Map::new();
    for (i, chunk) in names.chunks(per).enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards);
        let map: std::collections::HashMap<&String, Tensor> = chunk.iter().map(|k| (*k, tensors[*k].clone())).collect();
        candle_core::safetensors::save(&map, dir.join(&file))?;
        for k in chunk {
            weight_map.insert(k.to_string(), serde_json::Value::String(file.clone()));
        }
    }
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_vec_pretty(&serde_json::json!({ "metadata": {}, "weight_map": weight_map }))?,
    )?;
    Ok(())
}
