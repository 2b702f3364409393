//! The llama.cpp adapter: loading a model, tokenizing safely, and running the
//! budget-forcing controller against real decoding.
//!
//! One llama.cpp backend per process ([`backend`]). An [`Engine`] holds one
//! loaded model and is shared across threads (`Arc<Engine>`); each solve or
//! [`Batch`] gets its own context, and context creation is serialized because
//! llama.cpp mutates the model while creating one. Every solve runs on the
//! batch's one decode loop (a single solve is a batch of one).

mod abort;
mod batch;
mod llama_log;
pub mod quantize;
mod sampling;
mod session;
mod threads;
mod vocab;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaLoraAdapter, LlamaModel};
use serde::{Deserialize, Serialize};

pub use batch::{Batch, BatchConfig, Finished, Job, Sample, SeqToken, Trace, MAX_SLOTS};
pub use sampling::SamplingConfig;
pub use session::{BareDecode, SolveOptions, TeacherForced};
pub use threads::{default_threads, performance_cores};
pub use vocab::Vocab;

use crate::budget::Delimiters;
use crate::error::{ReckonError, Result};
use crate::format::ThinkFormat;
use crate::gguf::{self, GgufFile};

/// Architectures llama.cpp runs as decoder-only text models that reckon's
/// think formats fit. Anything else is refused with a clear error before
/// llama.cpp sees it.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "qwen2", "qwen3", "qwen2moe", "qwen3moe", "llama", "mistral", "mistral3", "gemma", "gemma2",
    "gemma3", "phi2", "phi3", "granite", "granitemoe", "olmo", "olmo2", "deepseek", "deepseek2",
    "smollm3", "exaone", "internlm2", "starcoder2", "stablelm", "falcon", "command-r", "cohere2",
    "glm4", "ernie4_5", "hunyuan-dense", "minicpm", "minicpm3", "gpt2", "gptneox", "bloom",
    "mpt", "starcoder", "baichuan", "orion", "chatglm", "openelm", "bitnet", "granitehybrid",
];

static BACKEND: OnceLock<std::result::Result<LlamaBackend, String>> = OnceLock::new();

/// The process-wide llama.cpp backend, started on first use, with llama.cpp's
/// log routed to the `log` facade (target `llama.cpp`).
pub fn backend() -> Result<&'static LlamaBackend> {
    BACKEND
        .get_or_init(|| {
            llama_log::install();
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| ReckonError::Backend(e.clone()))
}

/// Layers offloaded by default: all of them in a GPU build (CUDA, Metal),
/// none on CPU. The CLI and the bindings take their default from here.
pub const DEFAULT_GPU_LAYERS: u32 = if cfg!(any(feature = "cuda", feature = "metal")) { 999 } else { 0 };

/// How to load a model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineOptions {
    /// Force a think format instead of detecting it.
    pub format: Option<ThinkFormat>,
    /// Layers to offload to the GPU (CUDA builds); 0 on CPU.
    pub gpu_layers: u32,
    /// Upper bound on a solve's context, in tokens (phones: save memory).
    /// `None`: the model's training context.
    pub max_context: Option<u32>,
    /// A GGUF LoRA adapter (`reckon-train export --adapter`) that llama.cpp
    /// applies on top of the model's weights: a fine-tune shipped as a few
    /// megabytes instead of a whole model. Its chat template, when it has
    /// one, replaces the model's (the think format it was trained on).
    pub adapter: Option<PathBuf>,
    /// The adapter's strength: 1.0 as trained, 0.0 off.
    pub adapter_scale: f32,
    /// Batches keep every sequence in one unified KV cache instead of one
    /// stream per sequence: one ubatch per step whatever slots are live, and
    /// a prompt shared by G samples stored once. Measured on a 2-core AVX2
    /// machine at 8 sequences: ~10% more aggregate tok/s, but greedy outputs
    /// agree less often with a single solve (llama.cpp's attention then runs
    /// over the shared cache and rounds differently). Off by default.
    #[serde(default)]
    pub unified_kv: bool,
    /// Batches compute attention with llama.cpp's flash-attention kernel
    /// (its own default on CPU). Off, attention is plain matrix products:
    /// on a 2-core Sapphire Rapids, 32 sequences decoded 1.89x faster
    /// (43.1 -> 81.4 tok/s) and one 1.24x, but the compute buffer then
    /// holds a KQ matrix per head over the ubatch and the whole context, so
    /// long contexts cost more memory. The trainer's rollouts (short
    /// contexts, 32 sequences) turn it off; solves keep the default.
    #[serde(default = "yes")]
    pub flash_attention: bool,
}

