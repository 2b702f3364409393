//! SFT data: `{question, thinking, answer}` JSONL, GSM8K conversion,
//! rendering in the s1 think format with the runtime's own prompt, loss
//! masks, truncation, batching and a resumable data order.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use reckon::format::{render_prompt, PromptPiece, ThinkFormat};
use serde::{Deserialize, Serialize};

pub use crate::io::jsonl::read_jsonl;
use crate::io::tokenizer::Tok;

/// One SFT example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftRecord {
    /// The problem.
    pub question: String,
    /// The reasoning trace (goes between `<|im_start|>think` and `<|im_start|>answer`).
    pub thinking: String,
    /// The final answer (after `Final Answer:`).
    pub answer: String,
}

/// A GSM8K line.
#[derive(Debug, Deserialize)]
struct Gsm8kLine {
    question: String,
    answer: String,
}

/// GSM8K `train.jsonl` to SFT records: the worked solution (calculator
/// notes `<<48/2=24>>` removed) becomes the thinking, the number after
/// `####` the answer.
pub fn gsm8k_to_sft(path: &Path) -> Result<Vec<SftRecord>> {
    let lines: Vec<Gsm8kLine> = read_jsonl(path)?;
    lines
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let (work, _) = l.answer.rsplit_once("####").with_context(|| format!("{}:{}: answer has no '####'", path.display(), i + 1))?;
            let gold = reckon::answer::gsm8k_gold(&l.answer).with_context(|| format!("{}:{}: no number after '####'", path.display(), i + 1))?;
            Ok(SftRecord { question: l.question.trim().to_string(), thinking: strip_calculator(work).trim().to_string(), answer: gold })
        })
        .collect()
}

