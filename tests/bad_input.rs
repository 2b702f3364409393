//! Bad input gets a clear, typed error: never a panic or an abort.

mod common;

use std::io::{Read, Write};
use std::path::Path;

use common::{engine, model_path, options, JANET};
use reckon::budget::BudgetError;
use reckon::engine::{Engine, EngineOptions};
use reckon::events::Silent;
use reckon::gguf::{self, GgufError, TensorData, Value};
use reckon::ReckonError;

fn load(path: &Path) -> ReckonError {
    Engine::load(path, EngineOptions::default()).expect_err("must not load")
}

/// The first `n` bytes of the real model.
fn prefix_of_model(dir: &Path, n: usize) -> std::path::PathBuf {
    let mut buf = vec![0u8; n];
    std::fs::File::open(model_path()).unwrap().read_exact(&mut buf).unwrap();
    let p = dir.join("cut.gguf");
    std::fs::File::create(&p).unwrap().write_all(&buf).unwrap();
    p
}

fn crafted(dir: &Path, arch: &str, tensors: Vec<TensorData>) -> std::path::PathBuf {
    let p = dir.join(format!("{arch}.gguf"));
    let tokens = Value::Array(["a", "b", "<|im_end|>"].iter().map(|s| Value::String(s.to_string())).collect());
    let meta = vec![
        ("general.architecture".to_string(), Value::String(arch.into())),
        ("tokenizer.ggml.model".to_string(), Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens".to_string(), tokens),
        ("tokenizer.ggml.token_type".to_string(), Value::Array(vec![Value::I32(1), Value::I32(1), Value::I32(3)])),
        ("tokenizer.ggml.merges".to_string(), Value::Array(vec![Value::String("a b".into())])),
    ];
    gguf::write_file(&p, &meta, &tensors).unwrap();
    p
}

#[test]
fn missing_path() {
    assert!(matches!(load(Path::new("/nonexistent/model.gguf")), ReckonError::ModelNotFound(_)));
}

#[test]
fn a_directory() {
    let d = tempfile::tempdir().unwrap();
    assert!(matches!(load(d.path()), ReckonError::ModelIsDirectory(_)));
}

#[test]
fn an_empty_file() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("empty.gguf");
    std::fs::write(&p, b"").unwrap();
    assert!(matches!(load(&p), ReckonError::InvalidModel { source: GgufError::Empty, .. }));
}

#[test]
fn a_truncated_model() {
    let d = tempfile::tempdir().unwrap();
    for n in [3, 100, 4 << 20, 64 << 20] {
        let p = prefix_of_model(d.path(), n);
        let e = load(&p);
        assert!(matches!(e, ReckonError::InvalidModel { .. }), "{n} bytes: {e}");
        assert!(e.to_string().contains("truncated") || e.to_string().contains("beyond the end"), "{e}");
    }
}

#[test]
fn wrong_magic() {
    let d = tempfile::tempdir().unwrap();
    let p = prefix_of_model(d.path(), 1 << 16);
    gguf::patch(&p, 0, b"GGJT").unwrap();
    assert!(matches!(load(&p), ReckonError::InvalidModel { source: GgufError::BadMagic(_), .. }));
    std::fs::write(&p, b"not a model at all, just some text").unwrap();
    assert!(matches!(load(&p), ReckonError::InvalidModel { source: GgufError::BadMagic(_), .. }));
}

#[test]
fn header_counts_out_of_bounds() {
    let d = tempfile::tempdir().unwrap();
    let p = prefix_of_model(d.path(), 1 << 16);
    gguf::patch(&p, 8, &(1u64 << 50).to_le_bytes()).unwrap(); // tensor count
    assert!(matches!(load(&p), ReckonError::InvalidModel { source: GgufError::Corrupt(_), .. }));
    gguf::patch(&p, 8, &291u64.to_le_bytes()).unwrap();
    gguf::patch(&p, 16, &u64::MAX.to_le_bytes()).unwrap(); // metadata count
    assert!(matches!(load(&p), ReckonError::InvalidModel { source: GgufError::Corrupt(_), .. }));
    // The first key's length, made to run past the end.
    gguf::patch(&p, 16, &26u64.to_le_bytes()).unwrap();
    gguf::patch(&p, 24, &(1u64 << 40).to_le_bytes()).unwrap();
    assert!(matches!(load(&p), ReckonError::InvalidModel { .. }));
}

#[test]
fn tensor_data_beyond_the_file() {
    let d = tempfile::tempdir().unwrap();
    let t = TensorData { name: "token_embd.weight".into(), dims: vec![8, 3], ggml_type: 0, data: vec![0; 96] };
    let p = crafted(d.path(), "qwen2", vec![t]);
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(len - 40).unwrap();
    assert!(matches!(load(&p), ReckonError::InvalidModel { source: GgufError::TensorOutOfBounds { .. }, .. }));
}

#[test]
fn unsupported_architecture() {
    let d = tempfile::tempdir().unwrap();
    let p = crafted(d.path(), "bert", vec![]);
    match load(&p) {
        ReckonError::UnsupportedArchitecture { arch, .. } => assert_eq!(arch, "bert"),
        e => panic!("{e}"),
    }
}

