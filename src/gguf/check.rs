//! What llama.cpp's loaders assert on or trust, checked before llama.cpp
//! sees a model file.
//!
//! [`GgufFile::open`](super::GgufFile::open) proves a file is structurally
//! sound. This module checks what its *values* must satisfy for llama.cpp
//! to load it and run it without aborting the process: a `GGML_ASSERT`
//! kills an app, and a C++ exception thrown while tokenizing (after the
//! load) cannot cross the FFI boundary either. Each check names the
//! llama.cpp path it stands in front of (llama-vocab.cpp, llama-model.cpp,
//! llama-model-loader.cpp, gguf.cpp, ggml.c):
//!
//! | check | llama.cpp path it prevents |
//! |---|---|
//! | `tokenizer.ggml.tokens` is a non-empty string array | `gguf_get_arr_str` asserts a string array; "cannot find tokenizer vocab" |
//! | tokens unique | `GGML_ASSERT(id_to_token.size() == token_to_id.size())` (llama-vocab.cpp) |
//! | `scores` f32 and `token_type` i32, each one per token | `gguf_get_arr_data` asserts a non-string array, then `scores[i]`/`toktypes[i]` are read for every token: an out-of-bounds read when shorter |
//! | `merges` a string array of "left right" pairs of known tokens (gpt2) | `gguf_get_arr_str` asserts strings; "cannot find tokenizer merges" |
//! | every byte has a token (gpt2: its byte-level character; llama: `<0xXX>` or the byte) | `byte_to_token` uses `token_to_id.at()`, which throws while tokenizing (an abort across FFI); gpt2's "\n" assert (`model vocab missing newline token`) |
//! | special-token ids in range, and the defaults llama.cpp falls back to when absent | `id_to_token.at(id)` in `token_get_attr` throws at run time |
//! | a known `tokenizer.ggml.model` | "unknown tokenizer" |
//! | hyper-parameters: integer counts, `context_length`, `embedding_length`, `block_count` (1..=512) non-zero; head counts (scalar or per layer) > 0 with `n_head % n_head_kv == 0`; the head width divides the embedding when no `key_length` is given; `rope.dimension_count` even and at most the head width; f32 epsilons and rope bases finite and positive | `LLAMA_MAX_LAYERS`; `ggml_can_mul_mat` (GQA broadcast) and `ggml_reshape_3d` asserts while building the graph; `ggml_rope` asserts `n_dims % 2 == 0` and `n_dims <= ne0`; `get_key` type mismatches |
//! | tensor shapes of the llama-style layout (embedding, norms, q/k/v/o, ffn, output) against those hyper-parameters and the vocabulary; no block beyond `block_count` | `create_tensor`'s shape check (a clear error instead of llama.cpp's), and graph asserts for shapes it does not check |
//!
//! Architectures with other layouts get the vocabulary and hyper-parameter
//! checks; tensor names this module does not know are left to llama.cpp.

use std::collections::HashSet;

use super::{GgufFile, TensorData, Value};

/// A model file that would make llama.cpp abort, or load something wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct Unsound {
    /// The metadata key or tensor at fault.
    pub key: String,
    /// What is wrong with it.
    pub problem: String,
}

fn unsound(key: impl Into<String>, problem: impl Into<String>) -> Unsound {
    Unsound { key: key.into(), problem: problem.into() }
}

/// The defaults llama.cpp uses for special tokens a file does not name, per
/// tokenizer model (llama-vocab.cpp, `load`).
fn default_special_ids(model: &str) -> &'static [(&'static str, u64)] {
    match model {
        "llama" => &[("bos", 1), ("eos", 2), ("unknown", 0)],
        "gpt2" => &[("bos", 11), ("eos", 11)],
        "bert" => &[("bos", 101), ("unknown", 100), ("seperator", 102), ("padding", 0), ("mask", 103)],
        "t5" => &[("eos", 1), ("unknown", 2), ("padding", 0)],
        _ => &[],
    }
}

const TOKENIZER_MODELS: &[&str] = &["no", "none", "llama", "bert", "gpt2", "t5", "rwkv", "ugm", "plamo2"];