fn yes() -> bool {
    true
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            format: None,
            gpu_layers: DEFAULT_GPU_LAYERS,
            max_context: None,
            adapter: None,
            adapter_scale: 1.0,
            unified_kv: false,
            flash_attention: true,
        }
    }
}

/// What a person needs to know about a model file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The file.
    pub path: PathBuf,
    /// `general.name`.
    pub name: Option<String>,
    /// `general.architecture`.
    pub architecture: String,
    /// File size in bytes.
    pub file_size: u64,
    /// Parameters.
    pub n_params: u64,
    /// `general.file_type` as llama.cpp names it (`Q4_K_M`).
    pub quantization: String,
    /// Tensor count per ggml type, most common first.
    pub tensor_types: Vec<(String, usize)>,
    /// Training context length.
    pub context_length: Option<u64>,
    /// Layers.
    pub block_count: Option<u64>,
    /// Embedding width.
    pub embedding_length: Option<u64>,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Whether a chat template is embedded.
    pub has_chat_template: bool,
    /// The think format detected from template and vocabulary.
    pub detected_format: ThinkFormat,
    /// GGUF version.
    pub gguf_version: u32,
}

impl ModelInfo {
    /// Read a GGUF file's header (checked) into an info record. Does not load
    /// the weights; does not need llama.cpp.
    pub fn read(path: &Path) -> Result<(Self, GgufFile)> {
        let file = open_checked(path)?;
        // What llama.cpp would abort on (an unsupported architecture is
        // refused by name by the loader instead).
        if file.architecture().is_some_and(|a| SUPPORTED_ARCHITECTURES.contains(&a)) {
            gguf::check::model(&file).map_err(|e| ReckonError::InvalidModel { path: path.to_path_buf(), source: e.into() })?;
        }
        let arch = file.architecture().unwrap_or("unknown").to_string();
        let key = |k: &str| file.get_u64(&format!("{arch}.{k}"));
        let mut types: std::collections::BTreeMap<&str, usize> = Default::default();
        for t in &file.tensors {
            *types.entry(gguf::type_name(t.ggml_type)).or_default() += 1;
        }
        let mut tensor_types: Vec<(String, usize)> = types.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        tensor_types.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let template = file.get_str("tokenizer.chat_template");
        let tokens = file.tokens();
        let info = ModelInfo {
            path: path.to_path_buf(),
            name: file.get_str("general.name").map(str::to_string),
            architecture: arch.clone(),
            file_size: file.file_size,
            n_params: file.n_params(),
            quantization: file
                .get_u64("general.file_type")
                .map_or("unknown".to_string(), |t| gguf::file_type_name(t).to_string()),
            tensor_types,
            context_length: key("context_length"),
            block_count: key("block_count"),
            embedding_length: key("embedding_length"),
            vocab_size: tokens.len(),
            has_chat_template: template.is_some(),
            detected_format: ThinkFormat::detect(template, tokens.iter().copied()),
            gguf_version: file.version,
        };
        Ok((info, file))
    }
}

