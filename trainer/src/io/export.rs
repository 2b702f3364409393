//! Export to GGUF for devices, and import the other way.
//!
//! A float GGUF is written first with complete metadata (architecture and
//! every `qwen2.*` hyperparameter llama.cpp reads, the tokenizer padded to
//! the embedding rows, the chat template, provenance), then llama.cpp's own
//! quantizer turns it into the requested type. Files are written to a
//! temporary name in the destination directory and renamed only when
//! complete: a failure (a full disk) leaves nothing half-written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Tensor};
use reckon::gguf::{self, TensorData, Value};
use serde::Serialize;

use crate::model::Qwen2Config;
use crate::io::tokenizer::{Tok, TokenKind};
use crate::io::checkpoint::Stage;
use crate::io::weights::{self, hf_to_gguf};

/// The chat template of models trained here: ChatML whose generation
/// prompt opens s1 thinking, so the runtime detects the s1 format.
pub const S1_CHAT_TEMPLATE: &str = "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<|im_start|>think\n{% endif %}";

/// What to write.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Destination `.gguf`.
    pub out: PathBuf,
    /// A type name of [`reckon::engine::quantize::FILE_TYPES`].
    pub file_type: String,
    /// Overwrite an existing file.
    pub force: bool,
    /// Quantizer threads.
    pub threads: u32,
    /// `general.name` (default: the output file's stem).
    pub name: Option<String>,
    /// `general.license`.
    pub license: String,
}

/// What was written.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    /// The file.
    pub path: PathBuf,
    /// Its type name.
    pub file_type: String,
    /// Its size.
    pub bytes: u64,
    /// Seconds from loading the checkpoint to the renamed file.
    pub seconds: f64,
    /// The metadata written into the float GGUF, by key (JSON values).
    pub metadata: BTreeMap<String, serde_json::Value>,
}

/// Provenance written into `general.*`.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    /// `general.name`.
    pub name: String,
    /// The base model (`general.base_model.0.name`).
    pub base_model: String,
    /// `general.description`: how it was trained.
    pub recipe: String,
    /// `general.license`.
    pub license: String,
}

/// GGUF metadata for a Qwen2 model, in write order.
pub fn metadata(config: &Qwen2Config, tok: &Tok, chat_template: &str, prov: &Provenance, file_type: u32) -> Result<Vec<(String, Value)>> {
    let u = |v: usize| Value::U32(v as u32);
    let mut m: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("qwen2".into())),
        ("general.type".into(), Value::String("model".into())),
        ("general.name".into(), Value::String(prov.name.clone())),
        ("general.description".into(), Value::String(prov.recipe.clone())),
        ("general.license".into(), Value::String(prov.license.clone())),
        ("general.base_model.count".into(), Value::U32(1)),
        ("general.base_model.0.name".into(), Value::String(prov.base_model.clone())),
        ("general.file_type".into(), Value::U32(file_type)),
        ("qwen2.context_length".into(), u(config.max_position_embeddings)),
        ("qwen2.embedding_length".into(), u(config.hidden_size)),
        ("qwen2.feed_forward_length".into(), u(config.intermediate_size)),
        ("qwen2.block_count".into(), u(config.num_hidden_layers)),
        ("qwen2.attention.head_count".into(), u(config.num_attention_heads)),
        ("qwen2.attention.head_count_kv".into(), u(config.num_key_value_heads)),
        ("qwen2.rope.freq_base".into(), Value::F32(config.rope_theta as f32)),
        ("qwen2.attention.layer_norm_rms_epsilon".into(), Value::F32(config.rms_norm_eps as f32)),
    ];
    let table = tok.id_table();
    ensure!(
        table.len() <= config.vocab_size,
        "the tokenizer has {} tokens but the embedding only {} rows",
        table.len(),
        config.vocab_size
    );
    let mut tokens = Vec::with_capacity(config.vocab_size);
    let mut types = Vec::with_capacity(config.vocab_size);
    for i in 0..config.vocab_size {
        // Embedding rows past the tokenizer are padding, named and typed as
        // convert_hf_to_gguf.py does (UNUSED). A vocabulary read from such a
        // GGUF (`Tok::from_gguf`) holds those names as ordinary entries:
        // they are padding again here, so an imported model exports the
        // vocabulary it came with, token types included.
        let pad = format!("[PAD{i}]");
        match table.get(i).cloned().flatten() {
            Some((t, kind)) if !(kind == TokenKind::Normal && t == pad) => {
                tokens.push(Value::String(t));
                types.push(Value::I32(match kind {
                    TokenKind::Normal => 1,
                    TokenKind::Special => 3,
                    TokenKind::UserDefined => 4,
                }));
            }
            _ => {
                tokens.push(Value::String(pad));
                types.push(Value::I32(5));
            }
        }
    }
    let id = |t: &str| tok.id(t).with_context(|| format!("tokenizer lacks {t}"));
    m.extend([
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("qwen2".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), Value::Array(tok.merges()?.into_iter().map(Value::String).collect())),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(id("<|im_end|>")?)),
        ("tokenizer.ggml.padding_token_id".into(), Value::U32(id("<|endoftext|>")?)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(id("<|endoftext|>")?)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ("tokenizer.chat_template".into(), Value::String(chat_template.to_string())),
    ]);
    Ok(m)
}