/// Check everything llama.cpp will trust in a model file (not an adapter).
pub fn model(file: &GgufFile) -> Result<(), Unsound> {
    let arch = match file.get("general.architecture") {
        Some(Value::String(a)) => a.clone(),
        Some(v) => return Err(unsound("general.architecture", format!("is a {}, not a string", type_name(v)))),
        None => return Err(unsound("general.architecture", "is missing")),
    };
    let n_vocab = vocabulary(file)?;
    let hp = hyper_parameters(file, &arch)?;
    tensors(file, &arch, &hp, n_vocab)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::U8(_) => "u8",
        Value::I8(_) => "i8",
        Value::U16(_) => "u16",
        Value::I16(_) => "i16",
        Value::U32(_) => "u32",
        Value::I32(_) => "i32",
        Value::F32(_) => "f32",
        Value::Bool(_) => "bool",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::U64(_) => "u64",
        Value::I64(_) => "i64",
        Value::F64(_) => "f64",
    }
}

/// An array whose every element has the type `want` (by name).
fn typed_array<'a>(file: &'a GgufFile, key: &str, want: &str) -> Result<Option<&'a [Value]>, Unsound> {
    match file.get(key) {
        None => Ok(None),
        Some(Value::Array(items)) => match items.first() {
            Some(first) if type_name(first) != want => Err(unsound(key, format!("is an array of {}, llama.cpp reads it as {want}", type_name(first)))),
            _ => Ok(Some(items)),
        },
        Some(v) => Err(unsound(key, format!("is a {}, not an array of {want}", type_name(v)))),
    }
}

/// The 256 characters GPT-2's byte-level BPE writes bytes as.
fn gpt2_byte_chars() -> Vec<char> {
    let mut out = Vec::with_capacity(256);
    let mut extra = 0u32;
    for b in 0u32..256 {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        out.push(if printable {
            char::from_u32(b).unwrap_or('\0')
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap_or('\0')
        });
    }
    out
}

