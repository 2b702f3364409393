//! `reckon bench`: side-by-side figures on one model, threads and prompt.
//!
//! * a budget-forced solve against a bare llama-cpp-2 greedy loop decoding
//!   the same number of tokens from the same prompt (the ratio is the
//!   controller's overhead);
//! * the cost of a "Wait" extension decoded on the kept KV cache, per token,
//!   against ordinary decoding, and against re-submitting prompt + thinking
//!   (what a stateless server does);
//! * prefill tok/s, decode tok/s, time to first token, peak RSS.
//!
//! Runs alternate (solve, bare, solve, bare, ...) and medians are reported.

use std::path::PathBuf;

use clap::Args;
use reckon::budget::BudgetConfig;
use reckon::engine::{Engine, EngineOptions, SolveOptions};
use reckon::events::Silent;
use reckon::models;
use serde::Serialize;

/// A GSM8K test question (the first of the test split).
pub const SAMPLE_QUESTION: &str = "Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck egg. How much in dollars does she make every day at the farmers' market?";

#[derive(Args)]
pub struct BenchArgs {
    /// GGUF model file (default: the fetched default model).
    #[arg(long, short)]
    model: Option<PathBuf>,
    /// CPU threads.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Repetitions of each measurement (medians are reported).
    #[arg(long, default_value_t = 3)]
    repeat: u32,
    /// Thinking cap for the solve.
    #[arg(long, default_value_t = 256)]
    max_think: u32,
    /// Extensions forced in the injection measurement.
    #[arg(long, default_value_t = 4)]
    extensions: u32,
    /// The question.
    #[arg(long, default_value = SAMPLE_QUESTION)]
    question: String,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    model: String,
    quantization: String,
    threads: u32,
    repeat: u32,
    load_ms: f64,
    prompt_tokens: u32,
    prefill_tok_s: f64,
    ttft_ms: f64,
    solve_tokens: u32,
    solve_decode_tok_s: f64,
    bare_decode_tok_s: f64,
    /// Solve decode tok/s over bare loop decode tok/s (floor: 0.97).
    decode_ratio: f64,
    extensions: u32,
    injected_tokens: u32,
    /// Milliseconds per injected token, decoded on the kept KV cache.
    injected_ms_per_token: f64,
    /// Milliseconds per generated token in the same run.
    decode_ms_per_token: f64,
    /// Milliseconds per extension if prompt + thinking were re-submitted.
    resubmit_ms_per_extension: f64,
    /// Milliseconds per extension on the kept cache.
    kept_cache_ms_per_extension: f64,
    peak_rss_mib: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
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

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let path = args.model.clone().unwrap_or_else(models::default_model_path);
    let engine = Engine::load(&path, EngineOptions::default())?;
    let threads = Some(args.threads);
    let repeat = args.repeat.max(1);
    let solve_opts = SolveOptions {
        budget: BudgetConfig { max_thinking_tokens: args.max_think, max_answer_tokens: 64, ..BudgetConfig::default() },
        threads,
        ..SolveOptions::default()
    };
    let prompt = engine.prompt_tokens(&args.question, &solve_opts)?;