/// The weights as F32 GGUF tensors (ggml dimension order), tied models
/// without `output.weight`, layer by layer.
pub fn tensors(config: &Qwen2Config, weights: &BTreeMap<String, Tensor>) -> Result<Vec<TensorData>> {
    let mut out = Vec::new();
    for (name, shape) in config.weight_shapes() {
        let t = weights.get(&name).with_context(|| format!("checkpoint lacks tensor '{name}'"))?;
        ensure!(t.dims() == shape.as_slice(), "tensor '{name}' has shape {:?}, the config needs {:?}", t.dims(), shape);
        let data: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        out.push(TensorData {
            name: hf_to_gguf(&name).with_context(|| format!("no GGUF name for '{name}'"))?,
            dims: shape.iter().rev().map(|&d| d as u64).collect(),
            ggml_type: 0,
            data: bytes,
        });
    }
    Ok(out)
}

fn json_of(v: &Value) -> serde_json::Value {
    match v {
        Value::String(s) => serde_json::json!(s),
        Value::Bool(b) => serde_json::json!(b),
        Value::F32(x) => serde_json::json!(x),
        Value::F64(x) => serde_json::json!(x),
        Value::Array(a) => serde_json::Value::Array(a.iter().map(json_of).collect()),
        other => serde_json::json!(other.as_u64().map(|x| x as i64).or_else(|| other.as_f64().map(|x| x as i64))),
    }
}