/// The tokenizer arrays and special ids; returns the vocabulary size.
fn vocabulary(file: &GgufFile) -> Result<usize, Unsound> {
    const TOKENS: &str = "tokenizer.ggml.tokens";
    let tokens: Vec<&str> = match typed_array(file, TOKENS, "string")? {
        None => return Err(unsound(TOKENS, "is missing: the file has no vocabulary")),
        Some([]) => return Err(unsound(TOKENS, "is empty")),
        Some(items) => items.iter().map(|v| v.as_str().unwrap_or_default()).collect(),
    };
    let n = tokens.len();
    let mut seen: HashSet<&str> = HashSet::with_capacity(n);
    for (id, t) in tokens.iter().enumerate() {
        if !seen.insert(t) {
            let first = tokens.iter().position(|x| x == t).unwrap_or(0);
            return Err(unsound(TOKENS, format!("tokens {first} and {id} are both {t:?}: every token must be unique")));
        }
    }
    for (key, want) in [("tokenizer.ggml.scores", "f32"), ("tokenizer.ggml.token_type", "i32")] {
        if let Some(items) = typed_array(file, key, want)? {
            if items.len() != n {
                return Err(unsound(key, format!("has {} entries for {n} tokens", items.len())));
            }
        }
    }
    let model = match file.get("tokenizer.ggml.model") {
        None => "llama",
        Some(Value::String(m)) => m.as_str(),
        Some(v) => return Err(unsound("tokenizer.ggml.model", format!("is a {}, not a string", type_name(v)))),
    };
    if !TOKENIZER_MODELS.contains(&model) {
        return Err(unsound("tokenizer.ggml.model", format!("'{model}' is not a tokenizer llama.cpp knows ({TOKENIZER_MODELS:?})")));
    }
    match model {
        "gpt2" => {
            const MERGES: &str = "tokenizer.ggml.merges";
            let merges = typed_array(file, MERGES, "string")?.ok_or_else(|| unsound(MERGES, "is missing (a gpt2 tokenizer needs its merges)"))?;
            for (i, m) in merges.iter().enumerate() {
                let m = m.as_str().unwrap_or_default();
                let pair = m.char_indices().skip(1).find(|&(_, c)| c == ' ').map(|(at, _)| (&m[..at], &m[at + 1..]));
                match pair {
                    Some((l, r)) if !l.is_empty() && !r.is_empty() => {
                        for part in [l, r] {
                            if !seen.contains(part) {
                                return Err(unsound(MERGES, format!("merge {i} ({m:?}) names {part:?}, which is not a token")));
                            }
                        }
                    }
                    _ => return Err(unsound(MERGES, format!("merge {i} ({m:?}) is not two tokens separated by a space"))),
                }
            }
            for (b, c) in gpt2_byte_chars().into_iter().enumerate() {
                if !seen.contains(c.to_string().as_str()) {
                    return Err(unsound(TOKENS, format!("byte 0x{b:02X} has no token ({c:?}): llama.cpp could not tokenize text with that byte")));
                }
            }
        }
        "llama" => {
            for b in 0u8..=255 {
                let hex = format!("<0x{b:02X}>");
                let raw = (b as char).to_string();
                if !seen.contains(hex.as_str()) && !(b.is_ascii() && seen.contains(raw.as_str())) {
                    return Err(unsound(TOKENS, format!("byte 0x{b:02X} has no token ({hex}): llama.cpp could not tokenize text with that byte")));
                }
            }
        }
        _ => {}
    }
    // Special ids: those named must exist; those not named fall back to
    // llama.cpp's defaults, which must exist too.
    for (key, value) in &file.metadata {
        let Some(name) = key.strip_prefix("tokenizer.ggml.").and_then(|k| k.strip_suffix("_token_id")) else { continue };
        let id = match value {
            Value::U32(v) => u64::from(*v),
            Value::I32(v) if *v < 0 => continue, // -1: none
            v => v.as_u64().ok_or_else(|| unsound(key.as_str(), format!("is a {}, not a token id", type_name(v))))?,
        };
        if id >= n as u64 {
            return Err(unsound(key.as_str(), format!("{name} token id {id} is beyond the {n}-token vocabulary")));
        }
    }
    for (name, id) in default_special_ids(model) {
        let key = format!("tokenizer.ggml.{name}_token_id");
        if file.get(&key).is_none() && *id >= n as u64 {
            return Err(unsound(key, format!("is not set, and llama.cpp's default {name} id {id} is beyond the {n}-token vocabulary")));
        }
    }
    Ok(n)
}

/// The hyper-parameters the tensor shapes follow from.
#[derive(Debug, Clone)]
struct Hp {
    n_embd: u64,
    n_layer: u64,
    n_head: Vec<u64>,
    n_head_kv: Vec<u64>,
    n_ff: Vec<u64>,
    head_k: u64,
    head_v: u64,
}

/// An integer key (any integer type), or a per-layer array of them.
fn counts(file: &GgufFile, key: &str) -> Result<Option<Vec<u64>>, Unsound> {
    match file.get(key) {
        None => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_u64().filter(|_| !matches!(v, Value::F32(_) | Value::F64(_) | Value::Bool(_))).ok_or_else(|| unsound(key, format!("holds a {}, not a count", type_name(v)))))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(v @ (Value::F32(_) | Value::F64(_) | Value::Bool(_) | Value::String(_))) => Err(unsound(key, format!("is a {}, not a count", type_name(v)))),
        Some(v) => v.as_u64().map(|x| Some(vec![x])).ok_or_else(|| unsound(key, "is negative")),
    }
}

fn scalar(file: &GgufFile, key: &str, required: bool) -> Result<Option<u64>, Unsound> {
    match counts(file, key)? {
        None if required => Err(unsound(key, "is missing")),
        None => Ok(None),
        Some(v) if v.len() == 1 && file.get(key).and_then(Value::as_array).is_none() => Ok(Some(v[0])),
        Some(_) => Err(unsound(key, "is an array, llama.cpp reads one number")),
    }
}

