//! RL problems the model can learn from: a problem every rollout of a group
//! gets wrong (or right) has no advantage to learn from, and problems the
//! model cannot solve are what drive length up (Fatemi et al. 2025, arXiv
//! 2504.05185). Two screens pick problems whose rollouts will be mixed:
//!
//! - by the reference solution's calculator steps (GSM8K's `<<a*b=c>>`
//!   notes): fewer steps, easier problems;
//! - by pass rate: k budget-forced samples of each problem from the model
//!   GRPO will start from, on the runtime's batched engine (`reckon eval`'s
//!   loop, resumable from its records), keeping problems whose share of
//!   right samples is in a range.
//!
//! `reckon-train data screen` writes the kept problems, in their original
//! JSON with `pass_rate` and `steps` added, ready for `[data] train`.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use serde::Serialize;

/// Calculator annotations (`<<...>>`) in a GSM8K reference solution.
pub fn calculator_steps(solution: &str) -> usize {
    solution.match_indices("<<").filter(|(i, _)| solution[*i..].contains(">>")).count()
}

/// Share of an eval record's samples whose answer is the gold one (an
/// unanswered sample counts as wrong).
pub fn pass_rate(r: &reckon::eval::Record) -> f64 {
    if r.samples <= 1 {
        return f64::from(u8::from(r.correct));
    }
    let right: u32 = r.votes.iter().filter(|v| reckon::answer::answers_match(&v.answer, &r.gold)).map(|v| v.votes).sum();
    f64::from(right) / f64::from(r.samples)
}

/// What to screen and how.
#[derive(Debug, Clone)]
pub struct ScreenOptions {
    /// GSM8K-style JSONL (`question`, `answer` with `#### N`).
    pub input: PathBuf,
    /// First data line (0-based): keep RL problems apart from SFT's.
    pub offset: usize,
    /// Lines to screen (all from `offset` when `None`).
    pub limit: Option<usize>,
    /// Keep problems with this many calculator steps (inclusive range;
    /// `None`: any).
    pub steps: Option<(usize, usize)>,
    /// The model as `reckon eval` takes it (`MODEL.gguf` or
    /// `MODEL.gguf+ADAPTER.gguf`); `None`: no pass-rate screen.
    pub model: Option<String>,
    /// Samples per problem.
    pub samples: u32,
    /// Their temperature (> 0).
    pub temperature: f32,
    /// Thinking cap of each sample.
    pub max_thinking_tokens: u32,
    /// Answer cap of each sample (after the thinking ends or is forced).
    pub max_answer_tokens: u32,
    /// Keep problems whose pass rate is in this range (inclusive).
    pub pass: (f64, f64),
    /// Problems decoded together (each of `samples` sequences).
    pub parallel: u32,
    /// Seed of the first sample (sample i: seed + i).
    pub seed: u32,
    /// Where to write the kept problems (`OUT.stats.json` beside it, eval
    /// records under `OUT.screen/`).
    pub out: PathBuf,
    /// Show progress.
    pub progress: bool,
}

/// What a screen kept.
#[derive(Debug, Clone, Serialize)]
pub struct ScreenReport {
    /// Problems read.
    pub read: usize,
    /// Within the step range.
    pub in_step_range: usize,
    /// Kept (also within the pass range).
    pub kept: usize,
    /// Mean pass rate of the screened problems, and of the kept ones.
    pub mean_pass_rate: Option<f64>,
    /// Same, kept problems only.
    pub kept_mean_pass_rate: Option<f64>,
    /// Problems by pass rate: counts in tenths (0-0.1, ..., 0.9-1.0).
    pub pass_rate_histogram: Vec<usize>,
    /// Where the problems went.
    pub out: PathBuf,
}

