//! Summaries of evaluation records: accuracy with a Wilson 95% interval,
//! token statistics, a Markdown table, JSON, and the plot.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{read_records_with, records_path, EvalPlan, Record};
use crate::error::{ReckonError, Result};

/// Figures for one (model, config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigSummary {
    /// Model label.
    pub model: String,
    /// Config label.
    pub config: String,
    /// Thinking cap.
    pub max_thinking_tokens: u32,
    /// Extensions.
    pub extensions: u32,
    /// Problems solved.
    pub n: usize,
    /// Correct answers.
    pub correct: usize,
    /// Accuracy (0..1).
    pub accuracy: f64,
    /// Wilson 95% interval, low.
    pub ci95_low: f64,
    /// Wilson 95% interval, high.
    pub ci95_high: f64,
    /// Mean thinking tokens (injected included).
    pub mean_thinking_tokens: f64,
    /// Median thinking tokens.
    pub median_thinking_tokens: f64,
    /// Mean tokens generated (thinking + answer).
    pub mean_generated_tokens: f64,
    /// Mean injected tokens.
    pub mean_injected_tokens: f64,
    /// Share of forced ends.
    pub forced_share: f64,
    /// Mean extensions.
    pub mean_extensions: f64,
    /// Total wall time, seconds.
    pub wall_s: f64,
    /// Mean decode tok/s.
    pub decode_tok_s: f64,
}

/// A whole evaluation's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Problems in the plan.
    pub problems: usize,
    /// Per (model, config), in plan order.
    pub rows: Vec<ConfigSummary>,
}

/// Wilson score interval for a binomial proportion at 95%.
pub fn wilson95(correct: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 0.0);
    }
    let z = 1.959_963_984_540_054_f64;
    let n_f = n as f64;
    let p = correct as f64 / n_f;
    let denom = 1.0 + z * z / n_f;
    let centre = (p + z * z / (2.0 * n_f)) / denom;
    let half = z * (p * (1.0 - p) / n_f + z * z / (4.0 * n_f * n_f)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        0.0
    } else {
        s / n as f64
    }
}

/// The median (0 for none).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Figures of one set of records.
pub fn summarize_records(model: &str, config: &super::EvalConfig, records: &[Record]) -> ConfigSummary {
    let n = records.len();
    let correct = records.iter().filter(|r| r.correct).count();
    let (lo, hi) = wilson95(correct, n);
    ConfigSummary {
        model: model.to_string(),
        config: config.label.clone(),
        max_thinking_tokens: config.max_thinking_tokens,
        extensions: config.extensions,
        n,
        correct,
        accuracy: if n == 0 { 0.0 } else { correct as f64 / n as f64 },
        ci95_low: lo,
        ci95_high: hi,
        mean_thinking_tokens: mean(records.iter().map(|r| f64::from(r.total_thinking()))),
        median_thinking_tokens: median(records.iter().map(|r| f64::from(r.total_thinking())).collect()),
        mean_generated_tokens: mean(records.iter().map(|r| f64::from(r.generated()))),
        mean_injected_tokens: mean(records.iter().map(|r| f64::from(r.injected_tokens))),
        forced_share: mean(records.iter().map(|r| f64::from(u8::from(r.forced)))),
        mean_extensions: mean(records.iter().map(|r| f64::from(r.extensions))),
        // `+ 0.0` turns the empty sum (-0.0) into 0.
        wall_s: records.iter().map(|r| r.wall_ms).sum::<f64>() / 1e3 + 0.0,
        decode_tok_s: mean(records.iter().map(|r| r.decode_tok_s)),
    }
}

/// Summarize the plan's records (only the plan's problems count).
pub fn summarize(plan: &EvalPlan, labels: &[String]) -> Result<Summary> {
    let ids: std::collections::HashSet<usize> = plan.problems.iter().map(|p| p.id).collect();
    let mut rows = Vec::new();
    for label in labels {
        for c in &plan.configs {
            let mut records = read_records_with(&records_path(&plan.out, label, &c.label), !plan.report_only)?;
            records.retain(|r| ids.contains(&r.id));
            rows.push(summarize_records(label, c, &records));
        }
    }
    Ok(Summary { problems: plan.problems.len(), rows })
}

/// The Markdown table.
pub fn markdown(summary: &Summary) -> String {
    let mut s = String::from(
        "| model | config | n | accuracy | 95% CI | mean think | median think | mean generated | mean injected | forced | mean ext | wall s | decode tok/s |\n|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in &summary.rows {
        s.push_str(&format!(
            "| {} | {} | {} | {:.1}% | {:.1}–{:.1}% | {:.1} | {:.0} | {:.1} | {:.1} | {:.0}% | {:.2} | {:.0} | {:.1} |\n",
            r.model,
            r.config,
            r.n,
            100.0 * r.accuracy,
            100.0 * r.ci95_low,
            100.0 * r.ci95_high,
            r.mean_thinking_tokens,
            r.median_thinking_tokens,
            r.mean_generated_tokens,
            r.mean_injected_tokens,
            100.0 * r.forced_share,
            r.mean_extensions,
            r.wall_s,
            r.decode_tok_s
        ));
    }
    s
}

/// Write summary.json, summary.md and the plot (PNG and SVG).
pub fn write_all(summary: &Summary, out: &Path) -> Result<()> {
    let w = |name: &str, text: String| {
        super::write_atomic(&out.join(name), text.as_bytes())
    };
    w("summary.json", serde_json::to_string_pretty(summary).map_err(|e| ReckonError::Internal(e.to_string()))?)?;
    w("summary.md", markdown(summary))?;
    super::plot::accuracy_vs_tokens(summary, &out.join("accuracy_vs_tokens.png"), &out.join("accuracy_vs_tokens.svg"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_interval_matches_reference_values() {
        // Reference: statsmodels proportion_confint(count, nobs, method="wilson").
        let (lo, hi) = wilson95(50, 100);
        assert!((lo - 0.40383).abs() < 1e-4 && (hi - 0.59617).abs() < 1e-4, "{lo} {hi}");
        let (lo, hi) = wilson95(0, 10);
        assert!(lo.abs() < 1e-12 && (hi - 0.27753).abs() < 1e-4, "{lo} {hi}");
        let (lo, hi) = wilson95(10, 10);
        assert!((lo - 0.72247).abs() < 1e-4 && (hi - 1.0).abs() < 1e-12, "{lo} {hi}");
        assert_eq!(wilson95(0, 0), (0.0, 0.0));
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }
}