/// Per-layer values: one for all, or exactly one per layer.
fn per_layer(file: &GgufFile, key: &str, n_layer: u64, default: Option<&[u64]>) -> Result<Vec<u64>, Unsound> {
    let v = match counts(file, key)? {
        Some(v) => v,
        None => match default {
            Some(d) => return Ok(d.to_vec()),
            None => return Err(unsound(key, "is missing")),
        },
    };
    if file.get(key).and_then(Value::as_array).is_some() && v.len() as u64 != n_layer {
        return Err(unsound(key, format!("has {} per-layer values for {n_layer} layers", v.len())));
    }
    Ok(if v.len() == 1 { vec![v[0]; n_layer as usize] } else { v })
}

fn hyper_parameters(file: &GgufFile, arch: &str) -> Result<Hp, Unsound> {
    let k = |name: &str| format!("{arch}.{name}");
    let ctx = scalar(file, &k("context_length"), true)?.unwrap_or(0);
    if ctx == 0 {
        return Err(unsound(k("context_length"), "is 0"));
    }
    let n_embd = scalar(file, &k("embedding_length"), true)?.unwrap_or(0);
    if n_embd == 0 {
        return Err(unsound(k("embedding_length"), "is 0"));
    }
    let n_layer = scalar(file, &k("block_count"), true)?.unwrap_or(0);
    if !(1..=512).contains(&n_layer) {
        return Err(unsound(k("block_count"), format!("is {n_layer} (llama.cpp runs 1 to 512 layers)")));
    }
    let n_head = per_layer(file, &k("attention.head_count"), n_layer, None)?;
    let n_head_kv = per_layer(file, &k("attention.head_count_kv"), n_layer, Some(&n_head))?;
    let n_ff = per_layer(file, &k("feed_forward_length"), n_layer, Some(&vec![0; n_layer as usize]))?;
    for (il, (&h, &kv)) in n_head.iter().zip(&n_head_kv).enumerate() {
        if h == 0 {
            // Some architectures (recurrent layers) have head-less layers.
            continue;
        }
        if kv == 0 || h % kv != 0 {
            return Err(unsound(k("attention.head_count_kv"), format!("layer {il}: {h} query heads cannot share {kv} key/value heads evenly")));
        }
    }
    let max_head = n_head.iter().copied().max().unwrap_or(0);
    if max_head == 0 {
        return Err(unsound(k("attention.head_count"), "is 0 in every layer"));
    }
    let head_k = match scalar(file, &k("attention.key_length"), false)? {
        Some(0) => return Err(unsound(k("attention.key_length"), "is 0")),
        Some(v) => v,
        None => {
            if n_embd % max_head != 0 {
                return Err(unsound(k("attention.head_count"), format!("{max_head} heads do not divide the embedding width {n_embd}")));
            }
            n_embd / max_head
        }
    };
    let head_v = match scalar(file, &k("attention.value_length"), false)? {
        Some(0) => return Err(unsound(k("attention.value_length"), "is 0")),
        Some(v) => v,
        None => head_k,
    };
    if let Some(rot) = scalar(file, &k("rope.dimension_count"), false)? {
        if rot % 2 != 0 || rot > head_k {
            return Err(unsound(k("rope.dimension_count"), format!("is {rot}: RoPE needs an even count of at most the head width {head_k}")));
        }
    }
    for name in ["attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon", "rope.freq_base", "rope.scaling.factor"] {
        match file.get(&k(name)) {
            None => {}
            Some(Value::F32(v)) if v.is_finite() && *v > 0.0 => {}
            Some(Value::F32(v)) if name == "rope.scaling.factor" && *v == 0.0 => {}
            Some(Value::F32(v)) => return Err(unsound(k(name), format!("is {v}, not a positive finite number"))),
            Some(v) => return Err(unsound(k(name), format!("is a {}, llama.cpp reads an f32", type_name(v)))),
        }
    }
    Ok(Hp { n_embd, n_layer, n_head, n_head_kv, n_ff, head_k, head_v })
}

/// Architectures whose blocks are the llama layout (separate q/k/v/o,
/// gated FFN), each tensor checked and required.
const LLAMA_LAYOUT: &[&str] = &["llama", "qwen2", "qwen3", "mistral"];