#[test]
fn sound_file_that_llama_cpp_refuses() {
    // Passes every check of ours, but lacks the final norm llama.cpp
    // requires: llama.cpp says no, and that comes back as an error, not an
    // abort.
    let d = tempfile::tempdir().unwrap();
    let (meta, mut tensors) = gguf::check::example();
    let p = d.path().join("no-norm.gguf");
    tensors.retain(|t| t.name != "output_norm.weight");
    gguf::write_file(&p, &meta, &tensors).unwrap();
    assert!(matches!(load(&p), ReckonError::ModelLoad { .. }), "llama.cpp's refusal is a typed error");
}

/// The report this checker was built for: one byte of the default model's
/// vocabulary changed, so that two tokens have the same text, made
/// `reckon solve` abort inside llama.cpp (exit 134). Now `info` and `solve`
/// refuse it by name, and the process exits with an error, not an abort.
#[test]
fn a_vocabulary_with_a_duplicate_token_is_refused_before_llama_cpp() {
    let real = gguf::GgufFile::open(&model_path()).unwrap();
    let tokens = real.tokens();
    let head = {
        let mut buf = vec![0u8; 16 << 20];
        let n = std::fs::File::open(model_path()).unwrap().read(&mut buf).unwrap();
        buf.truncate(n);
        buf
    };
    let encoded = |t: &str| [(t.len() as u64).to_le_bytes().as_slice(), t.as_bytes()].concat();
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    // A token whose last byte, changed, gives another token's text, and
    // whose encoding appears once in the header.
    let index: std::collections::HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let (victim, twin, at) = tokens
        .iter()
        .filter(|t| t.len() >= 6 && t.bytes().all(|b| b.is_ascii_lowercase()))
        .find_map(|t| {
            let stem = &t[..t.len() - 1];
            let twin = (b'a'..=b'z').map(|c| format!("{stem}{}", c as char)).find(|o| o != t && index.contains_key(o.as_str()))?;
            let enc = encoded(t);
            let at = find(&head, &enc)?;
            (find(&head[at + 1..], &enc).is_none()).then(|| (t.to_string(), twin, at + enc.len() - 1))
        })
        .expect("a pair of tokens one byte apart");
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("dup.gguf");
    std::fs::copy(model_path(), &p).unwrap();
    gguf::patch(&p, at as u64, &[*twin.as_bytes().last().unwrap()]).unwrap();
    match load(&p) {
        ReckonError::InvalidModel { source: GgufError::Unsound(u), .. } => {
            assert_eq!(u.key, "tokenizer.ggml.tokens");
            assert!(u.problem.contains(&format!("both {twin:?}")), "{u} (changed {victim:?})");
        }
        e => panic!("expected the duplicate token to be refused, got {e}"),
    }
    let path = p.display().to_string();
    for args in [vec!["info", "--model", &path], vec!["solve", "--max-think", "8", "--model", &path, "What is 2 + 2?"]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_reckon")).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.code().is_some(), "{args:?}: killed by a signal: {err}");
        assert_ne!(out.status.code(), Some(0), "{args:?} accepted the file");
        assert!(err.contains("unique"), "{args:?}: {err}");
    }
}

/// A header whose array counts ask for more memory than the file could
/// justify is refused before anything of that size is allocated.
#[test]
fn huge_metadata_arrays_are_refused_before_allocation() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("huge.gguf");
    let meta = vec![("general.architecture".to_string(), Value::String("qwen2".into())), ("x.bytes".to_string(), Value::Array(vec![Value::U8(0); 5 << 20]))];
    gguf::write_file(&p, &meta, &[]).unwrap();
    match gguf::GgufFile::open(&p) {
        Err(GgufError::Corrupt(m)) => assert!(m.contains("at most"), "{m}"),
        other => panic!("a 5M-element array must be refused: {other:?}"),
    }
}

#[test]
fn empty_question() {
    for q in ["", "   \n\t "] {
        let e = engine().solve(q, &options(0, 8, 8), &mut Silent, None).unwrap_err();
        assert!(matches!(e, ReckonError::EmptyQuestion), "{e}");
    }
}

#[test]
fn question_longer_than_the_context() {
    // A phone-sized context.
    let small = Engine::load(model_path(), EngineOptions { max_context: Some(256), ..EngineOptions::default() }).unwrap();
    let e = small.solve(&JANET.repeat(8), &options(0, 64, 16), &mut Silent, None).unwrap_err();
    match e {
        ReckonError::PromptTooLong { prompt_tokens, context_limit, .. } => {
            assert!(prompt_tokens > 256);
            assert_eq!(context_limit, 256);
        }
        e => panic!("{e}"),
    }
    // The budgets alone may not fit either.
    let e = small.solve("1+1?", &options(0, 1000, 16), &mut Silent, None).unwrap_err();
    assert!(matches!(e, ReckonError::PromptTooLong { .. }), "{e}");
    // The model's own 32k context.
    let huge = "7 + ".repeat(20_000) + "7?";
    let e = engine().solve(&huge, &options(0, 64, 16), &mut Silent, None).unwrap_err();
    assert!(matches!(e, ReckonError::PromptTooLong { .. }), "{e}");
}

