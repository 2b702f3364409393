//! `reckon bench`: side-by-side figures on the same threads and prompt.
//!
//! * Per model (e.g. one model in several quantizations): file size, prefill
//!   tok/s, time to first token, and decode tok/s of a budget-forced solve
//!   against a bare llama-cpp-2 greedy loop decoding as many tokens from the
//!   same prompt (the ratio is the runtime's overhead; the floor is 0.97).
//! * On the first model, a run with forced "Wait" extensions: continuing the
//!   kept KV cache (reckon) against the s1-style stateless approach of
//!   re-submitting prompt plus partial thinking at each extension, as a
//!   wall-time ratio; and the cost of an injected token against a generated one.
//! * Peak RSS of the process.
//!
//! Runs alternate (solve, bare, solve, bare, ...) and medians are reported.

use std::path::PathBuf;

use clap::Args;
use reckon::budget::{BudgetConfig, InjectReason, Segment};
use reckon::engine::{Engine, EngineOptions, SolveOptions};
use reckon::eval::report::median;
use reckon::events::{Event, Silent};
use reckon::models;
use serde::Serialize;

/// A GSM8K test question (the first of the test split).
pub const SAMPLE_QUESTION: &str = "Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck egg. How much in dollars does she make every day at the farmers' market?";

/// A question the model ends quickly, so that extensions come often.
const SHORT_QUESTION: &str = "What is 12 + 30? Reply with only the number.";