/// Remove GSM8K's `<<expr=result>>` calculator annotations.
pub fn strip_calculator(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("<<") {
        out.push_str(&rest[..start]);
        match rest[start..].find(">>") {
            Some(end) => rest = &rest[start + end + 2..],
            None => {
                rest = &rest[start..];
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Tokens of one rendered example and which positions carry loss.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Token ids.
    pub ids: Vec<u32>,
    /// 1 where the token is the assistant's (trained on), else 0.
    pub trained: Vec<u8>,
}

/// The prompt exactly as the runtime renders it (ChatML + s1 think opening).
pub fn prompt_tokens(tok: &Tok, system: &str, question: &str) -> Result<Vec<u32>> {
    let pieces = render_prompt(None, ThinkFormat::S1, Some(system).filter(|s| !s.is_empty()), question, None, None);
    let mut ids = Vec::new();
    for p in pieces {
        match p {
            PromptPiece::Scaffold(s) => ids.extend(tok.encode_scaffold(&s)?),
            PromptPiece::Text(s) => ids.extend(tok.encode_plain(&s)?),
        }
    }
    Ok(ids)
}

/// The assistant's part: thinking, the s1 end-of-thinking delimiter,
/// `Final Answer: …` and `<|im_end|>`.
pub fn completion_tokens(tok: &Tok, thinking: &str, answer: &str) -> Result<Vec<u32>> {
    let s = ThinkFormat::S1.strings();
    let mut ids = tok.encode_plain(thinking.trim_end())?;
    ids.extend(tok.encode_scaffold(&format!("\n{}", s.close))?);
    ids.extend(tok.encode_plain(&format!("{} {}", s.answer_prefix, answer.trim()))?);
    ids.extend(tok.encode_scaffold("<|im_end|>")?);
    Ok(ids)
}

/// How over-long sequences were handled.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TokenizeStats {
    /// Completions cut to fit `max_seq_len`.
    pub truncated: usize,
    /// Examples whose prompt alone did not fit (skipped).
    pub dropped: usize,
}

/// Render and tokenize every record.
pub fn tokenize_sft(records: &[SftRecord], tok: &Tok, system: &str, max_len: usize, truncate: bool) -> Result<(Vec<Example>, TokenizeStats)> {
    let mut stats = TokenizeStats::default();
    let mut out = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        let prompt = prompt_tokens(tok, system, &r.question)?;
        let completion = completion_tokens(tok, &r.thinking, &r.answer)?;
        let total = prompt.len() + completion.len();
        if total > max_len {
            if !truncate {
                bail!("record {}: {total} tokens exceed data.max_seq_len = {max_len} (raise it, or set data.on_too_long = \"truncate\")", i + 1);
            }
            if prompt.len() + 1 >= max_len {
                stats.dropped += 1;
                continue;
            }
            stats.truncated += 1;
        }
        let mut ids = prompt.clone();
        ids.extend(&completion);
        ids.truncate(max_len);
        let mut trained = vec![0u8; prompt.len()];
        trained.resize(ids.len(), 1);
        out.push(Example { ids, trained });
    }
    ensure!(!out.is_empty(), "no example fits data.max_seq_len = {max_len}");
    if stats.truncated + stats.dropped > 0 {
        log::warn!("{} example(s) truncated and {} dropped to fit max_seq_len = {max_len}", stats.truncated, stats.dropped);
    }
    Ok((out, stats))
}

/// A padded micro-batch, shifted for next-token prediction.
pub struct Batch {
    /// `[b, t]` u32 inputs (right-padded).
    pub input: Tensor,
    /// `[b, t]` 1 for real tokens.
    pub attention: Tensor,
    /// `[b, t]` u32 next tokens.
    pub targets: Tensor,
    /// `[b, t]` f32, 1 where the target is trained.
    pub loss_mask: Tensor,
    /// Trained target tokens in the batch.
    pub n_loss_tokens: usize,
    /// Real tokens in the batch.
    pub n_tokens: usize,
}

/// Pad `examples` to the longest and shift by one.
pub fn make_batch(examples: &[&Example], pad: u32, device: &Device) -> Result<Batch> {
    let t = examples.iter().map(|e| e.ids.len().saturating_sub(1)).max().unwrap_or(0).max(1);
    let b = examples.len();
    let (mut input, mut att, mut tgt, mut mask) = (vec![pad; b * t], vec![0u8; b * t], vec![pad; b * t], vec![0f32; b * t]);
    let (mut n_loss, mut n_tok) = (0, 0);
    for (i, e) in examples.iter().enumerate() {
        for j in 0..e.ids.len().saturating_sub(1) {
            input[i * t + j] = e.ids[j];
            att[i * t + j] = 1;
            tgt[i * t + j] = e.ids[j + 1];
            if e.trained[j + 1] == 1 {
                mask[i * t + j] = 1.0;
                n_loss += 1;
            }
            n_tok += 1;
        }
    }
    Ok(Batch {
        input: Tensor::from_vec(input, (b, t), device)?,
        attention: Tensor::from_vec(att, (b, t), device)?,
        targets: Tensor::from_vec(tgt, (b, t), device)?,
        loss_mask: Tensor::from_vec(mask, (b, t), device)?,
        n_loss_tokens: n_loss,
        n_tokens: n_tok,
    })
}

/// Indices of the examples for global micro-batch slot `k` onwards: epochs
/// are seeded permutations, so the order depends only on (seed, position)
/// and a resumed run sees exactly the data it would have.
pub fn sample_indices(n: usize, seed: u64, start: u64, count: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(count);
    let mut pos = start;
    while out.len() < count {
        let epoch = pos / n as u64;
        let mut perm: Vec<usize> = (0..n).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        perm.shuffle(&mut rng);
        let mut i = (pos % n as u64) as usize;
        while i < n && out.len() < count {
            out.push(perm[i]);
            i += 1;
            pos += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calculator_notes_are_removed() {
        assert_eq!(strip_calculator("She sold 48/2 = <<48/2=24>>24 clips."), "She sold 48/2 = 24 clips.");
        assert_eq!(strip_calculator("a <<1+1=2>>2 and <<2*3=6>>6"), "a 2 and 6");
        assert_eq!(strip_calculator("unclosed <<3"), "unclosed <<3");
    }

    #[test]
    fn data_order_is_a_function_of_position_only() {
        let whole = sample_indices(5, 7, 0, 12);
        let resumed: Vec<usize> = [sample_indices(5, 7, 0, 4), sample_indices(5, 7, 4, 8)].concat();
        assert_eq!(whole, resumed);
        let mut first_epoch = whole[..5].to_vec();
        first_epoch.sort();
        assert_eq!(first_epoch, vec![0, 1, 2, 3, 4], "an epoch visits every example once");
        assert_ne!(whole[..5], whole[5..10], "epochs are reshuffled");
    }
}
