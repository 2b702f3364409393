//! The GGUF reader and model checks on arbitrary bytes: an error or a
//! checked file, never a panic, a hang or an allocation the file could not
//! back (metadata arrays are capped before anything is allocated).
#![no_main]

use libfuzzer_sys::fuzz_target;
use reckon::gguf::{check, GgufFile};

fuzz_target!(|data: &[u8]| {
    let path = scratch_file();
    std::fs::write(&path, data).expect("write the input");
    if let Ok(file) = GgufFile::open(&path) {
        let _ = check::model(&file);
        let _ = file.n_params();
        let _ = file.tokens();
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
