//! The file a GGUF target writes its input to.

/// One file per fuzzing process, in memory (/dev/shm) where there is one,
/// rewritten for every input: far faster than a new temporary file each time.
pub fn scratch_file() -> std::path::PathBuf {
    static PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let dir = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm".into() } else { std::env::temp_dir() };
        dir.join(format!("reckon-fuzz-{}-{}.gguf", env!("CARGO_BIN_NAME"), std::process::id()))
    })
    .clone()
}
