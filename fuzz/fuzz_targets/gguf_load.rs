//! Check, then load: a file the checker accepts must load in llama.cpp or
//! fail with an error, never abort the process (a GGML_ASSERT kills an app).
//! Seeded with small valid models (fuzz/seed.sh writes them).
#![no_main]

use libfuzzer_sys::fuzz_target;
use reckon::{Engine, EngineOptions};

fuzz_target!(|data: &[u8]| {
    let path = scratch_file();
    std::fs::write(&path, data).expect("write the input");
    // Engine::load runs the same checks first; only what passes reaches llama.cpp.
    let options = EngineOptions { max_context: Some(64), gpu_layers: 0, ..EngineOptions::default() };
    if let Ok(engine) = Engine::load(&path, options) {
        let _ = engine.info();
    }
});

/// One file per fuzzing process, in memory (/dev/shm) where there is one,
/// rewritten for every input: far faster than a new temporary file each time.
fn scratch_file() -> std::path::PathBuf {
    static PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let dir = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm".into() } else { std::env::temp_dir() };
        dir.join(format!("reckon-fuzz-{}-{}.gguf", env!("CARGO_BIN_NAME"), std::process::id()))
    })
    .clone()
}