fn tensors(file: &GgufFile, arch: &str, hp: &Hp, n_vocab: usize) -> Result<(), Unsound> {
    let n_vocab = n_vocab as u64;
    let e = hp.n_embd;
    let by_name: std::collections::HashMap<&str, &[u64]> = file.tensors.iter().map(|t| (t.name.as_str(), t.dims.as_slice())).collect();
    let expect = |name: &str, want: &[u64], required: bool| -> Result<(), Unsound> {
        match by_name.get(name) {
            Some(dims) if *dims != want => Err(unsound(name, format!("has shape {dims:?}, the hyper-parameters need {want:?}"))),
            None if required => Err(unsound(name, "is missing")),
            _ => Ok(()),
        }
    };
    expect("token_embd.weight", &[e, n_vocab], true)?;
    expect("output.weight", &[e, n_vocab], false)?;
    expect("output_norm.weight", &[e], false)?;
    for t in &file.tensors {
        if let Some(rest) = t.name.strip_prefix("blk.") {
            let layer: Option<u64> = rest.split('.').next().and_then(|l| l.parse().ok());
            match layer {
                Some(l) if l < hp.n_layer => {}
                _ => return Err(unsound(t.name.as_str(), format!("is not in one of the {} blocks block_count declares", hp.n_layer))),
            }
        }
    }
    if !LLAMA_LAYOUT.contains(&arch) {
        return Ok(());
    }
    for il in 0..hp.n_layer as usize {
        let (h, kv, ff) = (hp.n_head[il], hp.n_head_kv[il], hp.n_ff[il]);
        let (q, kd, vd) = (h * hp.head_k, kv * hp.head_k, kv * hp.head_v);
        let b = |t: &str| format!("blk.{il}.{t}");
        expect(&b("attn_norm.weight"), &[e], true)?;
        expect(&b("attn_q.weight"), &[e, q], true)?;
        expect(&b("attn_k.weight"), &[e, kd], true)?;
        expect(&b("attn_v.weight"), &[e, vd], true)?;
        expect(&b("attn_output.weight"), &[h * hp.head_v, e], true)?;
        expect(&b("attn_q.bias"), &[q], false)?;
        expect(&b("attn_k.bias"), &[kd], false)?;
        expect(&b("attn_v.bias"), &[vd], false)?;
        expect(&b("attn_q_norm.weight"), &[hp.head_k], false)?;
        expect(&b("attn_k_norm.weight"), &[hp.head_k], false)?;
        expect(&b("ffn_norm.weight"), &[e], true)?;
        if by_name.contains_key(b("ffn_gate_inp.weight").as_str()) {
            continue; // a mixture-of-experts block: left to llama.cpp
        }
        if ff == 0 {
            return Err(unsound(format!("{arch}.feed_forward_length"), format!("is missing or 0 for layer {il}")));
        }
        expect(&b("ffn_gate.weight"), &[e, ff], true)?;
        expect(&b("ffn_up.weight"), &[e, ff], true)?;
        expect(&b("ffn_down.weight"), &[ff, e], true)?;
    }
    Ok(())
}

