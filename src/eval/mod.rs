//! Dataset evaluation under a sweep of thinking budgets: accuracy against
//! tokens used, per model and budget, the way the paper draws it.
//!
//! Records are appended to `OUT/records/<model>/<config>.jsonl` as each
//! problem finishes, one whole line per write; re-running the same command
//! reads them back and solves only what is missing. A half-written last line
//! (a kill in the middle of a write) is cut off and redone.

pub mod compare;
pub mod data;
pub mod plot;
pub mod report;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::answer::{answers_match, majority_vote, VoteCount};
use crate::budget::{BudgetConfig, ThinkEnd};
use crate::engine::{Engine, EngineOptions, Job, SolveOptions};
use crate::error::{ReckonError, Result};
use crate::events::{FinishReason, SolveResult};
pub use data::{OnBadLine, Problem};
pub use report::{ConfigSummary, Summary};

/// Sequences an evaluation decodes together unless told otherwise: the
/// fastest measured on the 2-core reference machine (40 GSM8K problems at
/// cap 256: 232 s at 16, 281 s at 8, 491 s at 1).
pub const DEFAULT_PARALLEL: u32 = 16;

/// One point of the budget sweep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalConfig {
    /// Name used in files and tables (`cap256`, `cap1024+wait2`).
    pub label: String,
    /// Thinking cap.
    pub max_thinking_tokens: u32,
    /// Natural ends to ignore ("Wait" appended), s1's sequential scaling.
    pub extensions: u32,
}

impl EvalConfig {
    /// A cap with no extensions.
    pub fn cap(cap: u32) -> Self {
        Self { label: format!("cap{cap}"), max_thinking_tokens: cap, extensions: 0 }
    }

    /// A cap with `n` forced extensions.
    pub fn extended(cap: u32, n: u32) -> Self {
        let label = if n == 0 { format!("cap{cap}") } else { format!("cap{cap}+wait{n}") };
        Self { label, max_thinking_tokens: cap, extensions: n }
    }

    /// The sweep: one config per cap, and one per extension count at
    /// `ext_cap`; duplicates removed, order kept.
    pub fn sweep(caps: &[u32], extensions: &[u32], ext_cap: u32) -> Vec<Self> {
        let mut out: Vec<Self> = caps.iter().map(|&c| Self::cap(c)).collect();
        for &n in extensions {
            let c = Self::extended(ext_cap, n);
            if !out.contains(&c) {
                out.push(c);
            }
        }
        out
    }
}

/// One solved problem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Problem id (index in the dataset).
    pub id: usize,
    /// The question.
    pub question: String,
    /// The gold answer.
    pub gold: String,
    /// The extracted answer.
    pub extracted: Option<String>,
    /// Whether it matches the gold answer.
    pub correct: bool,
    /// Thinking tokens generated.
    pub thinking_tokens: u32,
    /// Thinking tokens injected ("Wait").
    pub injected_tokens: u32,
    /// Answer tokens generated.
    pub answer_tokens: u32,
    /// Extensions used.
    pub extensions: u32,
    /// Whether the end of thinking was forced.
    pub forced: bool,
    /// How thinking ended.
    pub think_end: Option<ThinkEnd>,
    /// How the solve ended.
    pub finish: FinishReason,
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Wall time this problem took of the run: since the previous problem
    /// finished (with one sequence at a time, its solve time; in a batch,
    /// the run's wall time divided among its problems).
    pub wall_ms: f64,
    /// From the start of its solve to its end (in a batch, shared with the
    /// other sequences).
    #[serde(default)]
    pub latency_ms: f64,
    /// Completions drawn (self-consistency); token counts are their sums,
    /// the extracted answer their majority vote.
    #[serde(default = "one")]
    pub samples: u32,
    /// The vote, when there were several samples.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub votes: Vec<VoteCount>,
    /// Decode tokens per second.
    pub decode_tok_s: f64,
    /// The thinking text.
    pub thinking: String,
    /// The answer text.
    pub answer: String,
    /// Why the solve failed, when it did (the record then counts as wrong,
    /// and the sweep goes on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn one() -> u32 {
    1
}