#[derive(Args)]
pub struct BenchArgs {
    /// GGUF model file(s); repeat to compare quantizations (default: the default model).
    #[arg(long, short)]
    model: Vec<PathBuf>,
    /// CPU threads.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Repetitions of each measurement (medians are reported).
    #[arg(long, default_value_t = 3)]
    repeat: u32,
    /// Thinking cap for the solve.
    #[arg(long, default_value_t = 256)]
    max_think: u32,
    /// Extensions forced in the extension run.
    #[arg(long, default_value_t = 4)]
    extensions: u32,
    /// Thinking cap of the extension run.
    #[arg(long, default_value_t = 1024)]
    extension_cap: u32,
    /// The question.
    #[arg(long, default_value = SAMPLE_QUESTION)]
    question: String,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct ModelRow {
    model: String,
    quantization: String,
    file_mib: f64,
    load_ms: f64,
    prompt_tokens: u32,
    prefill_tok_s: f64,
    ttft_ms: f64,
    solve_tokens: u32,
    solve_decode_tok_s: f64,
    bare_decode_tok_s: f64,
    /// Solve generation tok/s over bare loop decode tok/s (floor 0.97).
    decode_ratio: f64,
}

#[derive(Debug, Serialize)]
struct ExtensionRow {
    extensions: u32,
    thinking_tokens: u32,
    injected_tokens: u32,
    /// Generation wall time continuing the kept KV cache (reckon).
    kept_cache_ms: f64,
    /// The same generation if prompt + thinking were re-submitted at each
    /// extension (a stateless server, s1's reference code).
    resubmit_ms: f64,
    /// resubmit_ms / kept_cache_ms.
    resubmit_over_kept: f64,
    /// Milliseconds per injected token, decoded on the kept cache.
    injected_ms_per_token: f64,
    /// Milliseconds per generated token in the same run.
    generated_ms_per_token: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    threads: u32,
    repeat: u32,
    models: Vec<ModelRow>,
    extension: Option<ExtensionRow>,
    peak_rss_mib: f64,
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn bar(hidden: bool, len: u64) -> anyhow::Result<indicatif::ProgressBar> {
    let b = if hidden { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(len) };
    b.set_style(indicatif::ProgressStyle::with_template("{msg:>24} [{bar:30}] {pos}/{len} eta {eta}")?);
    Ok(b)
}

fn model_row(engine: &Engine, args: &BenchArgs, opts: &SolveOptions, bar: &indicatif::ProgressBar) -> anyhow::Result<ModelRow> {
    let prompt = engine.prompt_tokens(&args.question, opts)?;
    let (mut prefill, mut ttft, mut solve, mut bare, mut ratio) = (vec![], vec![], vec![], vec![], vec![]);
    // Warm up: the first pass over an mmap-ed model pays page faults.
    let warm = engine.solve(&args.question, opts, &mut Silent, None)?;
    engine.bare_decode(&prompt, 8, opts.threads)?;
    let tokens = warm.sampled_tokens.max(1);
    for i in 0..args.repeat.max(1) {
        // Alternate which goes first, so drift on a noisy machine cancels.
        let mut run_solve = || -> anyhow::Result<f64> {
            bar.set_message("solve");
            let r = engine.solve(&args.question, opts, &mut Silent, None)?;
            prefill.push(r.timings.prefill_tok_s);
            ttft.push(r.timings.ttft_ms);
            // The generation loop's speed: time decoding injected tokens
            // (the forced delimiter, "Wait") is budget forcing's work, not
            // overhead, and the bare loop has none to do.
            let gen_ms = r.timings.decode_ms - r.timings.injected_decode_ms;
            let tps = f64::from(r.sampled_tokens) / (gen_ms / 1e3);
            bar.inc(1);
            Ok(tps)
        };
        let run_bare = || -> anyhow::Result<f64> {
            bar.set_message("bare loop");
            let b = engine.bare_decode(&prompt, tokens, opts.threads)?;
            bar.inc(1);
            Ok(b.decode_tok_s)
        };
        let (s, b) = if i % 2 == 0 {
            let s = run_solve()?;
            (s, run_bare()?)
        } else {
            let b = run_bare()?;
            (run_solve()?, b)
        };
        solve.push(s);
        bare.push(b);
        ratio.push(s / b);
    }
    let info = engine.info();
    Ok(ModelRow {
        model: info.path.display().to_string(),
        quantization: info.quantization.clone(),
        file_mib: info.file_size as f64 / f64::from(1 << 20),
        load_ms: engine.load_ms(),
        prompt_tokens: prompt.len() as u32,
        prefill_tok_s: median(prefill),
        ttft_ms: median(ttft),
        solve_tokens: tokens,
        solve_decode_tok_s: median(solve),
        bare_decode_tok_s: median(bare),
        decode_ratio: median(ratio),
    })
}

fn extension_row(engine: &Engine, args: &BenchArgs, base: &SolveOptions, bar: &indicatif::ProgressBar) -> anyhow::Result<ExtensionRow> {
    let opts = SolveOptions {
        budget: BudgetConfig {
            max_extensions: Some(args.extensions),
            max_thinking_tokens: args.extension_cap,
            max_answer_tokens: 16,
            ..BudgetConfig::default()
        },
        ..base.clone()
    };
    let prompt = engine.prompt_tokens(SHORT_QUESTION, &opts)?;
    let (mut kept, mut resubmit, mut inj, mut gen) = (vec![], vec![], vec![], vec![]);
    let mut last = None;
    for _ in 0..args.repeat.max(1) {
        bar.set_message("extensions");
        // The thinking text at each extension: what a stateless server
        // would have to re-submit.
        let mut thinking = String::new();
        let mut at_extension: Vec<String> = Vec::new();
        let r = engine.solve(SHORT_QUESTION, &opts, &mut |e: &Event| {
            match e {
                Event::Thinking { text } => thinking.push_str(text),
                Event::Injected { segment: Segment::Thinking, text, reason } => {
                    thinking.push_str(text);
                    if *reason == InjectReason::Extension {
                        at_extension.push(thinking.clone());
                    }
                }
                _ => {}
            }
            true
        }, None)?;
        let mut resubmit_prefill = 0.0;
        for t in &at_extension {
            let mut seq = prompt.clone();
            seq.extend(engine.tokenize(t, false));
            resubmit_prefill += engine.prefill_ms(&seq, opts.threads)?;
        }
        let t = &r.timings;
        let injected = r.injected_tokens + r.delimiter_tokens;
        kept.push(t.decode_ms);
        resubmit.push(t.decode_ms - t.injected_decode_ms + resubmit_prefill);
        if injected > 0 {
            inj.push(t.injected_decode_ms / f64::from(injected));
        }
        gen.push((t.decode_ms - t.injected_decode_ms) / f64::from(r.sampled_tokens.max(1)));
        bar.inc(1);
        last = Some(r);
    }
    let r = last.expect("at least one run");
    let (kept, resubmit) = (median(kept), median(resubmit));
    Ok(ExtensionRow {
        extensions: r.extensions,
        thinking_tokens: r.total_thinking_tokens(),
        injected_tokens: r.injected_tokens,
        kept_cache_ms: kept,
        resubmit_ms: resubmit,
        resubmit_over_kept: resubmit / kept,
        injected_ms_per_token: median(inj),
        generated_ms_per_token: median(gen),
    })
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let paths = if args.model.is_empty() { vec![models::default_model_path()] } else { args.model.clone() };
    let opts = SolveOptions {
        budget: BudgetConfig { max_thinking_tokens: args.max_think, max_answer_tokens: 64, ..BudgetConfig::default() },
        threads: Some(args.threads),
        ..SolveOptions::default()
    };
    let repeat = u64::from(args.repeat.max(1));
    let bar = bar(args.json, repeat * (2 * paths.len() as u64 + 1))?;
    let mut rows = Vec::new();
    let mut extension = None;
    for (i, path) in paths.iter().enumerate() {
        let engine = Engine::load(path, EngineOptions::default())?;
        rows.push(model_row(&engine, &args, &opts, &bar)?);
        if i == 0 {
            extension = Some(extension_row(&engine, &args, &opts, &bar)?);
        }
    }
    bar.finish_and_clear();
    let report = Report { threads: args.threads, repeat: args.repeat.max(1), models: rows, extension, peak_rss_mib: peak_rss_mib() };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("threads {}, {} repeats (medians), question of {} prompt tokens", report.threads, report.repeat, report.models[0].prompt_tokens);
    println!();
    println!("| model | quant | MiB | load ms | prefill tok/s | TTFT ms | solve decode tok/s | bare loop tok/s | ratio (floor 0.97) |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &report.models {
        let name = std::path::Path::new(&r.model).file_name().map_or(r.model.clone(), |n| n.to_string_lossy().into_owned());
        println!(
            "| {name} | {} | {:.0} | {:.0} | {:.1} | {:.0} | {:.2} | {:.2} | {:.3} |",
            r.quantization, r.file_mib, r.load_ms, r.prefill_tok_s, r.ttft_ms, r.solve_decode_tok_s, r.bare_decode_tok_s, r.decode_ratio
        );
    }
    if let Some(e) = &report.extension {
        println!();
        println!(
            "extensions: {} \"Wait\"s over {} thinking tokens: kept KV cache {:.0} ms vs re-submitting prompt+thinking {:.0} ms ({:.2}x)",
            e.extensions, e.thinking_tokens, e.kept_cache_ms, e.resubmit_ms, e.resubmit_over_kept
        );
        println!(
            "injected token {:.1} ms vs generated token {:.1} ms (injections are batched on the kept cache)",
            e.injected_ms_per_token, e.generated_ms_per_token
        );
    }
    println!("peak RSS {:.0} MiB", report.peak_rss_mib);
    Ok(())
}