/// A small model file that passes every check (for tests and fuzz seeds):
/// qwen2: the 256 byte-level tokens, one merge,
/// two specials; 2 layers of width 8 (2 heads, 1 KV head, ffn 16).
#[doc(hidden)]
pub fn example() -> (Vec<(String, Value)>, Vec<TensorData>) {
    let mut tokens: Vec<String> = gpt2_byte_chars().into_iter().map(|c| c.to_string()).collect();
    tokens.push("ab".into());
    tokens.push("<|im_end|>".into());
    let n = tokens.len() as u64;
    let s = |x: &str| Value::String(x.into());
    let meta = vec![
        ("general.architecture".to_string(), s("qwen2")),
        ("qwen2.context_length".into(), Value::U32(64)),
        ("qwen2.embedding_length".into(), Value::U32(8)),
        ("qwen2.block_count".into(), Value::U32(2)),
        ("qwen2.feed_forward_length".into(), Value::U32(16)),
        ("qwen2.attention.head_count".into(), Value::U32(2)),
        ("qwen2.attention.head_count_kv".into(), Value::U32(1)),
        ("qwen2.rope.freq_base".into(), Value::F32(10000.0)),
        ("qwen2.attention.layer_norm_rms_epsilon".into(), Value::F32(1e-6)),
        ("tokenizer.ggml.model".into(), s("gpt2")),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens.iter().map(|t| s(t)).collect())),
        ("tokenizer.ggml.token_type".into(), Value::Array(vec![Value::I32(1); n as usize])),
        ("tokenizer.ggml.merges".into(), Value::Array(vec![s("a b")])),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(n as u32 - 1)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(0)),
    ];
    let t = |name: &str, dims: &[u64]| TensorData { name: name.into(), dims: dims.to_vec(), ggml_type: 0, data: vec![0; 4 * dims.iter().product::<u64>() as usize] };
    let mut tensors = vec![t("token_embd.weight", &[8, n]), t("output_norm.weight", &[8])];
    for il in 0..2 {
        let b = |x: &str| format!("blk.{il}.{x}");
        tensors.extend([
            t(&b("attn_norm.weight"), &[8]),
            t(&b("attn_q.weight"), &[8, 8]),
            t(&b("attn_k.weight"), &[8, 4]),
            t(&b("attn_v.weight"), &[8, 4]),
            t(&b("attn_q.bias"), &[8]),
            t(&b("attn_output.weight"), &[8, 8]),
            t(&b("ffn_norm.weight"), &[8]),
            t(&b("ffn_gate.weight"), &[8, 16]),
            t(&b("ffn_up.weight"), &[8, 16]),
            t(&b("ffn_down.weight"), &[16, 8]),
        ]);
    }
    (meta, tensors)
}

#[cfg(test)]
mod tests {
    use super::super::{write_file, GgufFile, TensorData, Value};
    use super::*;

    fn parts() -> (Vec<(String, Value)>, Vec<TensorData>) {
        example()
    }