impl Record {
    /// The record of a problem from its completions (one, or several whose
    /// answers are put to a majority vote). `wall_ms` is left to the caller.
    pub fn from_results(problem: &Problem, results: &[SolveResult]) -> Self {
        let sum = |f: fn(&SolveResult) -> u32| results.iter().map(f).sum::<u32>();
        let vote = majority_vote(results.iter().map(|r| r.extracted_answer.as_deref()));
        let extracted = if results.len() == 1 { results[0].extracted_answer.clone() } else { vote.answer.clone() };
        // The text shown: the first completion that gave the chosen answer.
        let shown = results
            .iter()
            .find(|r| r.extracted_answer.is_some() && r.extracted_answer == extracted)
            .unwrap_or(&results[0]);
        Record {
            id: problem.id,
            question: problem.question.clone(),
            gold: problem.gold.clone(),
            correct: extracted.as_deref().is_some_and(|a| answers_match(a, &problem.gold)),
            extracted,
            thinking_tokens: sum(|r| r.thinking_tokens),
            injected_tokens: sum(|r| r.injected_tokens),
            answer_tokens: sum(|r| r.answer_tokens),
            extensions: sum(|r| r.extensions),
            forced: shown.forced_end,
            think_end: shown.think_end,
            finish: shown.finish,
            prompt_tokens: shown.prompt_tokens,
            wall_ms: 0.0,
            latency_ms: results.iter().map(|r| r.timings.total_ms).fold(0.0, f64::max),
            decode_tok_s: results.iter().map(|r| r.timings.decode_tok_s).sum::<f64>() / results.len() as f64,
            thinking: shown.thinking.clone(),
            answer: shown.answer.clone(),
            samples: results.len() as u32,
            votes: if results.len() > 1 { vote.tally } else { Vec::new() },
            error: None,
        }
    }

    /// The record of a problem whose solve failed: wrong, no tokens, the error.
    pub fn failed(problem: &Problem, error: &ReckonError, samples: u32) -> Self {
        Record {
            id: problem.id,
            question: problem.question.clone(),
            gold: problem.gold.clone(),
            extracted: None,
            correct: false,
            thinking_tokens: 0,
            injected_tokens: 0,
            answer_tokens: 0,
            extensions: 0,
            forced: false,
            think_end: None,
            finish: FinishReason::Stopped,
            prompt_tokens: 0,
            wall_ms: 0.0,
            latency_ms: 0.0,
            samples,
            votes: Vec::new(),
            decode_tok_s: 0.0,
            thinking: String::new(),
            answer: String::new(),
            error: Some(error.to_string()),
        }
    }

    /// Thinking tokens, injected included (what the cap bounds).
    pub fn total_thinking(&self) -> u32 {
        self.thinking_tokens + self.injected_tokens
    }

    /// Tokens the model generated.
    pub fn generated(&self) -> u32 {
        self.thinking_tokens + self.answer_tokens
    }
}

/// A whole evaluation.
#[derive(Debug, Clone)]
pub struct EvalPlan {
    /// Models to evaluate, each with its own adapter or none.
    pub models: Vec<EvalModel>,
    /// Problems.
    pub problems: Vec<Problem>,
    /// Budget sweep.
    pub configs: Vec<EvalConfig>,
    /// Options shared by every solve; the budget's cap and extensions are
    /// set per config.
    pub base: SolveOptions,
    /// Output folder.
    pub out: PathBuf,
    /// Show a progress bar.
    pub progress: bool,
    /// Only summarize the records already on disk (partial results of a
    /// run still going, or interrupted); solve nothing.
    pub report_only: bool,
    /// Sequences decoded together (continuous batching); `None`:
    /// [`DEFAULT_PARALLEL`], or as many as fit the context.
    pub parallel: Option<u32>,
    /// Completions per problem, answered by majority vote (1: none).
    pub samples: u32,
    /// Think format for every model (`None`: detected from each).
    pub format: Option<crate::format::ThinkFormat>,
    /// Largest context to allocate (`None`: the model's).
    pub max_context: Option<u32>,
    /// llama.cpp's flash-attention kernel in the batches (see
    /// [`EngineOptions::flash_attention`]). A kernel choice, like the thread
    /// count, so not part of what must match for records to be reused;
    /// greedy paths may part where two tokens are near a tie.
    pub flash_attention: bool,
}