/// The output's folder, created if missing (temporaries go there too, so
/// the final rename never crosses file systems).
fn out_dir(opts: &ExportOptions) -> Result<&Path> {
    let dir = opts.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

fn refuse_existing(opts: &ExportOptions) -> Result<()> {
    if opts.out.exists() && !opts.force {
        bail!("{} already exists (pass --force to overwrite)", opts.out.display());
    }
    Ok(())
}

/// `general.*` provenance: the base the state names, and how it was trained.
fn provenance(source: &Path, state: Option<&crate::io::checkpoint::TrainState>, opts: &ExportOptions, merged: bool) -> Provenance {
    let trained = state.filter(|s| s.stage != Stage::Import);
    Provenance {
        name: opts.name.clone().unwrap_or_else(|| opts.out.file_stem().map_or("model".into(), |s| s.to_string_lossy().to_string())),
        base_model: state.map_or_else(|| source.display().to_string(), |s| s.source.clone()),
        recipe: match trained {
            Some(s) => format!(
                "Reckon {} for {} steps ({} tokens){}; s1 think format",
                s.stage.name(),
                s.step,
                s.tokens_seen,
                s.lora.as_ref().map_or(String::new(), |l| format!(
                    ", LoRA r={} alpha={} on {:?}{}",
                    l.rank,
                    l.alpha,
                    l.targets,
                    if merged { ", merged" } else { "" }
                ))
            ),
            None => "imported into Reckon's trainer, not trained".into(),
        },
        license: opts.license.clone(),
    }
}

/// Export a model source (a checkpoint directory, HF directory or GGUF).
pub fn export(source: &Path, opts: &ExportOptions) -> Result<ExportReport> {
    let t0 = Instant::now();
    let ftype = reckon::engine::quantize::file_type(&opts.file_type)?;
    refuse_existing(opts)?;
    let src = weights::load(source)?;
    // weights::load verified the checkpoint; read its state without loading
    // (and hashing) every tensor a second time.
    let state = if source.join("manifest.json").is_file() { Some(crate::io::checkpoint::read_state(source)?) } else { None };
    let trained = state.as_ref().is_some_and(|s| s.stage != Stage::Import);
    let template = match (&src.chat_template, trained) {
        (Some(t), false) => t.clone(),
        _ => S1_CHAT_TEMPLATE.to_string(),
    };
    let prov = provenance(source, state.as_ref(), opts, true);
    // The float file is ALL_F32; llama.cpp's quantizer sets the final type.
    let meta = metadata(&src.config, &src.tok, &template, &prov, 0)?;
    let data = tensors(&src.config, &src.tensors)?;
    drop(src);
    let dir = out_dir(opts)?;
    if ftype == reckon::engine::quantize::file_type("f32")? {
        gguf::write_file(&opts.out, &meta, &data).with_context(|| format!("writing {}", opts.out.display()))?;
    } else {
        let mut float = tempfile::Builder::new().prefix(".reckon-export-f32-").suffix(".gguf").tempfile_in(dir)?;
        gguf::write(float.as_file_mut(), &meta, &data).context("writing the float GGUF")?;
        float.as_file().sync_all()?;
        drop(data);
        let quant = tempfile::Builder::new().prefix(".reckon-export-").suffix(".gguf").tempfile_in(dir)?;
        reckon::engine::quantize::quantize(float.path(), quant.path(), ftype, opts.threads)?;
        // Check what llama.cpp wrote before it replaces anything.
        gguf::GgufFile::open(quant.path()).context("the quantized file does not read back")?;
        quant.persist(&opts.out).map_err(|e| e.error).with_context(|| format!("renaming into {}", opts.out.display()))?;
    }
    report(opts, t0, &meta)
}

fn report(opts: &ExportOptions, t0: Instant, meta: &[(String, Value)]) -> Result<ExportReport> {
    Ok(ExportReport {
        path: opts.out.clone(),
        file_type: opts.file_type.to_ascii_lowercase(),
        bytes: std::fs::metadata(&opts.out)?.len(),
        seconds: t0.elapsed().as_secs_f64(),
        metadata: meta.iter().map(|(k, v)| (k.clone(), json_of(v))).collect(),
    })
}

/// Export only the LoRA adapters of a checkpoint trained with `[lora]`, as
/// a GGUF LoRA adapter that llama.cpp applies at load time on top of the
/// base the run started from (`reckon --adapter`, `llama-cli --lora`): a
/// phone downloads megabytes instead of the whole model. `file_type` is
/// `f32` or `f16`. The adapter carries the s1 chat template it was trained
/// with, which the runtime prefers over the base model's.
pub fn export_adapter(source: &Path, opts: &ExportOptions) -> Result<ExportReport> {
    let t0 = Instant::now();
    let dtype = match opts.file_type.to_ascii_lowercase().as_str() {
        "f32" => DType::F32,
        "f16" => DType::F16,
        other => bail!("a LoRA adapter is written as f32 or f16, not '{other}'"),
    };
    refuse_existing(opts)?;
    ensure!(
        source.join("manifest.json").is_file(),
        "{} is not a trainer checkpoint (an adapter comes from a checkpoint trained with [lora])",
        source.display()
    );
    let ck = crate::io::checkpoint::load_stored(source)?;
    let lora = ck.state.lora.clone().with_context(|| {
        format!("checkpoint {} was trained without [lora], so it has no adapter: export the whole model instead", source.display())
    })?;
    let scale = lora.alpha / lora.rank as f64;
    let pairs = adapter_pairs(&ck.model_config, &ck.tensors, lora.rank, scale)?;
    ensure!(!pairs.is_empty(), "checkpoint {} names LoRA settings but holds no adapter tensors", source.display());
    let prov = provenance(source, Some(&ck.state), opts, false);
    drop(ck);
    out_dir(opts)?;
    let meta = write_adapter(&opts.out, &pairs, dtype == DType::F16, &prov)?;
    report(opts, t0, &meta)
}

/// One adapted matrix: its HF weight name, A `[r, in]`, and B `[out, r]`
/// already multiplied by the adapter's scale α/r (so pairs of different
/// ranks and scales concatenate into one adapter, written with α = r).
pub type AdapterPair = (String, Tensor, Tensor);

/// The LoRA pairs among `tensors` (`….lora_A.weight` / `lora_B`), checked
/// against `config`'s shapes, B scaled by `scale`.
pub fn adapter_pairs(config: &Qwen2Config, tensors: &BTreeMap<String, Tensor>, rank: usize, scale: f64) -> Result<Vec<AdapterPair>> {
    let mut out = Vec::new();
    for (name, shape) in config.weight_shapes() {
        let (a_name, b_name) = crate::model::lora_names(&name);
        let (Some(a), Some(b)) = (tensors.get(&a_name), tensors.get(&b_name)) else { continue };
        let (out_dim, inp) = (shape[0], shape[1]);
        ensure!(a.dims() == [rank, inp], "adapter '{a_name}' has shape {:?}, expected [{rank}, {inp}]", a.dims());
        ensure!(b.dims() == [out_dim, rank], "adapter '{b_name}' has shape {:?}, expected [{out_dim}, {rank}]", b.dims());
        out.push((name, a.to_dtype(DType::F32)?, (b.to_dtype(DType::F32)? * scale)?));
    }
    Ok(out)
}

/// Two adapters as one: W + B₁A₁ + B₂A₂ = W + [B₁ B₂]·[A₁; A₂] (ranks add),
/// for matrices either adapts.
pub fn concat_adapters(first: &[AdapterPair], second: &[AdapterPair]) -> Result<Vec<AdapterPair>> {
    let mut out: Vec<AdapterPair> = Vec::new();
    let names: std::collections::BTreeSet<&String> = first.iter().chain(second).map(|p| &p.0).collect();
    for name in names {
        let parts: Vec<&AdapterPair> = first.iter().chain(second).filter(|p| &p.0 == name).collect();
        let a = Tensor::cat(&parts.iter().map(|p| &p.1).collect::<Vec<_>>(), 0)?;
        let b = Tensor::cat(&parts.iter().map(|p| &p.2).collect::<Vec<_>>(), 1)?;
        out.push((name.clone(), a, b));
    }
    Ok(out)
}

/// Write `pairs` as a GGUF LoRA adapter in llama.cpp's layout (f16 or f32)
/// with α = rank (B carries the scale); returns its metadata.
pub fn write_adapter(out: &Path, pairs: &[AdapterPair], f16: bool, prov: &Provenance) -> Result<Vec<(String, Value)>> {
    let (ggml_type, dtype) = if f16 { (1u32, DType::F16) } else { (0u32, DType::F32) };
    let mut data = Vec::new();
    let mut rank = 0;
    for (name, a, b) in pairs {
        let base = hf_to_gguf(name).with_context(|| format!("no GGUF name for '{name}'"))?;
        rank = rank.max(a.dim(0)?);
        // llama.cpp's layout: lora_a is ne = [in, r], lora_b is ne = [r, out]
        // (PyTorch's A: r × in and B: out × r, dimensions reversed).
        for (suffix, t) in [("lora_a", a), ("lora_b", b)] {
            let dims = t.dims().iter().rev().map(|&d| d as u64).collect();
            let t = t.to_dtype(dtype)?.flatten_all()?;
            let bytes: Vec<u8> = match dtype {
                DType::F16 => t.to_vec1::<half::f16>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
                _ => t.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
            };
            data.push(TensorData { name: format!("{base}.{suffix}"), dims, ggml_type, data: bytes });
        }
    }
    ensure!(rank > 0 && pairs.iter().all(|p| p.1.dim(0).ok() == Some(rank)), "an adapter's matrices must share one rank");
    let meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("qwen2".into())),
        ("general.type".into(), Value::String("adapter".into())),
        ("adapter.type".into(), Value::String("lora".into())),
        // B already carries α/r: llama.cpp's scale α/r must be 1.
        ("adapter.lora.alpha".into(), Value::F32(rank as f32)),
        ("general.name".into(), Value::String(prov.name.clone())),
        ("general.description".into(), Value::String(prov.recipe.clone())),
        ("general.license".into(), Value::String(prov.license.clone())),
        ("general.base_model.count".into(), Value::U32(1)),
        ("general.base_model.0.name".into(), Value::String(prov.base_model.clone())),
        ("tokenizer.chat_template".into(), Value::String(S1_CHAT_TEMPLATE.into())),
    ];
    gguf::write_file(out, &meta, &data).with_context(|| format!("writing {}", out.display()))?;
    Ok(meta)
}

/// Import a model (a GGUF the runtime uses, or an HF directory) as a step-0
/// trainer checkpoint under `out`.
pub fn import(source: &Path, out: &Path) -> Result<PathBuf> {
    let src = weights::load(source)?;
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let model = crate::model::Qwen2::from_tensors(src.config.clone(), src.tensors, None, &mut rng, &candle_core::Device::Cpu)?;
    let mut state = crate::io::checkpoint::TrainState::fresh(Stage::Import, None, serde_json::Value::Null, &source.display().to_string(), &rng);
    state.chat_template = src.chat_template;
    crate::io::checkpoint::save(out, &model.config, &model.tensors(), &BTreeMap::new(), &state, &src.tok)
}
