//! Long reasoning traces from GSM8K worked solutions, for the SFT stage that
//! makes a model verbose (arXiv 2510.21398 trains on long traces first).
//!
//! A trace keeps every line of the worked solution, in order, and
//! lengthens it the way long-context reasoning traces are long:
//!
//! * it restates the question and lists the given facts first;
//! * after each step with a calculation (GSM8K's `<<48/2=24>>` notes) it
//!   says "Wait, let me verify ..." and re-checks the arithmetic, with an
//!   inverse operation where there is one (`24 * 2 = 48`);
//! * it retraces the whole chain ("Alternatively, let me go over ...");
//! * it ends by checking that the answer is what was asked.
//!
//! Every number written is computed, not copied from a template, and the
//! phrasing is drawn per problem from a seeded RNG (seed, problem index),
//! so the same recipe always gives the same file.

use std::path::Path;

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use reckon::answer::format_number;
use serde::{Deserialize, Serialize};

use crate::sft::data::{read_jsonl, strip_calculator, SftRecord};

/// How the lengthened data was made and what it looks like.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LengthStats {
    /// Problems converted.
    pub problems: usize,
    /// The recipe's seed.
    pub seed: u64,
    /// First problem used (line index in the input).
    pub offset: usize,
    /// Mean words of the plain worked solution.
    pub plain_mean_words: f64,
    /// Mean words of the long trace.
    pub long_mean_words: f64,
    /// long_mean_words / plain_mean_words.
    pub ratio: f64,
    /// Deciles (0%, 10%, ..., 100%) of the long traces' word counts.
    pub long_word_deciles: Vec<usize>,
    /// Deciles of the plain solutions' word counts.
    pub plain_word_deciles: Vec<usize>,
}

#[derive(Debug, Deserialize)]
struct Gsm8kLine {
    question: String,
    answer: String,
}

fn pick<'a>(rng: &mut ChaCha8Rng, options: &[&'a str]) -> &'a str {
    options[rng.random_range(0..options.len())]
}

/// One `<<expr=result>>` calculator note.
#[derive(Debug, Clone, PartialEq)]
struct Calc {
    expr: String,
    result: String,
}

fn calculations(line: &str) -> Vec<Calc> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(start) = rest.find("<<") {
        let Some(end) = rest[start..].find(">>") else { break };
        let note = &rest[start + 2..start + end];
        if let Some((expr, result)) = note.rsplit_once('=') {
            out.push(Calc { expr: expr.trim().to_string(), result: result.trim().to_string() });
        }
        rest = &rest[start + end + 2..];
    }
    out
}