/// What must match for records in `out` to be reused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunKey {
    sampling: crate::engine::SamplingConfig,
    system_prompt: Option<String>,
    max_answer_tokens: u32,
    min_thinking_tokens: u32,
    #[serde(default = "one")]
    samples: u32,
    /// A think format forced on every model (absent: each model's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    format: Option<crate::format::ThinkFormat>,
}

/// One model of an evaluation: a GGUF and, optionally, a LoRA adapter
/// applied on top of it.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalModel {
    /// The base GGUF.
    pub path: PathBuf,
    /// A GGUF LoRA adapter for it.
    pub adapter: Option<PathBuf>,
}

impl EvalModel {
    /// A model without an adapter.
    pub fn plain(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), adapter: None }
    }

    /// `MODEL.gguf` or `MODEL.gguf+ADAPTER.gguf`. A path that exists as
    /// given is a model even if it holds a `+`; otherwise the split is at
    /// the `+` whose left side is an existing file.
    pub fn parse(spec: &str) -> Result<Self> {
        if Path::new(spec).is_file() || !spec.contains('+') {
            return Ok(Self::plain(spec));
        }
        for (i, _) in spec.match_indices('+') {
            let (model, adapter) = (&spec[..i], &spec[i + 1..]);
            if Path::new(model).is_file() {
                if adapter.is_empty() {
                    return Err(ReckonError::InvalidOption(format!("'{spec}': no adapter after '+' (give MODEL.gguf+ADAPTER.gguf)")));
                }
                return Ok(Self { path: model.into(), adapter: Some(adapter.into()) });
            }
        }
        Err(ReckonError::InvalidOption(format!("'{spec}': neither it nor the part before a '+' is a model file (give MODEL.gguf or MODEL.gguf+ADAPTER.gguf)")))
    }

    fn stem(p: &Path) -> String {
        p.file_stem().and_then(|s| s.to_str()).unwrap_or("model").to_string()
    }
}

/// A label per model: the file stem (`+` the adapter's), made unique.
pub fn model_labels(models: &[EvalModel]) -> Vec<String> {
    let mut labels: Vec<String> = Vec::new();
    for m in models {
        let stem = match &m.adapter {
            None => EvalModel::stem(&m.path),
            Some(a) => format!("{}+{}", EvalModel::stem(&m.path), EvalModel::stem(a)),
        };
        let mut label = stem.clone();
        let mut i = 2;
        while labels.contains(&label) {
            label = format!("{stem}-{i}");
            i += 1;
        }
        labels.push(label);
    }
    labels
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ReckonError {
    let what = what.into();
    move |e| ReckonError::io(what, e)
}

/// Read the records of a file, cutting off a half-written last line.
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    read_records_with(path, true)
}

