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
    // Structurally valid, but a qwen2 model with no weights: llama.cpp says
    // no, and that comes back as an error, not an abort.
    let d = tempfile::tempdir().unwrap();
    let t = TensorData { name: "token_embd.weight".into(), dims: vec![8, 3], ggml_type: 0, data: vec![0; 96] };
    let p = crafted(d.path(), "qwen2", vec![t]);
    assert!(matches!(load(&p), ReckonError::ModelLoad { .. }));
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
