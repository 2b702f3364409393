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
use reckon::engine::{Engine, EngineOptions, Sample, SolveOptions};
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
    /// A GGUF LoRA adapter applied to every model (its think format is used).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Think format: s1, r1 or plain (default: detected from the model).
    #[arg(long)]
    format: Option<reckon::format::ThinkFormat>,
    /// Largest context to allocate, in tokens (default: the model's).
    #[arg(long)]
    ctx: Option<u32>,
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
    /// Cancels to time from another thread, each once while decoding and
    /// once during the prompt's decode (0: none).
    #[arg(long, default_value_t = 20)]
    cancels: u32,
    /// Parallel sequence counts to measure (e.g. 1,4,8,16): N greedy
    /// completions of the question in one batch against a bare batched
    /// llama-cpp-2 loop decoding as many tokens; 1 is always included as the
    /// single-sequence reference.
    #[arg(long, value_delimiter = ',')]
    parallel: Vec<u32>,
    /// Batches keep all sequences in one unified KV cache (see
    /// EngineOptions::unified_kv) instead of one stream per sequence.
    #[arg(long)]
    unified_kv: bool,
    /// Batches compute attention without llama.cpp's flash-attention kernel
    /// (see EngineOptions::flash_attention; the trainer's rollouts do).
    #[arg(long)]
    no_flash_attn: bool,
    /// The question.
    #[arg(long, default_value = SAMPLE_QUESTION)]
    question: String,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