/// Read the records of a file; with `repair`, truncate the file after the
/// last whole record (never while another process may be writing it).
pub fn read_records_with(path: &Path, repair: bool) -> Result<Vec<Record>> {
    let Ok(file) = File::open(path) else { return Ok(Vec::new()) };
    let mut records = Vec::new();
    let mut good_len = 0u64;
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).map_err(io(format!("reading {}", path.display())))?;
        if n == 0 {
            break;
        }
        match (line.ends_with('\n'), serde_json::from_str::<Record>(line.trim_end())) {
            (true, Ok(r)) => {
                records.push(r);
                good_len += n as u64;
            }
            (false, _) => {
                if repair {
                    log::warn!("{}: cutting off a half-written last record; it will be redone", path.display());
                }
                break;
            }
            (true, Err(e)) => {
                return Err(ReckonError::InvalidOption(format!(
                    "{}: record {} is corrupt ({e}); delete the file to redo it",
                    path.display(),
                    records.len() + 1
                )))
            }
        }
    }
    let len = std::fs::metadata(path).map_err(io("reading records"))?.len();
    if repair && len != good_len {
        OpenOptions::new().write(true).open(path).and_then(|f| f.set_len(good_len)).map_err(io("truncating records"))?;
    }
    Ok(records)
}

/// Run (or resume) an evaluation and write its reports.
pub fn run(plan: &EvalPlan) -> Result<Summary> {
    if plan.samples > 1 && plan.base.sampling.temperature <= 0.0 {
        return Err(ReckonError::InvalidOption(format!(
            "{} samples per problem need a temperature above 0: greedy samples are all the same",
            plan.samples
        )));
    }
    std::fs::create_dir_all(&plan.out).map_err(io(format!("creating {}", plan.out.display())))?;
    check_run_key(plan)?;
    let labels = model_labels(&plan.models);
    if plan.report_only {
        let summary = report::summarize(plan, &labels)?;
        report::write_all(&summary, &plan.out)?;
        return Ok(summary);
    }

    check_models(plan, &labels)?;
    // What is left, for the progress bar; records made from other data
    // than this run's are refused, not reused.
    let by_id: std::collections::HashMap<usize, &Problem> = plan.problems.iter().map(|p| (p.id, p)).collect();
    let mut remaining = 0u64;
    for label in &labels {
        for c in &plan.configs {
            let path = records_path(&plan.out, label, &c.label);
            let done = read_records(&path)?;
            if let Some(r) = done.iter().find(|r| by_id.get(&r.id).is_some_and(|p| p.question != r.question || p.gold != r.gold)) {
                return Err(ReckonError::InvalidOption(format!(
                    "{} was made from other data: problem {} there is not problem {} of this --data; use a new --out",
                    path.display(),
                    r.id,
                    r.id
                )));
            }
            let done: std::collections::HashSet<usize> = done.iter().map(|r| r.id).collect();
            remaining += plan.problems.iter().filter(|p| !done.contains(&p.id)).count() as u64;
        }
    }
    let bar = if plan.progress { indicatif::ProgressBar::new(remaining) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta_precise}")
            .expect("valid template")
            .progress_chars("=> "),
    );

    for (model, label) in plan.models.iter().zip(&labels) {
        let mut engine: Option<Engine> = None;
        for c in &plan.configs {
            let path = records_path(&plan.out, label, &c.label);
            let existing = read_records(&path)?;
            let done: std::collections::HashSet<usize> = existing.iter().map(|r| r.id).collect();
            let (mut n, mut correct) = (existing.len(), existing.iter().filter(|r| r.correct).count());
            let todo: Vec<&Problem> = plan.problems.iter().filter(|p| !done.contains(&p.id)).collect();
            if todo.is_empty() {
                continue;
            }
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
            }
            let mut file = OpenOptions::new().create(true).append(true).open(&path).map_err(io(format!("opening {}", path.display())))?;
            let engine = match &mut engine {
                Some(e) => e,
                None => engine.insert(Engine::load(
                    &model.path,
                    EngineOptions {
                        adapter: model.adapter.clone(),
                        format: plan.format,
                        max_context: plan.max_context,
                        flash_attention: plan.flash_attention,
                        ..EngineOptions::default()
                    },
                )?),
            };
            let options = SolveOptions {
                budget: BudgetConfig {
                    max_thinking_tokens: c.max_thinking_tokens,
                    max_extensions: (c.extensions > 0).then_some(c.extensions),
                    min_thinking_tokens: plan.base.budget.min_thinking_tokens.min(c.max_thinking_tokens),
                    ..plan.base.budget.clone()
                },
                ..plan.base.clone()
            };
            let k = plan.samples.max(1);
            // The default parallelism shrinks to what fits the context; an
            // explicit one is refused when it does not fit.
            let mut slots = plan.parallel.unwrap_or(DEFAULT_PARALLEL).max(k);
            if plan.parallel.is_none() {
                let widest = todo.iter().filter_map(|p| engine.prompt_tokens(&p.question, &options).ok()).map(|t| t.len()).max().unwrap_or(0);
                if let Ok(slot) = engine.slot_context(widest, &options.budget) {
                    let slot = u64::from(slot.div_ceil(256) * 256);
                    let fits = (u64::from(engine.context_limit()) / slot).max(1) as u32;
                    if fits < slots {
                        log::info!("{} parallel sequences fit the context at cap {} (not {slots})", fits.max(k), c.max_thinking_tokens);
                        slots = fits.max(k);
                    }
                }
            }
            let jobs: Vec<Job> = todo
                .iter()
                .enumerate()
                .map(|(j, p)| Job::group(j as u64 * u64::from(k), p.question.clone(), options.clone(), k))
                .collect();
            let mut pending: std::collections::HashMap<usize, Vec<Result<SolveResult>>> = Default::default();
            let mut failure: Option<ReckonError> = None;
            let mut last = std::time::Instant::now();
            engine.solve_queue(jobs, slots, plan.base.threads, &mut |f| {
                let j = (f.tag / u64::from(k)) as usize;
                if let Err(e) = &f.result {
                    log::warn!("{label} {}: problem {} failed: {e}", c.label, todo[j].id);
                }
                let results = pending.entry(j).or_default();
                results.push(f.result);
                if results.len() < k as usize || failure.is_some() {
                    return;
                }
                // One failed solve is a wrong record and the sweep goes on;
                // of several samples, the ones that finished are voted on.
                let (mut oks, mut error) = (Vec::new(), None);
                for r in pending.remove(&j).unwrap_or_default() {
                    match r {
                        Ok(r) => oks.push(r),
                        Err(e) => {
                            error.get_or_insert(e);
                        }
                    }
                }
                let mut record = match error {
                    Some(e) if oks.is_empty() => Record::failed(todo[j], &e, k),
                    _ => Record::from_results(todo[j], &oks),
                };
                record.wall_ms = last.elapsed().as_secs_f64() * 1e3;
                last = std::time::Instant::now();
                let written = serde_json::to_string(&record)
                    .map_err(|e| ReckonError::Internal(e.to_string()))
                    .and_then(|mut line| {
                        line.push('\n');
                        // One write per record: a kill leaves at most a partial last line.
                        file.write_all(line.as_bytes()).map_err(io(format!("writing {}", path.display())))
                    });
                if let Err(e) = written {
                    failure.get_or_insert(e);
                    return;
                }
                n += 1;
                correct += usize::from(record.correct);
                bar.set_message(format!("{label} {} acc {:.1}%", c.label, 100.0 * correct as f64 / n as f64));
                bar.inc(1);
            })?;
            if let Some(e) = failure {
                return Err(e);
            }
            file.flush().map_err(io("flushing records"))?;
        }
    }
    bar.finish_and_clear();
    let summary = report::summarize(plan, &labels)?;
    report::write_all(&summary, &plan.out)?;
    Ok(summary)
}