    let bar = if args.json { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(u64::from(repeat) * 3) };
    bar.set_style(indicatif::ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} eta {eta}")?);
    let (mut prefill, mut ttft, mut solve_tps, mut bare_tps) = (vec![], vec![], vec![], vec![]);
    let (mut inj_ms, mut dec_ms, mut resubmit, mut kept) = (vec![], vec![], vec![], vec![]);
    let mut solve_tokens = 0;
    let mut injected_tokens = 0;
    let mut extensions = 0;
    for _ in 0..repeat {
        bar.set_message("solve");
        let r = engine.solve(&args.question, &solve_opts, &mut Silent, None)?;
        let sampled = r.sampled_tokens;
        solve_tokens = sampled;
        prefill.push(r.timings.prefill_tok_s);
        ttft.push(r.timings.ttft_ms);
        solve_tps.push(r.timings.decode_tok_s);
        bar.inc(1);

        bar.set_message("bare loop");
        let b = engine.bare_decode(&prompt, sampled.max(1), threads)?;
        bare_tps.push(b.decode_tok_s);
        bar.inc(1);

        // Extensions: a floor far above the natural length, so every end is
        // suppressed, up to `extensions` times.
        bar.set_message("extensions");
        let natural = r.total_thinking_tokens();
        let ext_opts = SolveOptions {
            budget: BudgetConfig {
                min_thinking_tokens: natural + 400,
                max_thinking_tokens: natural + 400,
                max_extensions: Some(args.extensions),
                max_answer_tokens: 16,
                max_thinking_ms: None,
            },
            ..solve_opts.clone()
        };
        let e = engine.solve(&args.question, &ext_opts, &mut Silent, None)?;
        let injected = e.injected_tokens + e.delimiter_tokens;
        injected_tokens = injected;
        extensions = e.extensions;
        let sampled_e = f64::from(e.sampled_tokens);
        if injected > 0 && sampled_e > 0.0 {
            inj_ms.push(e.timings.injected_decode_ms / f64::from(injected));
            dec_ms.push((e.timings.decode_ms - e.timings.injected_decode_ms) / sampled_e);
        }
        if e.extensions > 0 {
            // A stateless server re-processes prompt + thinking at each
            // extension; approximate each with the prefill of the whole
            // final sequence's midpoint length.
            let mid = prompt.len() + (e.total_thinking_tokens() as usize) / 2;
            let seq: Vec<i32> = prompt.iter().copied().cycle().take(mid).collect();
            let ms = engine.prefill_ms(&seq, threads)?;
            resubmit.push(ms);
            kept.push(e.timings.injected_decode_ms / f64::from(e.extensions.max(1)));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();

    let info = engine.info();
    let report = Report {
        model: path.display().to_string(),
        quantization: info.quantization.clone(),
        threads: args.threads,
        repeat,
        load_ms: engine.load_ms(),
        prompt_tokens: prompt.len() as u32,
        prefill_tok_s: median(prefill),
        ttft_ms: median(ttft),
        solve_tokens,
        solve_decode_tok_s: median(solve_tps.clone()),
        bare_decode_tok_s: median(bare_tps.clone()),
        decode_ratio: median(solve_tps.iter().zip(&bare_tps).map(|(s, b)| s / b).collect()),
        extensions,
        injected_tokens,
        injected_ms_per_token: median(inj_ms),
        decode_ms_per_token: median(dec_ms),
        resubmit_ms_per_extension: median(resubmit),
        kept_cache_ms_per_extension: median(kept),
        peak_rss_mib: peak_rss_mib(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let r = &report;
    println!("model            {} ({})", r.model, r.quantization);
    println!("threads          {}   repeats {} (medians)", r.threads, r.repeat);
    println!("load             {:.0} ms", r.load_ms);
    println!("prompt           {} tokens, prefill {:.1} tok/s, time to first token {:.0} ms", r.prompt_tokens, r.prefill_tok_s, r.ttft_ms);
    println!("decode           solve {:.2} tok/s vs bare loop {:.2} tok/s over {} tokens: ratio {:.3} (floor 0.97)", r.solve_decode_tok_s, r.bare_decode_tok_s, r.solve_tokens, r.decode_ratio);
    println!("extensions       {} ({} injected tokens): {:.1} ms/injected token vs {:.1} ms/generated token", r.extensions, r.injected_tokens, r.injected_ms_per_token, r.decode_ms_per_token);
    println!("per extension    kept KV cache {:.0} ms vs re-submitting prompt+thinking {:.0} ms", r.kept_cache_ms_per_extension, r.resubmit_ms_per_extension);
    println!("peak RSS         {:.0} MiB", r.peak_rss_mib);
    Ok(())
}