impl BenchArgs {
    /// Whether the report (and so an error) is JSON.
    pub fn json(&self) -> bool {
        self.json
    }
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
struct ParallelRow {
    /// Sequences in the batch.
    sequences: u32,
    /// Tokens sampled per sequence (the bare loop decodes as many).
    tokens_per_sequence: u32,
    /// All sequences' sampled tokens over the batch's generation time.
    solve_aggregate_tok_s: f64,
    /// One sequence's sampled tokens over its generation time.
    solve_per_sequence_tok_s: f64,
    /// The bare batched loop's aggregate tok/s (no controllers, shared prompt).
    bare_aggregate_tok_s: f64,
    /// solve_aggregate_tok_s / bare_aggregate_tok_s (floor 0.95).
    solve_over_bare: f64,
    /// solve_aggregate_tok_s over the single-sequence solve's (floor 1.7 at 8).
    speedup_vs_single: f64,
    /// The batch's wall time (prefill included) divided by its sequences.
    ms_per_problem: f64,
}

/// How fast a cancel from another thread stops a solve.
#[derive(Debug, Serialize)]
struct CancelRow {
    /// Cancels measured (each at a different moment of a long solve).
    cancels: u32,
    /// Median milliseconds from `cancel()` to the solve returning.
    p50_ms: f64,
    /// 99th percentile (nearest rank).
    p99_ms: f64,
    /// The same in decode steps of those solves (target: p99 <= 1).
    p50_steps: f64,
    p99_steps: f64,
    /// Milliseconds per decode step of the model's solve (a cancel is seen
    /// at the next step).
    ms_per_step: f64,
    /// Cancels that land while the prompt is decoded wait for that decode:
    /// their median and slowest latency, and the prompt's prefill time.
    prefill_p50_ms: f64,
    prefill_max_ms: f64,
    prompt_prefill_ms: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    threads: u32,
    repeat: u32,
    models: Vec<ModelRow>,
    extension: Option<ExtensionRow>,
    cancel: Option<CancelRow>,
    parallel: Vec<ParallelRow>,
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
                Event::Thinking { text, .. } => thinking.push_str(text),
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
            seq.extend(engine.tokenize(t, false)?);
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

/// One batched solve of `n` greedy completions: (aggregate tok/s, per-sequence
/// tok/s, tokens per sequence, wall ms).
fn batched_solve(engine: &Engine, question: &str, opts: &SolveOptions, n: u32) -> anyhow::Result<(f64, f64, u32, f64)> {
    let t = std::time::Instant::now();
    let members = (0..n).map(|i| Sample::silent(u64::from(i), None)).collect();
    let finished = engine.solve_samples(question, opts, members, opts.threads)?;
    let wall = t.elapsed().as_secs_f64() * 1e3;
    let results: Vec<_> = finished.into_iter().map(|f| f.result).collect::<Result<_, _>>()?;
    // Decoding injected tokens is budget forcing's work, not overhead: the
    // slots' shares of it add up to the time the batch spent on them.
    let window = results.iter().map(|r| r.timings.decode_ms).fold(0.0, f64::max)
        - results.iter().map(|r| r.timings.injected_decode_ms).sum::<f64>();
    let sampled: u32 = results.iter().map(|r| r.sampled_tokens).sum();
    let per_seq = median(results.iter().map(|r| f64::from(r.sampled_tokens) / ((r.timings.decode_ms - r.timings.injected_decode_ms * f64::from(n)) / 1e3)).collect());
    Ok((f64::from(sampled) / (window / 1e3), per_seq, results[0].sampled_tokens, wall))
}

fn parallel_rows(engine: &Engine, args: &BenchArgs, opts: &SolveOptions, bar: &indicatif::ProgressBar) -> anyhow::Result<Vec<ParallelRow>> {
    let mut ns: Vec<u32> = std::iter::once(1).chain(args.parallel.iter().copied()).collect();
    ns.sort_unstable();
    ns.dedup();
    let prompt = engine.prompt_tokens(&args.question, opts)?;
    // Warm up, and learn how many tokens a completion samples.
    let (_, _, tokens, _) = batched_solve(engine, &args.question, opts, 1)?;
    let mut figures: Vec<(Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>)> = ns.iter().map(|_| Default::default()).collect();
    for rep in 0..args.repeat.max(1) {
        for (k, &n) in ns.iter().enumerate() {
            bar.set_message(format!("parallel {n}"));
            let solve = || batched_solve(engine, &args.question, opts, n);
            let bare = || engine.bare_batched_decode(&prompt, n, tokens, opts.threads);
            let (s, b) = if (rep as usize + k) % 2 == 0 {
                let s = solve()?;
                (s, bare()?)
            } else {
                let b = bare()?;
                (solve()?, b)
            };
            let f = &mut figures[k];
            f.0.push(s.0);
            f.1.push(s.1);
            f.2.push(b.decode_tok_s);
            f.3.push(s.0 / b.decode_tok_s);
            f.4.push(s.3 / f64::from(n));
            bar.inc(1);
        }
    }
    let single = median(figures[0].0.clone());
    Ok(ns
        .iter()
        .zip(figures)
        .map(|(&n, (agg, per, bare, ratio, wall))| {
            let agg = median(agg);
            ParallelRow {
                sequences: n,
                tokens_per_sequence: tokens,
                solve_aggregate_tok_s: agg,
                solve_per_sequence_tok_s: median(per),
                bare_aggregate_tok_s: median(bare),
                solve_over_bare: median(ratio),
                speedup_vs_single: agg / single,
                ms_per_problem: median(wall),
            }
        })
        .collect())
}

/// Cancel long solves from another thread; time from `cancel()` to the
/// solve's return. Decoding cancels come at moments spread over the phase
/// of a decode step once the first token is out; prefill cancels come at
/// moments spread over the prompt's decode (llama.cpp's abort callback
/// stops that decode; the prompt's whole prefill is timed apart).
fn cancel_row(engine: &Engine, args: &BenchArgs, base: &SolveOptions, ms_per_step: f64, bar: &indicatif::ProgressBar) -> anyhow::Result<CancelRow> {
    let opts = SolveOptions {
        budget: BudgetConfig { min_thinking_tokens: 4000, max_thinking_tokens: 4096, ..base.budget.clone() },
        ..base.clone()
    };
    let prompt = engine.prompt_tokens(&args.question, &opts)?;
    let prompt_prefill_ms = engine.prefill_ms(&prompt, opts.threads)?;
    let (mut decoding, mut prefill) = (Vec::new(), Vec::new());
    for i in 0..args.cancels {
        for during_prefill in [false, true] {
            let cancel = reckon::events::CancelHandle::new();
            let (first_tx, first_rx) = std::sync::mpsc::channel::<()>();
            let handle = cancel.clone();
            // Prefill cancels spread over the prompt's decode time.
            let n = f64::from(args.cancels);
            let delay = if during_prefill {
                std::time::Duration::from_secs_f64(prompt_prefill_ms * (f64::from(i) + 0.5) / n / 1e3)
            } else {
                std::time::Duration::from_millis((7 * u64::from(i)) % 60)
            };
            let canceller = std::thread::spawn(move || {
                if !during_prefill {
                    let _ = first_rx.recv(); // the first token is out
                }
                std::thread::sleep(delay);
                handle.cancel();
                std::time::Instant::now()
            });
            let mut first = Some(first_tx);
            let mut listener = |_: &reckon::events::Event| {
                if let Some(tx) = first.take() {
                    let _ = tx.send(());
                }
                true
            };
            let r = engine.solve(&args.question, &opts, &mut listener, Some(&cancel))?;
            let returned = std::time::Instant::now();
            drop(first);
            let cancelled_at = canceller.join().map_err(|_| anyhow::anyhow!("the cancelling thread panicked"))?;
            anyhow::ensure!(r.finish == reckon::events::FinishReason::Cancelled, "the solve ended before its cancel ({:?})", r.finish);
            let ms = returned.saturating_duration_since(cancelled_at).as_secs_f64() * 1e3;
            if during_prefill {
                prefill.push(ms);
            } else {
                decoding.push(ms);
            }
        }
        bar.inc(1);
    }
    decoding.sort_by(f64::total_cmp);
    let p99_ms = decoding[((0.99 * decoding.len() as f64).ceil() as usize).clamp(1, decoding.len()) - 1];
    let cancels = decoding.len() as u32;
    let p50_ms = median(decoding);
    let prefill_max_ms = prefill.iter().copied().fold(0.0, f64::max);
    Ok(CancelRow {
        cancels,
        p50_ms,
        p99_ms,
        p50_steps: p50_ms / ms_per_step,
        p99_steps: p99_ms / ms_per_step,
        ms_per_step,
        prefill_p50_ms: median(prefill),
        prefill_max_ms,
        prompt_prefill_ms,
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
    let n_parallel = if args.parallel.is_empty() { 0 } else { args.parallel.len() as u64 + 1 };
    let bar = bar(args.json, repeat * (2 * paths.len() as u64 + 1 + n_parallel) + u64::from(args.cancels))?;
    let mut rows = Vec::new();
    let mut extension = None;
    let mut cancel = None;
    let mut parallel = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let options = EngineOptions {
            unified_kv: args.unified_kv,
            flash_attention: !args.no_flash_attn,
            adapter: args.adapter.clone(),
            format: args.format,
            max_context: args.ctx,
            ..EngineOptions::default()
        };
        let engine = Engine::load(path, options)?;
        rows.push(model_row(&engine, &args, &opts, &bar)?);
        if i == 0 {
            extension = Some(extension_row(&engine, &args, &opts, &bar)?);
            if args.cancels > 0 {
                // A step of this model's own solve: cancelled solves stop
                // too early for their decode rate to mean anything.
                let ms_per_step = 1e3 / rows[0].solve_decode_tok_s.max(1e-9);
                cancel = Some(cancel_row(&engine, &args, &opts, ms_per_step, &bar)?);
            }
            if !args.parallel.is_empty() {
                parallel = parallel_rows(&engine, &args, &opts, &bar)?;
            }
        }
    }
    bar.finish_and_clear();
    let report = Report { threads: args.threads, repeat: args.repeat.max(1), models: rows, extension, cancel, parallel, peak_rss_mib: peak_rss_mib() };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    outln!("threads {}, {} repeats (medians), question of {} prompt tokens", report.threads, report.repeat, report.models[0].prompt_tokens);
    outln!("");
    outln!("| model | quant | MiB | load ms | prefill tok/s | TTFT ms | solve decode tok/s | bare loop tok/s | ratio (floor 0.97) |");
    outln!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &report.models {
        let name = std::path::Path::new(&r.model).file_name().map_or(r.model.clone(), |n| n.to_string_lossy().into_owned());
        outln!(
            "| {name} | {} | {:.0} | {:.0} | {:.1} | {:.0} | {:.2} | {:.2} | {:.3} |",
            r.quantization, r.file_mib, r.load_ms, r.prefill_tok_s, r.ttft_ms, r.solve_decode_tok_s, r.bare_decode_tok_s, r.decode_ratio
        );
    }
    if let Some(e) = &report.extension {
        outln!("");
        outln!(
            "extensions: {} \"Wait\"s over {} thinking tokens: kept KV cache {:.0} ms vs re-submitting prompt+thinking {:.0} ms ({:.2}x)",
            e.extensions, e.thinking_tokens, e.kept_cache_ms, e.resubmit_ms, e.resubmit_over_kept
        );
        outln!(
            "injected token {:.1} ms vs generated token {:.1} ms (injections are batched on the kept cache)",
            e.injected_ms_per_token, e.generated_ms_per_token
        );
    }
    if let Some(c) = &report.cancel {
        outln!(
            "cancel from another thread while decoding ({} cancels): p50 {:.1} ms ({:.2} steps), p99 {:.1} ms ({:.2} steps); one decode step {:.1} ms",
            c.cancels, c.p50_ms, c.p50_steps, c.p99_ms, c.p99_steps, c.ms_per_step
        );
        outln!(
            "cancel during the prompt's decode: p50 {:.1} ms, max {:.1} ms (prefill of the prompt takes {:.1} ms)",
            c.prefill_p50_ms, c.prefill_max_ms, c.prompt_prefill_ms
        );
    }
    if !report.parallel.is_empty() {
        outln!("");
        outln!("parallel sequences ({} greedy tokens each, one batch; bare = batched llama-cpp-2 loop, no controllers):", report.parallel[0].tokens_per_sequence);
        outln!("");
        outln!("| sequences | solve aggregate tok/s | per sequence tok/s | bare aggregate tok/s | solve/bare (floor 0.95) | vs 1 sequence | ms per problem |");
        outln!("|---:|---:|---:|---:|---:|---:|---:|");
        for r in &report.parallel {
            outln!(
                "| {} | {:.1} | {:.1} | {:.1} | {:.3} | {:.2}x | {:.0} |",
                r.sequences, r.solve_aggregate_tok_s, r.solve_per_sequence_tok_s, r.bare_aggregate_tok_s, r.solve_over_bare, r.speedup_vs_single, r.ms_per_problem
            );
        }
    }
    outln!("peak RSS {:.0} MiB", report.peak_rss_mib);
    Ok(())
}