/// Where a (model, config)'s records go.
pub fn records_path(out: &Path, model_label: &str, config_label: &str) -> PathBuf {
    out.join("records").join(model_label).join(format!("{config_label}.jsonl"))
}

fn check_run_key(plan: &EvalPlan) -> Result<()> {
    let key = RunKey {
        sampling: plan.base.sampling.clone(),
        system_prompt: plan.base.system_prompt.clone(),
        max_answer_tokens: plan.base.budget.max_answer_tokens,
        min_thinking_tokens: plan.base.budget.min_thinking_tokens,
        samples: plan.samples,
        format: plan.format,
    };
    let path = plan.out.join("run.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let old: RunKey = serde_json::from_str(&text)
            .map_err(|e| ReckonError::InvalidOption(format!("{} is corrupt ({e}); use a new --out", path.display())))?;
        if old != key {
            return Err(ReckonError::InvalidOption(format!(
                "{} holds records made with other sampling or answer settings; use a new --out (or delete it)",
                plan.out.display()
            )));
        }
        return Ok(());
    }
    let text = serde_json::to_string_pretty(&key).map_err(|e| ReckonError::Internal(e.to_string()))?;
    write_atomic(&path, text.as_bytes())
}

/// Write a file whole or not at all: a temporary file beside it, renamed
/// over it (a crash never leaves half a summary).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io(format!("creating a file in {}", dir.display())))?;
    tmp.write_all(bytes).map_err(io(format!("writing {}", path.display())))?;
    tmp.persist(path).map_err(|e| ReckonError::io(format!("writing {}", path.display()), e.error))?;
    Ok(())
}

