//! Checkpoints: weights and optimizer state (safetensors), step, RNG state,
//! configs and tokenizer, with a manifest of SHA-256 sums written last.
//!
//! A checkpoint is written into `step-NNNNNNNN.partial/` and renamed when
//! complete, so a crash leaves at worst a `.partial` directory that is never
//! loaded. Loading checks every file against the manifest: a corrupt or
//! truncated checkpoint is reported, never used.
//!
//! A LoRA run on a base that lives in a file (a GGUF, an HF directory, an
//! earlier checkpoint) writes *adapter-only* checkpoints: the adapters and
//! their optimizer moments (tens of MB at 0.5B instead of 2 GB), and a
//! [`BaseRef`] naming the base by path and SHA-256. Loading rebuilds the
//! base from that file, refuses one whose hash differs, and lays the
//! adapters over it, so callers see the same [`Checkpoint`] either way.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::{LoraConfig, Qwen2Config};
use crate::io::tokenizer::Tok;

const FORMAT: &str = "reckon-trainer-checkpoint/1";
const FILES: &[&str] = &["model.safetensors", "optimizer.safetensors", "state.json", "config.json", "tokenizer.json"];

/// The trainer stage that wrote a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Supervised fine-tuning.
    Sft,
    /// Reinforcement learning (GRPO).
    Grpo,
    /// A model imported from GGUF, untrained.
    Import,
}

impl Stage {
    /// Its name in files and progress bars.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sft => "sft",
            Self::Grpo => "grpo",
            Self::Import => "import",
        }
    }
}

/// What a checkpoint records besides tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: u64,
    /// AdamW update count.
    pub optimizer_t: u64,
    /// The dropout/sampling RNG: seed (hex) and stream position.
    pub rng_seed: String,
    /// Words consumed from the RNG stream (decimal u128).
    pub rng_word_pos: String,
    /// LoRA settings, when training adapters.
    pub lora: Option<LoraConfig>,
    /// The training config that produced it (TOML as JSON), for provenance
    /// and for checking that a resume uses the same settings.
    pub run_config: serde_json::Value,
    /// Which trainer stage wrote it.
    pub stage: Stage,
    /// Wall-clock seconds of training so far.
    pub elapsed_s: f64,
    /// Tokens trained on so far.
    pub tokens_seen: u64,
    /// Where the weights first came from (a path, or `tiny`).
    #[serde(default)]
    pub source: String,
    /// The source's chat template, kept for an untrained import so an
    /// export round-trips; trained stages export the s1 template.
    #[serde(default)]
    pub chat_template: Option<String>,
    /// The base an adapter-only checkpoint is laid over; `None`: the
    /// checkpoint holds every weight.
    #[serde(default)]
    pub base: Option<BaseRef>,
    /// The LoRA checkpoint whose adapters this run went on training
    /// (`model.continue_adapters`), for provenance.
    #[serde(default)]
    pub continued_from: Option<String>,
}

/// A base model file an adapter-only checkpoint needs, pinned by content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseRef {
    /// Where it was (`~/` for the home directory, so a checkout on another
    /// machine with the model fetched to the same place finds it).
    pub path: String,
    /// SHA-256 of the file (a GGUF), of the manifest (a checkpoint), or of
    /// the sorted list of file sums (an HF directory).
    pub sha256: String,
    /// Bytes hashed.
    pub bytes: u64,
}

impl BaseRef {
    /// Pin the base at `path`.
    pub fn of(path: &Path) -> Result<Self> {
        let abs = std::fs::canonicalize(path).with_context(|| format!("base model {} does not exist", path.display()))?;
        let FileSum { sha256, bytes } = content_sum(&abs)?;
        let shown = match std::env::var_os("HOME").map(PathBuf::from) {
            Some(home) if abs.starts_with(&home) => format!("~/{}", abs.strip_prefix(&home).unwrap_or(&abs).display()),
            _ => abs.display().to_string(),
        };
        Ok(Self { path: shown, sha256, bytes })
    }

