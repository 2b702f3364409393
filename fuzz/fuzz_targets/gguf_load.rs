//! Check, then load: a file the checker accepts must load in llama.cpp or
//! fail with an error, never abort the process (a GGML_ASSERT kills an app).
//! Seeded with small valid models (fuzz/seed.sh writes them).
#![no_main]

use libfuzzer_sys::fuzz_target;

mod scratch;
use scratch::scratch_file;
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
