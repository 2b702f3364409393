//! Teacher-forced agreement of models with a reference: do two files of
//! one model (a quantized export and the F32 one, or a base with an adapter
//! and the merged export) predict the same next tokens over the same texts?
//!
//! Each text (a question and a completion, e.g. an evaluation's records) is
//! decoded by every model in lockstep, chunk by chunk with logits at every
//! position ([`Engine::teacher_forced`]). Over the completion's positions it
//! measures how often the models' most likely next token equals the
//! reference's (top-1 agreement) and the mean KL(reference ‖ model) of their
//! next-token distributions, in nats. Unlike free-running answers, one early
//! difference does not send the texts apart: every position is judged on the
//! same context.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::budget::TokenId;
use crate::engine::{Engine, SolveOptions};
use crate::error::{ReckonError, Result};
use crate::format::ThinkFormat;

/// A question and a completion to force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Text {
    /// The question (rendered with the model's prompt template).
    pub question: String,
    /// The thinking.
    pub thinking: String,
    /// The answer.
    pub answer: String,
}

/// Texts from an evaluation's records file (`records/<model>/<config>.jsonl`),
/// the first `limit` of them; records that failed are skipped.
pub fn texts_from_records(path: &Path, limit: Option<usize>) -> Result<Vec<Text>> {
    let raw = std::fs::read_to_string(path).map_err(|e| ReckonError::io(format!("reading {}", path.display()), e))?;
    let mut out = Vec::new();
    for (i, line) in raw.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let r: super::Record = serde_json::from_str(line).map_err(|e| ReckonError::InvalidOption(format!("{} line {}: not an eval record: {e}", path.display(), i + 1)))?;
        if r.error.is_none() {
            out.push(Text { question: r.question, thinking: r.thinking, answer: r.answer });
        }
        if limit.is_some_and(|n| out.len() >= n) {
            break;
        }
    }
    Ok(out)
}

/// How one model agrees with the reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// The model's label.
    pub model: String,
    /// Texts compared.
    pub texts: usize,
    /// Completion positions compared.
    pub positions: u64,
    /// Share of positions whose most likely next token is the reference's.
    pub top1_agreement: f64,
    /// Mean KL(reference ‖ model) over positions, nats.
    pub mean_kl: f64,
    /// Largest KL at one position, nats.
    pub max_kl: f64,
}

/// The tokens of a text as `engine` would decode it (prompt, thinking, the
/// close delimiter where the format hides it, answer) and where the
/// completion starts.
pub fn text_tokens(engine: &Engine, text: &Text) -> Result<(Vec<TokenId>, usize)> {
    let mut tokens = engine.prompt_tokens(&text.question, &SolveOptions::default())?;
    let prompt = tokens.len();
    tokens.extend(engine.tokenize(&text.thinking, false)?);
    // A plain model's close (a paragraph break) is in its answer text.
    if engine.format() != ThinkFormat::Plain {
        tokens.extend(engine.delimiters().close.iter().copied());
    }
    tokens.extend(engine.tokenize(&text.answer, false)?);
    Ok((tokens, prompt))
}

/// Compare each of `models` with `reference` over `texts`; `done` is called
/// after each text. Every model is forced through the same token ids, the
/// reference's tokenization (its prompt template and think format), so the
/// models must share the reference's vocabulary, token for token.
pub fn compare(reference: &Engine, models: &[(String, &Engine)], texts: &[Text], threads: Option<u32>, mut done: impl FnMut()) -> Result<Vec<Agreement>> {
    use crate::budget::TokenText;
    let n_vocab = reference.vocab().len();
    for (label, m) in models {
        let same = m.vocab().len() == n_vocab && (0..n_vocab as TokenId).all(|t| m.vocab().piece(t) == reference.vocab().piece(t));
        if !same {
            return Err(ReckonError::InvalidOption(format!("{label} has another vocabulary than the reference: compare files of one model")));
        }
    }
    let mut acc: Vec<(u64, u64, f64, f64)> = vec![(0, 0, 0.0, 0.0); models.len()];
    let mut p_ref = vec![0f32; n_vocab];
    for text in texts {
        let (tokens, prompt) = text_tokens(reference, text)?;
        let mut r = reference.teacher_forced(tokens.clone(), threads)?;
        let mut others = models.iter().map(|(_, m)| m.teacher_forced(tokens.clone(), threads)).collect::<Result<Vec<_>>>()?;
        loop {
            let span = r.advance()?;
            if span.is_empty() {
                break;
            }
            for o in &mut others {
                o.advance()?;
            }
            // Logits after position p predict token p + 1: the completion's.
            for p in span.filter(|&p| p + 1 >= prompt && p + 1 < tokens.len()) {
                let lr = r.logits(p);
                let (top_r, lse_r) = top_and_lse(lr);
                for (q, &l) in p_ref.iter_mut().zip(lr) {
                    *q = (f64::from(l) - lse_r).exp() as f32;
                }
                for (o, a) in others.iter().zip(acc.iter_mut()) {
                    let lo = o.logits(p);
                    let (top_o, lse_o) = top_and_lse(lo);
                    let cross: f64 = p_ref.iter().zip(lr.iter().zip(lo)).map(|(&q, (&x, &y))| f64::from(q) * f64::from(x - y)).sum();
                    let kl = (cross - (lse_r - lse_o)).max(0.0);
                    a.0 += 1;
                    a.1 += u64::from(top_r == top_o);
                    a.2 += kl;
                    a.3 = a.3.max(kl);
                }
            }
        }
        done();
    }
    Ok(models
        .iter()
        .zip(acc)
        .map(|((label, _), (n, same, kl, max))| Agreement {
            model: label.clone(),
            texts: texts.len(),
            positions: n,
            top1_agreement: if n > 0 { same as f64 / n as f64 } else { 0.0 },
            mean_kl: if n > 0 { kl / n as f64 } else { 0.0 },
            max_kl: max,
        })
        .collect())
}

/// The most likely token and log Σ exp(logits).
fn top_and_lse(logits: &[f32]) -> (usize, f64) {
    let (top, max) = logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |(i, m), (j, &l)| if l > m { (j, l) } else { (i, m) });
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    (top, f64::from(max) + sum.ln())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_token_and_log_sum_exp() {
        let (top, lse) = top_and_lse(&[0.0, 2.0, 1.0]);
        assert_eq!(top, 1);
        assert!((lse - (1f64 + 2f64.exp() + 1f64.exp()).ln()).abs() < 1e-12);
    }
}