    /// The path on this machine.
    pub fn local_path(&self) -> PathBuf {
        match (self.path.strip_prefix("~/"), std::env::var_os("HOME")) {
            (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
            _ => PathBuf::from(&self.path),
        }
    }

    /// The base's path, checked to hold the content it was pinned with.
    pub fn verified_path(&self) -> Result<PathBuf> {
        let p = self.local_path();
        ensure!(
            p.exists(),
            "the base model of this adapter-only checkpoint, {}, is missing (fetch it: `reckon fetch-model` for the default model, or re-create that checkpoint)",
            p.display()
        );
        let got = content_sum(&p)?;
        ensure!(
            got.sha256 == self.sha256,
            "the base model {} has SHA-256 {} ({} bytes), the checkpoint was trained on {} ({} bytes): adapters trained on one base are wrong on another",
            p.display(),
            &got.sha256[..12],
            got.bytes,
            &self.sha256[..12],
            self.bytes
        );
        Ok(p)
    }
}

/// The content sum of a base: a file's own, a checkpoint's manifest, or a
/// directory's files in name order.
fn content_sum(path: &Path) -> Result<FileSum> {
    if path.is_file() {
        return sum(path);
    }
    if path.join("manifest.json").is_file() {
        return sum(&path.join("manifest.json"));
    }
    let mut names: Vec<PathBuf> = std::fs::read_dir(path)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
    names.sort();
    let mut h = Sha256::new();
    let mut bytes = 0;
    for n in names {
        let s = sum(&n)?;
        bytes += s.bytes;
        h.update(format!("{} {} {}\n", n.file_name().unwrap_or_default().to_string_lossy(), s.bytes, s.sha256));
    }
    Ok(FileSum { sha256: format!("{:x}", h.finalize()), bytes })
}

impl TrainState {
    /// Step 0 of a run of `stage`.
    pub fn fresh(stage: Stage, lora: Option<LoraConfig>, run_config: serde_json::Value, source: &str, rng: &ChaCha8Rng) -> Self {
        let mut s = Self {
            step: 0,
            optimizer_t: 0,
            rng_seed: String::new(),
            rng_word_pos: String::new(),
            lora,
            run_config,
            stage,
            elapsed_s: 0.0,
            tokens_seen: 0,
            source: source.into(),
            chat_template: None,
            base: None,
            continued_from: None,
        };
        s.set_rng(rng);
        s
    }

    /// The RNG exactly where it was.
    pub fn rng(&self) -> Result<ChaCha8Rng> {
        let seed = hex_decode(&self.rng_seed).context("checkpoint RNG seed")?;
        let mut rng = ChaCha8Rng::from_seed(seed);
        rng.set_word_pos(self.rng_word_pos.parse().context("checkpoint RNG position")?);
        Ok(rng)
    }

    /// Record `rng`'s state.
    pub fn set_rng(&mut self, rng: &ChaCha8Rng) {
        self.rng_seed = rng.get_seed().iter().map(|b| format!("{b:02x}")).collect();
        self.rng_word_pos = rng.get_word_pos().to_string();
    }
}

fn hex_decode(s: &str) -> Result<[u8; 32]> {
    ensure!(s.len() == 64, "expected 64 hex digits");
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)?;
    }
    Ok(out)
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    format: String,
    files: BTreeMap<String, FileSum>,
}

#[derive(Serialize, Deserialize)]
struct FileSum {
    sha256: String,
    bytes: u64,
}

/// A loaded, verified checkpoint.
pub struct Checkpoint {
    /// Its directory.
    pub dir: PathBuf,
    /// Model hyperparameters.
    pub model_config: Qwen2Config,
    /// Base weights and adapters by name (CPU).
    pub tensors: BTreeMap<String, Tensor>,
    /// AdamW moments (CPU).
    pub optimizer: BTreeMap<String, Tensor>,
    /// Step, RNG, provenance.
    pub state: TrainState,
    /// The tokenizer.
    pub tok: Tok,
}

/// The directory name of step `step`.
pub fn dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

fn to_cpu(map: &BTreeMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
    map.iter().map(|(k, v)| Ok((k.clone(), v.to_device(&Device::Cpu)?))).collect()
}

/// Write a checkpoint under `root`; returns its directory.
pub fn save(
    root: &Path,
    model_config: &Qwen2Config,
    tensors: &BTreeMap<String, Tensor>,
    optimizer: &BTreeMap<String, Tensor>,
    state: &TrainState,
    tok: &Tok,
) -> Result<PathBuf> {
    std::fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
    let final_dir = root.join(dir_name(state.step));
    let tmp = root.join(format!("{}.partial", dir_name(state.step)));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    candle_core::safetensors::save(&to_cpu(tensors)?, tmp.join("model.safetensors"))?;
    candle_core::safetensors::save(&to_cpu(optimizer)?, tmp.join("optimizer.safetensors"))?;
    std::fs::write(tmp.join("state.json"), serde_json::to_vec_pretty(state)?)?;
    std::fs::write(tmp.join("config.json"), serde_json::to_vec_pretty(model_config)?)?;
    tok.save(&tmp.join("tokenizer.json"))?;
    let mut files = BTreeMap::new();
    for f in FILES {
        files.insert(f.to_string(), sum(&tmp.join(f))?);
    }
    std::fs::write(tmp.join("manifest.json"), serde_json::to_vec_pretty(&Manifest { format: FORMAT.into(), files })?)?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir)?;
    }
    std::fs::rename(&tmp, &final_dir)?;
    Ok(final_dir)
}

fn sum(path: &Path) -> Result<FileSum> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        h.update(&buf[..n]);
    }
    Ok(FileSum { sha256: format!("{:x}", h.finalize()), bytes })
}

