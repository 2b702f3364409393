//! The configuration sections every stage shares (`[model]`, `[optim]`,
//! `[checkpoint]`), the device and compute type they name, and reading a
//! TOML config: relative paths are relative to the config file. Each
//! stage's whole config lives with its loop ([`crate::sft::SftConfig`],
//! [`crate::rl::GrpoConfig`]); every one is validated once, before anything
//! heavy starts.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use super::overrides::{self, Override};

/// `[model]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A `.gguf` file (dequantized), a Hugging Face directory, or `tiny`
    /// (a 2-layer model with its own small tokenizer, for tests and demos).
    pub source: String,
    /// `auto` (bf16 on CUDA, f32 on CPU), `f32`, `bf16`, `f16`.
    #[serde(default)]
    pub compute_dtype: ComputeDtype,
    /// `auto` (CUDA when built with it and present), `cpu`, `cuda`.
    #[serde(default)]
    pub device: DeviceChoice,
    /// When `source` is a LoRA checkpoint: train its adapters further
    /// (`[lora]` must have the same rank, alpha and targets) on its own base,
    /// instead of merging them and adding new ones. The run's adapter then
    /// applies to that base alone (one file to ship, same rank).
    #[serde(default)]
    pub continue_adapters: bool,
}

impl ModelSection {
    /// Check that a half-precision compute type is not asked of the CPU
    /// (candle's CPU matmul has no bf16/f16 kernels: the first matmul would
    /// fail). The names themselves are checked when the TOML is read.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            !(self.device == DeviceChoice::Cpu && self.compute_dtype.is_half()),
            "model.compute_dtype = \"{}\" needs CUDA; on the CPU use \"f32\" (or \"auto\", which is f32 there)",
            self.compute_dtype
        );
        Ok(())
    }
}

/// `model.device`: where the run computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when built with it and a GPU is present, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The first CUDA GPU (needs `--features cuda`).
    Cuda,
}

impl DeviceChoice {
    /// Open the device.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda => Device::new_cuda(0).context("model.device = \"cuda\": no CUDA device (was reckon-train built with --features cuda?)"),
            Self::Auto => Ok(if candle_core::utils::cuda_is_available() { Device::new_cuda(0).unwrap_or(Device::Cpu) } else { Device::Cpu }),
        }
    }
}

/// `model.compute_dtype`: the type activations and matmuls run in (weights
/// and optimizer moments stay f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDtype {
    /// bf16 on CUDA, f32 on the CPU.
    #[default]
    Auto,
    /// f32.
    F32,
    /// bf16 (CUDA only).
    Bf16,
    /// f16 (CUDA only).
    F16,
}

impl fmt::Display for ComputeDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        })
    }
}

impl ComputeDtype {
    /// bf16 or f16.
    pub fn is_half(self) -> bool {
        matches!(self, Self::Bf16 | Self::F16)
    }

    /// The dtype on `device`; bf16/f16 on the CPU (where `model.device =
    /// "auto"` found no GPU) is refused: candle's CPU matmul has no
    /// half-precision kernels.
    pub fn resolve(self, device: &Device) -> Result<DType> {
        let dtype = match self {
            Self::Bf16 => DType::BF16,
            Self::F16 => DType::F16,
            Self::F32 => DType::F32,
            Self::Auto if device.is_cuda() => DType::BF16,
            Self::Auto => DType::F32,
        };
        ensure!(device.is_cuda() || dtype == DType::F32, "model.compute_dtype = \"{self}\" needs CUDA, and this run is on the CPU; use \"f32\" (or \"auto\")");
        Ok(dtype)
    }
}

/// The system prompt rendered before each question: the runtime's default.
pub(crate) fn default_system() -> String {
    reckon::format::DEFAULT_SYSTEM_PROMPT.to_string()
}

/// `[optim]`: AdamW with fp32 moments, warmup then cosine decay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Decoupled weight decay, applied to matrices only (not norms, biases).
    pub weight_decay: f64,
    /// Adam β1.
    pub beta1: f64,
    /// Adam β2.
    pub beta2: f64,
    /// Adam ε.
    pub eps: f64,
    /// Linear warmup steps from 0 to `lr`.
    pub warmup_steps: u64,
    /// Cosine decay ends at `lr × min_lr_ratio`.
    pub min_lr_ratio: f64,
    /// Global gradient-norm clip (0 disables).
    pub clip_grad_norm: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self { lr: 1e-5, weight_decay: 0.0, beta1: 0.9, beta2: 0.999, eps: 1e-8, warmup_steps: 0, min_lr_ratio: 0.1, clip_grad_norm: 1.0 }
    }
}

impl OptimConfig {
    /// Check ranges.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.lr > 0.0 && self.lr.is_finite(), "optim.lr must be a positive number (got {})", self.lr);
        ensure!(self.weight_decay >= 0.0, "optim.weight_decay must be ≥ 0");
        ensure!((0.0..1.0).contains(&self.beta1) && (0.0..1.0).contains(&self.beta2), "optim.beta1 and beta2 must be in [0, 1)");
        ensure!(self.eps > 0.0, "optim.eps must be positive");
        ensure!((0.0..=1.0).contains(&self.min_lr_ratio), "optim.min_lr_ratio must be in [0, 1]");
        ensure!(self.clip_grad_norm >= 0.0, "optim.clip_grad_norm must be ≥ 0 (0 disables clipping)");
        Ok(())
    }
}