/// Check a model path and its GGUF structure before anything else reads it.
pub fn open_checked(path: &Path) -> Result<GgufFile> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ReckonError::ModelNotFound(path.to_path_buf()))
        }
        Err(e) => return Err(ReckonError::io(format!("reading {}", path.display()), e)),
    };
    if meta.is_dir() {
        return Err(ReckonError::ModelIsDirectory(path.to_path_buf()));
    }
    GgufFile::open(path).map_err(|source| ReckonError::InvalidModel { path: path.to_path_buf(), source })
}

/// Check a GGUF LoRA adapter against the model, then have llama.cpp load it.
/// Returns the adapter and its chat template, if it carries one.
fn load_adapter(model: &mut LlamaModel, path: &Path, info: &ModelInfo, scale: f32) -> Result<(LlamaLoraAdapter, Option<String>)> {
    let bad = |reason: String| ReckonError::InvalidAdapter { path: path.to_path_buf(), reason };
    if !scale.is_finite() {
        return Err(ReckonError::InvalidOption(format!("adapter scale {scale} is not a finite number")));
    }
    let file = match open_checked(path) {
        Ok(f) => f,
        Err(ReckonError::ModelNotFound(_)) => return Err(bad("no such file".into())),
        Err(e) => return Err(bad(e.to_string())),
    };
    let kind = (file.get_str("general.type"), file.get_str("adapter.type"));
    if kind != (Some("adapter"), Some("lora")) {
        return Err(bad(format!(
            "not a LoRA adapter (general.type = {:?}, adapter.type = {:?}; export one with `reckon-train export --adapter`)",
            kind.0, kind.1
        )));
    }
    let arch = file.get_str("general.architecture").unwrap_or("unknown");
    if arch != info.architecture {
        return Err(bad(format!("it was trained for a {arch} model, this model is {}", info.architecture)));
    }
    let template = file.get_str("tokenizer.chat_template").map(str::to_string);
    drop(file);
    let adapter = model.lora_adapter_init(path).map_err(|e| {
        bad(format!("llama.cpp refused it ({e}): its tensors do not fit this model; was it trained on another base? (RUST_LOG=llama.cpp=debug shows why)"))
    })?;
    log::info!("LoRA adapter {} applied at scale {scale}", path.display());
    Ok((adapter, template))
}

/// Free a LoRA adapter now. llama.cpp otherwise frees adapters only with
/// their model, so swapping one per training step would keep every one.
/// Call only when no context uses it.
fn free_adapter(adapter: LlamaLoraAdapter) {
    // llama-cpp-2 keeps the pointer private and has no Drop for it; the
    // wrapper is one `#[repr(transparent)]` non-null pointer (transmute
    // checks the size).
    // SAFETY: the value is exactly the adapter's pointer, owned by us and
    // used by no live context (the caller holds the engine mutably).
    let ptr: *mut llama_cpp_sys_2::llama_adapter_lora = unsafe { std::mem::transmute(adapter) };
    unsafe { llama_cpp_sys_2::llama_adapter_lora_free(ptr) };
}

/// A loaded model, ready to solve questions from any thread.
pub struct Engine {
    pub(crate) model: LlamaModel,
    pub(crate) vocab: Vocab,
    pub(crate) delims: Delimiters,
    pub(crate) template: Option<String>,
    pub(crate) info: ModelInfo,
    pub(crate) format: ThinkFormat,
    pub(crate) options: EngineOptions,
    pub(crate) load_ms: f64,
    /// llama.cpp mutates the model while creating a context.
    pub(crate) context_lock: Mutex<()>,
    /// The LoRA adapter set on every context (llama.cpp wants it mutable).
    pub(crate) adapter: Option<Mutex<LlamaLoraAdapter>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("info", &self.info).field("format", &self.format).finish()
    }
}