fn num(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// A check of `a op b = c` by the inverse operation, if the note is one
/// binary operation on plain numbers and the check really holds.
fn inverse_check(c: &Calc) -> Option<String> {
    let expr = c.expr.replace(' ', "");
    let result = num(&c.result)?;
    // The operator: the first one after a leading sign.
    let (i, op) = expr.char_indices().skip(1).find(|(_, ch)| matches!(ch, '+' | '-' | '*' | '/'))?;
    let (a, b) = (num(&expr[..i])?, num(&expr[i + 1..])?);
    let f = |v: f64| format_number(v);
    let (text, holds) = match op {
        '+' => (format!("{} - {} = {}", f(result), f(b), f(a)), close(result - b, a) && close(a + b, result)),
        '-' => (format!("{} + {} = {}", f(result), f(b), f(a)), close(result + b, a) && close(a - b, result)),
        '*' if b != 0.0 => (format!("{} / {} = {}", f(result), f(b), f(a)), close(result / b, a) && close(a * b, result)),
        '/' if b != 0.0 => (format!("{} * {} = {}", f(result), f(b), f(a)), close(result * b, a) && close(a / b, result)),
        _ => return None,
    };
    holds.then_some(text)
}

/// The question's sentences; the last one is usually what is asked.
fn sentences(q: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = q.chars().collect();
    for (k, &ch) in chars.iter().enumerate() {
        cur.push(ch);
        let next_is_space = chars.get(k + 1).is_none_or(|c| c.is_whitespace());
        // A period between digits ("2.5") or before a non-space does not end a sentence.
        if matches!(ch, '.' | '?' | '!') && next_is_space {
            let s = cur.trim().to_string();
            if !s.is_empty() {
                out.push(s);
            }
            cur.clear();
        }
    }
    let s = cur.trim().to_string();
    if !s.is_empty() {
        out.push(s);
    }
    out
}

/// Lengthen one GSM8K problem. `raw_answer` is GSM8K's answer field (worked
/// solution with calculator notes, then `#### N`).
pub fn lengthen(question: &str, raw_answer: &str, rng: &mut ChaCha8Rng) -> Result<SftRecord> {
    let (work, _) = raw_answer.rsplit_once("####").context("answer has no '####'")?;
    let gold = reckon::answer::gsm8k_gold(raw_answer).context("no number after '####'")?;
    let question = question.trim();
    let sents = sentences(question);
    let (asked, facts) = match sents.split_last() {
        Some((last, rest)) if !rest.is_empty() => (last.clone(), rest.to_vec()),
        _ => (question.to_string(), Vec::new()),
    };
    let mut out: Vec<String> = Vec::new();
    out.push(pick(rng, &[
        "Let me restate the problem to make sure I understand it.",
        "First, let me reread the question carefully.",
        "Let me start by restating what the problem says.",
    ]).to_string());
    if !facts.is_empty() {
        out.push(pick(rng, &["What we know:", "The given information:", "Let me list the facts:"]).to_string());
        for f in &facts {
            out.push(format!("- {f}"));
        }
    }
    out.push(format!("{} {asked}", pick(rng, &["The question asks:", "What we need to find:", "So the goal is to answer:"])));
    out.push(pick(rng, &["Let me work through it step by step.", "Now let me solve it one step at a time.", "Let me go step by step."]).to_string());

    let mut results: Vec<String> = Vec::new();
    let lines: Vec<&str> = work.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    for line in &lines {
        out.push(strip_calculator(line).trim().to_string());
        for c in calculations(line) {
            let intro = pick(rng, &[
                "Wait, let me verify that calculation.",
                "Let me double-check this step.",
                "Hold on, let me make sure that is right.",
                "Wait, is that right? Let me check.",
            ]);
            let check = match inverse_check(&c) {
                Some(inv) => format!("{} = {}, and going back, {inv}.", c.expr, c.result),
                None => format!("Recomputing {}, I get {} again.", c.expr, c.result),
            };
            let ok = pick(rng, &["Yes, that checks out.", "Good, that is consistent.", "So that step is correct.", "That matches."]);
            out.push(format!("{intro} {check} {ok}"));
            results.push(c.result.clone());
        }
    }
    if !results.is_empty() {
        out.push(pick(rng, &[
            "Alternatively, let me retrace the whole solution once more.",
            "Let me go over the steps again from the start to be sure.",
            "Wait, let me verify the whole chain of reasoning.",
        ]).to_string());
        let chain: Vec<String> = results.iter().enumerate().map(|(k, r)| format!("step {} gives {r}", k + 1)).collect();
        out.push(format!("In order: {}.", chain.join(", ")));
    }
    out.push(format!(
        "{} {asked} {}",
        pick(rng, &["Let me make sure I answered what was asked:", "Checking against the question once more:"]),
        pick(rng, &["Yes, the result answers it.", "The last step gives exactly that."])
    ));
    out.push(format!("{} {gold}.", pick(rng, &["So the answer is", "Therefore, the final answer is", "The answer is"])));
    Ok(SftRecord { question: question.to_string(), thinking: out.join("\n"), answer: gold })
}

fn words(s: &str) -> usize {
    s.split_whitespace().count()
}

fn deciles(mut v: Vec<usize>) -> Vec<usize> {
    if v.is_empty() {
        return Vec::new();
    }
    v.sort_unstable();
    (0..=10).map(|d| v[(d * (v.len() - 1)) / 10]).collect()
}

/// GSM8K lines `offset..offset+limit` of `path` as long-trace SFT records,
/// with their length statistics.
pub fn gsm8k_long(path: &Path, seed: u64, offset: usize, limit: Option<usize>) -> Result<(Vec<SftRecord>, LengthStats)> {
    let lines: Vec<Gsm8kLine> = read_jsonl(path)?;
    let end = limit.map_or(lines.len(), |n| (offset + n).min(lines.len()));
    anyhow::ensure!(offset < end, "{}: no problems in lines {offset}..{end}", path.display());
    let mut recs = Vec::with_capacity(end - offset);
    let (mut plain_w, mut long_w) = (Vec::new(), Vec::new());
    for (i, l) in lines.iter().enumerate().take(end).skip(offset) {
        // Per problem, so that a record does not depend on which others were taken.
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let rec = lengthen(&l.question, &l.answer, &mut rng).with_context(|| format!("{}:{}", path.display(), i + 1))?;
        let plain = strip_calculator(l.answer.rsplit_once("####").map_or("", |(w, _)| w));
        plain_w.push(words(&plain));
        long_w.push(words(&rec.thinking));
        recs.push(rec);
    }
    let mean = |v: &[usize]| v.iter().sum::<usize>() as f64 / v.len().max(1) as f64;
    let (pm, lm) = (mean(&plain_w), mean(&long_w));
    let stats = LengthStats {
        problems: recs.len(),
        seed,
        offset,
        plain_mean_words: pm,
        long_mean_words: lm,
        ratio: if pm > 0.0 { lm / pm } else { 0.0 },
        long_word_deciles: deciles(long_w),
        plain_word_deciles: deciles(plain_w),
    };
    Ok((recs, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NATALIA_Q: &str = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?";
    const NATALIA_A: &str = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72";

    #[test]
    fn a_trace_keeps_every_step_verifies_each_calculation_and_ends_on_the_answer() {
        let r = lengthen(NATALIA_Q, NATALIA_A, &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
        assert_eq!(r.answer, "72");
        let t = &r.thinking;
        let s1 = t.find("Natalia sold 48/2 = 24 clips in May.").expect("step 1 kept, notes stripped");
        let s2 = t.find("Natalia sold 48+24 = 72 clips altogether").expect("step 2 kept");
        assert!(s1 < s2, "steps in order");
        assert!(t.contains("48/2 = 24, and going back, 24 * 2 = 48."), "{t}");
        assert!(t.contains("48+24 = 72, and going back, 72 - 24 = 48."), "{t}");
        assert!(t.contains("How many clips did Natalia sell altogether in April and May?"), "question restated");
        assert!(t.contains("step 1 gives 24, step 2 gives 72"), "{t}");
        assert!(t.trim_end().ends_with("72."), "{t}");
        assert!(!t.contains("<<"), "no calculator notes left");
    }

    #[test]
    fn inverse_checks_only_where_they_hold() {
        let c = |e: &str, r: &str| Calc { expr: e.into(), result: r.into() };
        assert_eq!(inverse_check(&c("12/60", "0.2")).as_deref(), Some("0.2 * 60 = 12"));
        assert_eq!(inverse_check(&c("100-50", "50")).as_deref(), Some("50 + 50 = 100"));
        assert_eq!(inverse_check(&c("0.2*50", "10")).as_deref(), Some("10 / 50 = 0.2"));
        assert_eq!(inverse_check(&c("-3+5", "2")).as_deref(), Some("2 - 5 = -3"));
        // GSM8K's notes are sometimes rounded or wrong: no false "check".
        assert_eq!(inverse_check(&c("10/3", "3.33")), None);
        assert_eq!(inverse_check(&c("2+2", "5")), None);
        assert_eq!(inverse_check(&c("100-50-30-15", "5")), None, "more than one operation");
        assert_eq!(inverse_check(&c("5/0", "0")), None);
    }

    #[test]
    fn the_recipe_is_deterministic_and_the_seed_changes_the_phrasing() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/gsm8k/train.jsonl");
        let (a, sa) = gsm8k_long(&data, 7, 10, Some(50)).unwrap();
        let (b, _) = gsm8k_long(&data, 7, 10, Some(50)).unwrap();
        let (c, _) = gsm8k_long(&data, 8, 10, Some(50)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(sa.problems, 50);
        // A record depends on (seed, index) only, not on the range taken.
        let (d, _) = gsm8k_long(&data, 7, 30, Some(5)).unwrap();
        assert_eq!(&a[20..25], &d[..]);
        assert!(gsm8k_long(&data, 7, 100_000, Some(5)).is_err());
    }

    #[test]
    fn on_1500_training_problems_traces_are_at_least_2_5_times_the_solutions() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/gsm8k/train.jsonl");
        let (recs, s) = gsm8k_long(&data, 0, 0, Some(1500)).unwrap();
        assert_eq!(recs.len(), 1500);
        assert!(s.ratio >= 2.5, "{s:?}");
        assert!(recs.iter().all(|r| !r.thinking.contains("<<") && r.thinking.contains(&r.answer)));
        assert_eq!(s.long_word_deciles.len(), 11);
    }
}