/// Screen `opts.input` and write the kept problems.
pub fn screen(opts: &ScreenOptions) -> Result<ScreenReport> {
    ensure!(opts.pass.0 <= opts.pass.1 && (0.0..=1.0).contains(&opts.pass.0) && (0.0..=1.0).contains(&opts.pass.1), "the pass-rate range must be within [0, 1], low to high");
    ensure!(opts.model.is_none() || (opts.samples >= 1 && opts.temperature > 0.0), "a pass-rate screen needs --samples >= 1 and --temperature > 0");
    let text = std::fs::read_to_string(&opts.input).with_context(|| format!("cannot read {}", opts.input.display()))?;
    // The same lines, ids and order as reckon::eval::data::load.
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).skip(opts.offset).take(opts.limit.unwrap_or(usize::MAX)).collect();
    let mut rows: Vec<(usize, serde_json::Value, usize)> = Vec::new();
    for (k, l) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(l).with_context(|| format!("{} data line {}: not JSON", opts.input.display(), opts.offset + k + 1))?;
        let steps = calculator_steps(v["answer"].as_str().unwrap_or(""));
        if opts.steps.is_none_or(|(lo, hi)| (lo..=hi).contains(&steps)) {
            rows.push((opts.offset + k, v, steps));
        }
    }
    let read = lines.len();
    let in_step_range = rows.len();

    let rates: Option<std::collections::HashMap<usize, f64>> = match &opts.model {
        None => None,
        Some(spec) => {
            let ids: std::collections::HashSet<usize> = rows.iter().map(|r| r.0).collect();
            let (problems, _) = reckon::eval::data::load(&opts.input, opts.offset, opts.limit, reckon::eval::OnBadLine::Stop)?;
            let problems: Vec<_> = problems.into_iter().filter(|p| ids.contains(&p.id)).collect();
            let plan = reckon::eval::EvalPlan {
                models: vec![reckon::eval::EvalModel::parse(spec)?],
                problems,
                configs: reckon::eval::EvalConfig::sweep(&[opts.max_thinking_tokens], &[], opts.max_thinking_tokens),
                base: reckon::SolveOptions {
                    sampling: reckon::SamplingConfig { temperature: opts.temperature, seed: opts.seed, ..Default::default() },
                    budget: reckon::BudgetConfig { max_answer_tokens: opts.max_answer_tokens, ..Default::default() },
                    ..Default::default()
                },
                out: screen_dir(&opts.out),
                progress: opts.progress,
                report_only: false,
                parallel: Some(opts.parallel),
                samples: opts.samples,
                format: None,
                max_context: None,
                flash_attention: true,
            };
            reckon::eval::run(&plan)?;
            let label = &reckon::eval::model_labels(&plan.models)[0];
            let records = reckon::eval::read_records(&reckon::eval::records_path(&plan.out, label, &plan.configs[0].label))?;
            Some(records.iter().map(|r| (r.id, pass_rate(r))).collect())
        }
    };

    let mut out = String::new();
    let (mut kept, mut all_rates, mut kept_rates) = (0, Vec::new(), Vec::new());
    let mut histogram = vec![0; 10];
    for (id, mut v, steps) in rows {
        let rate = rates.as_ref().map(|m| m.get(&id).copied().with_context(|| format!("no screen record for data line {}", id + 1))).transpose()?;
        if let Some(r) = rate {
            all_rates.push(r);
            histogram[((r * 10.0) as usize).min(9)] += 1;
        }
        if rate.is_some_and(|r| r < opts.pass.0 || r > opts.pass.1) {
            continue;
        }
        v["steps"] = steps.into();
        if let Some(r) = rate {
            v["pass_rate"] = r.into();
            kept_rates.push(r);
        }
        v["source_line"] = (id + 1).into();
        out += &serde_json::to_string(&v)?;
        out.push('\n');
        kept += 1;
    }
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let report = ScreenReport { read, in_step_range, kept, mean_pass_rate: mean(&all_rates), kept_mean_pass_rate: mean(&kept_rates), pass_rate_histogram: histogram, out: opts.out.clone() };
    write_whole(&opts.out, out.as_bytes())?;
    write_whole(&stats_path(&opts.out), serde_json::to_string_pretty(&report)?.as_bytes())?;
    Ok(report)
}

/// Write a file whole or not at all (a stopped screen leaves no half file).
fn write_whole(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.persist(path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Where a screen keeps its eval records (resumed by the same command).
pub fn screen_dir(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".screen");
    PathBuf::from(s)
}

fn stats_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".stats.json");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calculator_steps_count_the_notes() {
        let s = "She sold 48/2 = <<48/2=24>>24 clips in May.\nShe sold 48+24 = <<48+24=72>>72 clips.\n#### 72";
        assert_eq!(calculator_steps(s), 2);
        assert_eq!(calculator_steps("no notes\n#### 3"), 0);
        assert_eq!(calculator_steps("an unclosed << note"), 0);
    }

    fn record(gold: &str, samples: u32, votes: &[(&str, u32)]) -> reckon::eval::Record {
        let line = serde_json::json!({
            "id": 0, "question": "q", "gold": gold, "extracted": votes.first().map(|v| v.0), "correct": false,
            "thinking_tokens": 0, "injected_tokens": 0, "answer_tokens": 0, "extensions": 0, "forced": false,
            "think_end": null, "finish": "end_of_turn", "prompt_tokens": 1, "wall_ms": 0.0, "latency_ms": 0.0,
            "samples": samples, "votes": votes.iter().map(|(a, n)| serde_json::json!({"answer": a, "votes": n})).collect::<Vec<_>>(),
            "decode_tok_s": 0.0, "thinking": "", "answer": ""
        });
        serde_json::from_value(line).unwrap()
    }

    #[test]
    fn pass_rate_counts_the_samples_that_gave_the_gold_answer() {
        // 8 samples: 3 say 18, 2 say 18.0 (the same number), 2 say 20, 1 none.
        let r = record("18", 8, &[("18", 3), ("20", 2), ("18.0", 2)]);
        assert_eq!(pass_rate(&r), 5.0 / 8.0);
        assert_eq!(pass_rate(&record("18", 4, &[])), 0.0);
    }
}