    fn check(meta: &[(String, Value)], tensors: &[TensorData]) -> Result<(), Unsound> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        write_file(&path, meta, tensors).unwrap();
        model(&GgufFile::open(&path).unwrap())
    }

    fn with(key: &str, v: Option<Value>) -> Result<(), Unsound> {
        let (mut meta, tensors) = parts();
        meta.retain(|(k, _)| k != key);
        if let Some(v) = v {
            meta.push((key.into(), v));
        }
        check(&meta, &tensors)
    }

    fn refused(r: Result<(), Unsound>, key: &str, says: &str) {
        let e = r.expect_err("must be refused");
        assert_eq!(e.key, key, "{e}");
        assert!(e.problem.contains(says), "{e}");
    }

    #[test]
    fn a_sound_file_passes() {
        let (meta, tensors) = parts();
        check(&meta, &tensors).unwrap();
    }

    #[test]
    fn vocabulary_faults_are_named() {
        let (meta, tensors) = parts();
        let tok = |f: &dyn Fn(&mut Vec<Value>)| {
            let mut m = meta.clone();
            for (k, v) in m.iter_mut() {
                if k == "tokenizer.ggml.tokens" {
                    if let Value::Array(a) = v {
                        f(a);
                    }
                }
            }
            check(&m, &tensors)
        };
        // Two tokens with the same text: llama-vocab.cpp's GGML_ASSERT.
        refused(tok(&|a| a[257] = Value::String("a".into())), "tokenizer.ggml.tokens", "both \"a\"");
        refused(tok(&|a| a[10] = Value::String("zz".into())), "tokenizer.ggml.tokens", "byte 0x0A");
        refused(with("tokenizer.ggml.tokens", None), "tokenizer.ggml.tokens", "missing");
        refused(with("tokenizer.ggml.tokens", Some(Value::Array(vec![Value::U32(1)]))), "tokenizer.ggml.tokens", "array of u32");
        refused(with("tokenizer.ggml.token_type", Some(Value::Array(vec![Value::I32(1); 3]))), "tokenizer.ggml.token_type", "3 entries for 258");
        refused(with("tokenizer.ggml.scores", Some(Value::Array(vec![Value::String("x".into())]))), "tokenizer.ggml.scores", "array of string");
        refused(with("tokenizer.ggml.merges", Some(Value::Array(vec![Value::String("a zq".into())]))), "tokenizer.ggml.merges", "\"zq\"");
        refused(with("tokenizer.ggml.merges", Some(Value::Array(vec![Value::String("ab".into())]))), "tokenizer.ggml.merges", "separated by a space");
        refused(with("tokenizer.ggml.merges", None), "tokenizer.ggml.merges", "missing");
        refused(with("tokenizer.ggml.eos_token_id", Some(Value::U32(258))), "tokenizer.ggml.eos_token_id", "beyond the 258-token");
        refused(with("tokenizer.ggml.model", Some(Value::String("sentencepiece-ish".into()))), "tokenizer.ggml.model", "not a tokenizer");
        // An SPM ("llama") vocabulary without byte tokens.
        refused(with("tokenizer.ggml.model", Some(Value::String("llama".into()))), "tokenizer.ggml.tokens", "<0x00>");
    }

    #[test]
    fn hyper_parameter_faults_are_named() {
        refused(with("qwen2.context_length", Some(Value::U32(0))), "qwen2.context_length", "is 0");
        refused(with("qwen2.block_count", None), "qwen2.block_count", "missing");
        refused(with("qwen2.block_count", Some(Value::U32(100_000))), "qwen2.block_count", "1 to 512");
        refused(with("qwen2.block_count", Some(Value::F32(2.0))), "qwen2.block_count", "f32");
        refused(with("qwen2.attention.head_count_kv", Some(Value::U32(3))), "qwen2.attention.head_count_kv", "evenly");
        refused(with("qwen2.attention.head_count_kv", Some(Value::U32(0))), "qwen2.attention.head_count_kv", "evenly");
        refused(with("qwen2.attention.head_count_kv", Some(Value::Array(vec![Value::U32(1); 3]))), "qwen2.attention.head_count_kv", "3 per-layer values for 2");
        refused(with("qwen2.rope.dimension_count", Some(Value::U32(3))), "qwen2.rope.dimension_count", "even");
        refused(with("qwen2.rope.freq_base", Some(Value::F32(f32::NAN))), "qwen2.rope.freq_base", "positive finite");
        refused(with("qwen2.attention.layer_norm_rms_epsilon", Some(Value::F64(1e-6))), "qwen2.attention.layer_norm_rms_epsilon", "f64");
        // 3 heads of an 8-wide embedding (and 3 KV heads, so GQA holds).
        let (mut meta, tensors) = parts();
        for (k, v) in meta.iter_mut() {
            if k.starts_with("qwen2.attention.head_count") {
                *v = Value::U32(3);
            }
        }
        refused(check(&meta, &tensors), "qwen2.attention.head_count", "do not divide");
        // Per-layer head counts are fine when they are sound.
        with("qwen2.attention.head_count", Some(Value::Array(vec![Value::U32(2); 2]))).unwrap();
    }

    #[test]
    fn tensor_shape_faults_are_named() {
        let (meta, tensors) = parts();
        let mut t = tensors.clone();
        t[0].dims = vec![8, 100];
        t[0].data = vec![0; 4 * 800];
        refused(check(&meta, &t), "token_embd.weight", "[8, 258]");
        let mut t = tensors.clone();
        let k = t.iter().position(|x| x.name == "blk.1.attn_k.weight").unwrap();
        t[k].dims = vec![8, 8];
        t[k].data = vec![0; 4 * 64];
        refused(check(&meta, &t), "blk.1.attn_k.weight", "[8, 4]");
        let mut t = tensors.clone();
        t.retain(|x| x.name != "blk.0.ffn_down.weight");
        refused(check(&meta, &t), "blk.0.ffn_down.weight", "missing");
        let mut t = tensors.clone();
        t.push(TensorData { name: "blk.7.attn_norm.weight".into(), dims: vec![8], ggml_type: 0, data: vec![0; 32] });
        refused(check(&meta, &t), "blk.7.attn_norm.weight", "2 blocks");
    }
}