#[test]
fn invalid_budgets_and_options() {
    let e = engine().solve(JANET, &options(10, 5, 8), &mut Silent, None).unwrap_err();
    assert!(matches!(e, ReckonError::InvalidBudget(BudgetError::FloorAboveCap { min: 10, max: 5 })), "{e}");
    let mut o = options(0, 8, 8);
    o.sampling.temperature = -1.0;
    assert!(matches!(engine().solve(JANET, &o, &mut Silent, None), Err(ReckonError::InvalidOption(_))));
    let mut o = options(0, 8, 8);
    o.sampling.top_p = f32::NAN;
    assert!(matches!(engine().solve(JANET, &o, &mut Silent, None), Err(ReckonError::InvalidOption(_))));
    let mut o = options(0, 8, 8);
    o.threads = Some(0);
    assert!(matches!(engine().solve(JANET, &o, &mut Silent, None), Err(ReckonError::InvalidOption(_))));
    let bad_ctx = Engine::load(model_path(), EngineOptions { max_context: Some(3), ..EngineOptions::default() });
    assert!(matches!(bad_ctx, Err(ReckonError::InvalidOption(_))));
}

#[test]
fn zero_budgets_are_valid() {
    let mut o = options(0, 0, 0);
    let r = engine().solve(JANET, &o, &mut Silent, None).unwrap();
    assert_eq!(r.total_thinking_tokens(), 0);
    assert_eq!(r.answer_tokens, 0);
    o.budget.max_thinking_ms = Some(0);
    o.budget.max_answer_tokens = 4;
    let r = engine().solve(JANET, &o, &mut Silent, None).unwrap();
    assert!(r.forced_end);
}

/// The GGUF seeds of the fuzz targets (`fuzz/corpus/gguf_*`): the checker's
/// own small model loads in llama.cpp, and each copy with one value changed
/// the way llama.cpp's loaders would trust is refused by our checks before
/// llama.cpp sees it. The committed files are exactly what
/// `gguf::check::example` writes, so a change to the checker cannot leave
/// the fuzzer starting from stale seeds; `RECKON_WRITE_SEEDS=1` rewrites
/// them (fuzz/seed.sh does, with the trainer's tiny models).
#[test]
fn fuzz_seeds_are_the_checker_example_and_its_variants() {
    let (meta, tensors) = gguf::check::example();
    let with = |key: &str, value: Value| -> Vec<(String, Value)> {
        meta.iter().map(|(k, v)| (k.clone(), if k == key { value.clone() } else { v.clone() })).collect()
    };
    let seeds: Vec<(&str, Vec<(String, Value)>, bool)> = vec![
        ("example", meta.clone(), true),
        ("heads-0", with("qwen2.attention.head_count", Value::U32(0)), false),
        ("heads-3", with("qwen2.attention.head_count", Value::U32(3)), false),
        ("eos-out-of-range", with("tokenizer.ggml.eos_token_id", Value::U32(1 << 20)), false),
        ("context-0", with("qwen2.context_length", Value::U32(0)), false),
        ("types-short", with("tokenizer.ggml.token_type", Value::Array(vec![Value::I32(1); 3])), false),
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let write = std::env::var_os("RECKON_WRITE_SEEDS").is_some();
    let d = tempfile::tempdir().unwrap();
    for (name, m, loads) in &seeds {
        let fresh = d.path().join(format!("{name}.gguf"));
        gguf::write_file(&fresh, m, &tensors).unwrap();
        let bytes = std::fs::read(&fresh).unwrap();
        for target in ["gguf_check", "gguf_load"] {
            let committed = root.join(target).join(format!("{name}.gguf"));
            if write {
                std::fs::write(&committed, &bytes).unwrap();
            }
            let old = std::fs::read(&committed).unwrap_or_default();
            assert!(old == bytes, "{} is stale: run RECKON_WRITE_SEEDS=1 cargo test --test bad_input fuzz_seeds", committed.display());
        }
        let loaded = Engine::load(&fresh, EngineOptions { max_context: Some(64), ..EngineOptions::default() });
        match (loads, loaded) {
            (true, Ok(_)) => {}
            (true, Err(e)) => panic!("{name} must load: {e}"),
            (false, Ok(_)) => panic!("{name} must be refused"),
            (false, Err(e)) => assert!(matches!(e, ReckonError::InvalidModel { .. }), "{name}: refused by our checks, not by llama.cpp: {e}"),
        }
    }
    // The trainer's tiny models (fuzz/seed.sh exports them): real,
    // quantized files that llama.cpp runs.
    let mut trainer = 0;
    for e in std::fs::read_dir(root.join("gguf_load")).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().starts_with("trainer-") {
            let engine = Engine::load(&p, EngineOptions { max_context: Some(64), ..EngineOptions::default() });
            assert!(engine.is_ok(), "{} must load: {}", p.display(), engine.err().unwrap());
            trainer += 1;
        }
    }
    assert!(trainer >= 2, "the trainer's tiny seeds are missing from fuzz/corpus/gguf_load");
}