/// Complete checkpoints under `root`, oldest first (`.partial` ones skipped).
pub fn list(root: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(root) else { return Ok(out) };
    for e in rd {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(n) = name.strip_prefix("step-") {
            if let Ok(step) = n.parse::<u64>() {
                out.push((step, e.path()));
            } else if n.ends_with(".partial") {
                log::warn!("ignoring unfinished checkpoint {}", e.path().display());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Keep only the `keep` newest checkpoints.
pub fn prune(root: &Path, keep: usize) -> Result<()> {
    let all = list(root)?;
    for (_, dir) in all.iter().take(all.len().saturating_sub(keep)) {
        std::fs::remove_dir_all(dir)?;
    }
    Ok(())
}

/// Verify every file of the checkpoint at `dir` against its manifest.
pub fn verify(dir: &Path) -> Result<()> {
    let mpath = dir.join("manifest.json");
    let text = std::fs::read_to_string(&mpath)
        .with_context(|| format!("checkpoint {} is incomplete: no manifest.json (it was not finished)", dir.display()))?;
    let manifest: Manifest = serde_json::from_str(&text).with_context(|| format!("checkpoint {}: manifest.json is corrupt", dir.display()))?;
    ensure!(manifest.format == FORMAT, "checkpoint {}: format '{}' (this trainer reads {FORMAT})", dir.display(), manifest.format);
    for f in FILES {
        let want = manifest.files.get(*f).with_context(|| format!("checkpoint {}: manifest does not list {f}", dir.display()))?;
        let path = dir.join(f);
        ensure!(path.is_file(), "checkpoint {}: {f} is missing", dir.display());
        let got = sum(&path)?;
        if got.bytes != want.bytes || got.sha256 != want.sha256 {
            bail!(
                "checkpoint {} is corrupt: {f} has {} bytes and SHA-256 {}, the manifest says {} bytes and {}",
                dir.display(),
                got.bytes,
                &got.sha256[..12],
                want.bytes,
                &want.sha256[..12]
            );
        }
    }
    Ok(())
}

/// Only the step, RNG and provenance of the checkpoint at `dir` (no
/// verification, no tensors: for callers that already loaded it).
pub fn read_state(dir: &Path) -> Result<TrainState> {
    serde_json::from_slice(&std::fs::read(dir.join("state.json"))?).with_context(|| format!("checkpoint {}: state.json", dir.display()))
}

/// Load and verify the checkpoint at `dir`; an adapter-only one is laid
/// over its verified base, so `tensors` holds every weight.
pub fn load(dir: &Path) -> Result<Checkpoint> {
    let mut ck = load_stored(dir)?;
    if let Some(base) = &ck.state.base {
        let path = base.verified_path().with_context(|| format!("checkpoint {}", dir.display()))?;
        let src = crate::io::weights::load(&path)?;
        ensure!(
            src.config == ck.model_config,
            "checkpoint {}: its base {} has other hyperparameters than the checkpoint records",
            dir.display(),
            path.display()
        );
        let mut all = src.tensors;
        all.append(&mut ck.tensors);
        ck.tensors = all;
    }
    Ok(ck)
}

/// Load and verify the checkpoint at `dir` as stored: an adapter-only
/// checkpoint's `tensors` are its adapters alone.
pub fn load_stored(dir: &Path) -> Result<Checkpoint> {
    verify(dir)?;
    let read = |f: &str| -> Result<BTreeMap<String, Tensor>> {
        Ok(candle_core::safetensors::load(dir.join(f), &Device::Cpu)
            .with_context(|| format!("checkpoint {}: cannot read {f}", dir.display()))?
            .into_iter()
            .collect())
    };
    let state = read_state(dir)?;
    let model_config: Qwen2Config = serde_json::from_slice(&std::fs::read(dir.join("config.json"))?).context("checkpoint config.json")?;
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        model_config,
        tensors: read("model.safetensors")?,
        optimizer: read("optimizer.safetensors")?,
        state,
        tok: Tok::from_file(&dir.join("tokenizer.json"))?,
    })
}

/// What [`slim`] keeps of a checkpoint's optimizer moments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[derive(clap::ValueEnum)]
pub enum SlimMoments {
    /// None: a starting point for another run (GRPO from an SFT run's
    /// adapters), not for resuming this one.
    #[default]
    Drop,
    /// Rounded to bf16 (half the bytes): the run resumes from it, with
    /// moments within bf16's 2^-8 relative rounding of the originals (a
    /// near-exact resume), which a long run parks between sessions.
    Bf16,
}

/// Copy the checkpoint at `dir` (verified) into `root` with its optimizer
/// moments dropped or rounded to bf16 ([`SlimMoments`]); returns the new
/// directory. An adapter-only checkpoint stays adapter-only, pinned to the
/// same base. The weights are kept as they are.
pub fn slim(dir: &Path, root: &Path, moments: SlimMoments) -> Result<PathBuf> {
    let ck = load_stored(dir)?;
    let optimizer = match moments {
        SlimMoments::Drop => BTreeMap::new(),
        SlimMoments::Bf16 => ck.optimizer.iter().map(|(k, v)| Ok((k.clone(), v.to_dtype(candle_core::DType::BF16)?))).collect::<Result<_>>()?,
    };
    save(root, &ck.model_config, &ck.tensors, &optimizer, &ck.state, &ck.tok)
}

/// The newest complete checkpoint under `root`, verified. A newest one that
/// fails verification is an error (it is not silently skipped).
pub fn latest(root: &Path) -> Result<Option<Checkpoint>> {
    match list(root)?.pop() {
        None => Ok(None),
        Some((_, dir)) => load(&dir).map(Some),
    }
}