/// `[checkpoint]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSection {
    /// Save every this many steps (and always at the end).
    pub every: u64,
    /// Keep this many most recent checkpoints.
    pub keep_last: usize,
    /// With `[lora]` on a base in a file: store only the adapters and their
    /// optimizer state, with the base pinned by path and SHA-256 (tens of
    /// MB instead of the whole model). `false`: every weight, as for full
    /// fine-tuning.
    #[serde(default = "yes")]
    pub adapter_only: bool,
}

fn yes() -> bool {
    true
}

impl Default for CheckpointSection {
    fn default() -> Self {
        Self { every: 100, keep_last: 2, adapter_only: true }
    }
}

/// Parse a TOML config with `--set` overrides applied (each must name a
/// setting the config has); also returns the directory relative paths
/// start from.
pub(crate) fn read_toml<T: for<'de> Deserialize<'de> + Serialize>(path: &Path, sets: &[Override]) -> Result<(T, PathBuf)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
    let mut table: toml::Table = toml::from_str(&text).with_context(|| format!("config {} is not valid", path.display()))?;
    overrides::apply(&mut table, sets)?;
    let what: String = sets.iter().map(|o| format!(" --set {}={}", o.key(), o.value)).collect();
    let what = if what.is_empty() { what } else { format!(" with{what}") };
    let cfg: T = table.try_into().with_context(|| format!("config {}{what} is not valid", path.display()))?;
    overrides::check_applied(&cfg, sets)?;
    Ok((cfg, path.parent().unwrap_or(Path::new(".")).to_path_buf()))
}

impl ModelSection {
    /// Make `source` (`tiny` stays as it is) and the data path absolute.
    pub(crate) fn resolve(&mut self, base: &Path, data: &mut PathBuf) {
        *data = resolve(base, data);
        if self.source != "tiny" {
            self.source = resolve(base, Path::new(&self.source)).display().to_string();
        }
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if let (Ok(rest), Some(home)) = (p.strip_prefix("~"), std::env::var_os("HOME")) {
        return PathBuf::from(home).join(rest);
    }
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_example_configs_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                let name = p.file_name().unwrap().to_string_lossy().to_string();
                let source = if name.starts_with("grpo-") {
                    crate::rl::GrpoConfig::load(&p).unwrap_or_else(|e| panic!("{}: {e:#}", p.display())).model.source
                } else {
                    crate::sft::SftConfig::load(&p).unwrap_or_else(|e| panic!("{}: {e:#}", p.display())).model.source
                };
                assert!(!source.starts_with('~'), "~ is expanded");
                n += 1;
            }
        }
        assert!(n >= 3);
    }

    #[test]
    fn half_precision_on_the_cpu_is_refused_with_what_to_use() {
        let m = |compute_dtype, device| ModelSection { source: "x.gguf".into(), compute_dtype, device, continue_adapters: false };
        for dtype in [ComputeDtype::Bf16, ComputeDtype::F16] {
            let e = m(dtype, DeviceChoice::Cpu).validate().unwrap_err().to_string();
            assert!(e.contains("f32") && e.contains(&dtype.to_string()), "{e}");
            // "auto" that found no GPU is caught where the device is known.
            let e = dtype.resolve(&Device::Cpu).unwrap_err().to_string();
            assert!(e.contains("CUDA") && e.contains("f32"), "{e}");
        }
        assert!(m(ComputeDtype::Bf16, DeviceChoice::Cuda).validate().is_ok());
        assert!(m(ComputeDtype::Auto, DeviceChoice::Cpu).validate().is_ok() && m(ComputeDtype::F32, DeviceChoice::Cpu).validate().is_ok());
        assert_eq!(ComputeDtype::Auto.resolve(&Device::Cpu).unwrap(), DType::F32);
    }

    #[test]
    fn names_in_the_toml_are_checked_when_read() {
        let ok: ModelSection = toml::from_str("source = \"m.gguf\"\ncompute_dtype = \"bf16\"\ndevice = \"cuda\"\n").unwrap();
        assert_eq!((ok.compute_dtype, ok.device), (ComputeDtype::Bf16, DeviceChoice::Cuda));
        let e = toml::from_str::<ModelSection>("source = \"m.gguf\"\ndevice = \"gpu\"\n").unwrap_err().to_string();
        assert!(e.contains("gpu") && e.contains("cuda") && e.contains("cpu"), "{e}");
        // The JSON a checkpoint's run_config holds is what the strings were.
        assert_eq!(serde_json::to_value(ComputeDtype::Bf16).unwrap(), "bf16");
        assert_eq!(serde_json::to_value(DeviceChoice::Auto).unwrap(), "auto");
    }
}