impl Engine {
    /// Load a GGUF model. The file is checked first (path, GGUF structure,
    /// architecture); llama.cpp only sees files that pass.
    pub fn load(path: impl AsRef<Path>, options: EngineOptions) -> Result<Self> {
        let path = path.as_ref();
        let start = Instant::now();
        let (info, file) = ModelInfo::read(path)?;
        if !SUPPORTED_ARCHITECTURES.contains(&info.architecture.as_str()) {
            return Err(ReckonError::UnsupportedArchitecture {
                path: path.to_path_buf(),
                arch: info.architecture.clone(),
            });
        }
        if file.tokens().is_empty() {
            return Err(ReckonError::ModelLoad { path: path.to_path_buf(), reason: "the file has no vocabulary".into() });
        }
        if let Some(max) = options.max_context {
            if max < 64 {
                return Err(ReckonError::InvalidOption(format!("max context {max} is below 64 tokens")));
            }
        }
        let backend = backend()?;
        let params = LlamaModelParams::default().with_n_gpu_layers(options.gpu_layers);
        let mut model = LlamaModel::load_from_file(backend, path, &params).map_err(|e| ReckonError::ModelLoad {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let (adapter, adapter_template) = match &options.adapter {
            Some(a) => {
                let (adapter, template) = load_adapter(&mut model, a, &info, options.adapter_scale)?;
                (Some(Mutex::new(adapter)), template)
            }
            None => (None, None),
        };
        let vocab = Vocab::new(&model);
        let detected = match &adapter_template {
            Some(t) => ThinkFormat::detect(Some(t.as_str()), file.tokens().iter().copied()),
            None => info.detected_format,
        };
        let template = adapter_template.or_else(|| file.get_str("tokenizer.chat_template").map(str::to_string));
        let format = options.format.unwrap_or(detected);
        let delims = vocab.delimiters(&model, format);
        drop(file);
        let load_ms = start.elapsed().as_secs_f64() * 1e3;
        log::info!("loaded {} ({}, {} format) in {load_ms:.0} ms", path.display(), info.quantization, format);
        Ok(Self {
            model,
            vocab,
            delims,
            template,
            info,
            format,
            options,
            load_ms,
            context_lock: Mutex::new(()),
            adapter,
        })
    }

    /// Replace the LoRA adapter (`None`: remove it) without reloading the
    /// model, as an RL trainer does every step. The file is checked as at
    /// load time; on an error the old adapter stays. The think format and
    /// chat template stay those chosen at load time.
    pub fn set_adapter(&mut self, path: Option<&Path>, scale: f32) -> Result<()> {
        let new = match path {
            Some(p) => Some(load_adapter(&mut self.model, p, &self.info, scale)?.0),
            None => None,
        };
        if let Some(old) = self.adapter.take() {
            free_adapter(old.into_inner().unwrap_or_else(|p| p.into_inner()));
        }
        self.adapter = new.map(Mutex::new);
        self.options.adapter = path.map(Path::to_path_buf);
        self.options.adapter_scale = scale;
        Ok(())
    }

    /// What the file is.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The think format in use.
    pub fn format(&self) -> ThinkFormat {
        self.format
    }

    /// Model load time in milliseconds.
    pub fn load_ms(&self) -> f64 {
        self.load_ms
    }

    /// The tokenizer and token tables.
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// The token sequences of the think format in use.
    pub fn delimiters(&self) -> &Delimiters {
        &self.delims
    }

    /// Tokenize text: as a person's text (`special = false`: special-token
    /// text stays plain) or as template scaffolding (`special = true`).
    /// Plain text that would yield a special token is an error (it never
    /// does; the check runs in every build).
    pub fn tokenize(&self, text: &str, special: bool) -> Result<Vec<crate::budget::TokenId>> {
        if special {
            Ok(self.vocab.tokenize_special(&self.model, text))
        } else {
            self.vocab.tokenize_plain(&self.model, text)
        }
    }

    /// The largest context a solve may use.
    pub fn context_limit(&self) -> u32 {
        let train = self.model.n_ctx_train();
        self.options.max_context.map_or(train, |m| m.min(train))
    }
}