/// What identifies a model file: its size and the SHA-256 of its first
/// and last MiB (cheap, and different for any two real models).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileId {
    bytes: u64,
    ends_sha256: String,
}

impl FileId {
    fn of(path: &Path) -> Result<Self> {
        use sha2::{Digest, Sha256};
        use std::io::{Read, Seek, SeekFrom};
        let mut f = File::open(path).map_err(io(format!("opening {}", path.display())))?;
        let bytes = f.metadata().map_err(io(format!("reading {}", path.display())))?.len();
        let mut h = Sha256::new();
        let mut buf = vec![0u8; (1 << 20).min(bytes as usize)];
        f.read_exact(&mut buf).map_err(io(format!("reading {}", path.display())))?;
        h.update(&buf);
        f.seek(SeekFrom::Start(bytes - buf.len() as u64)).map_err(io(format!("reading {}", path.display())))?;
        f.read_exact(&mut buf).map_err(io(format!("reading {}", path.display())))?;
        h.update(&buf);
        let ends_sha256 = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok(FileId { bytes, ends_sha256 })
    }
}

/// The files behind one model label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ModelId {
    model: FileId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    adapter: Option<FileId>,
}

/// Records are kept per model label (file stems); `models.json` pins what
/// file each label was made from, so another file of the same name (or a
/// retrained adapter) is refused instead of mixed in.
fn check_models(plan: &EvalPlan, labels: &[String]) -> Result<()> {
    let path = plan.out.join("models.json");
    let mut known: std::collections::BTreeMap<String, ModelId> = match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| ReckonError::InvalidOption(format!("{} is corrupt ({e}); use a new --out", path.display())))?,
        Err(_) => Default::default(),
    };
    let before = known.clone();
    for (m, label) in plan.models.iter().zip(labels) {
        if !m.path.is_file() {
            continue; // the engine says what is wrong with it
        }
        let id = ModelId { model: FileId::of(&m.path)?, adapter: m.adapter.as_deref().filter(|a| a.is_file()).map(FileId::of).transpose()? };
        match known.get(label) {
            Some(old) if *old != id => {
                return Err(ReckonError::InvalidOption(format!(
                    "{}: the records of '{label}' were made with another file of that name (size or contents differ); use a new --out",
                    plan.out.display()
                )))
            }
            Some(_) => {}
            None => {
                known.insert(label.clone(), id);
            }
        }
    }
    if known != before {
        let text = serde_json::to_string_pretty(&known).map_err(|e| ReckonError::Internal(e.to_string()))?;
        write_atomic(&path, text.as_bytes())?;
    }
    Ok(())
}
