//! The GRPO loop: budget-forced rollouts per prompt group, verifiable
//! rewards, group-normalized advantages, the clipped objective over the
//! model's own tokens, AdamW; metrics, plots, checkpoints and exact resume
//! as in SFT.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use reckon::budget::{BudgetConfig, ThinkEnd};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, TrainState};
use crate::config::GrpoConfig;
use crate::data::{prompt_tokens, sample_indices};
use crate::model::{token_logprobs, Qwen2};
use crate::objective::objective;
use crate::optim::{global_norm, lr_at, AdamW};
use crate::plot::{curves, Panel};
use crate::rewards::{advantages, group_rewards, Completion};
use crate::rollout::{rollout, s1_delimiters, Pieces, Rollout, Sampling};
use crate::tokenizer::Tok;
use crate::train::{accumulate, append_metrics, compute_dtype, device, prepare_out, progress_bar, read_metrics, resume, save_if_due, write_metrics, RunOptions, TrainError};
use crate::weights;

/// A question with its gold answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Problem {
    /// The question.
    pub question: String,
    /// The gold answer: a number, or a GSM8K solution ending in `#### N`.
    pub answer: String,
}

impl Problem {
    /// The gold answer, normalized.
    pub fn gold(&self) -> String {
        reckon::answer::gsm8k_gold(&self.answer).unwrap_or_else(|| self.answer.trim().to_string())
    }
}

/// One line of the GRPO `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrpoMetrics {
    /// Step (1-based).
    pub step: u64,
    /// Mean total reward.
    pub reward: f64,
    /// Mean correctness term.
    pub reward_correctness: f64,
    /// Mean format term.
    pub reward_format: f64,
    /// Mean length term.
    pub reward_length: f64,
    /// Share of correct completions.
    pub accuracy: f64,
    /// Mean tokens the model generated per completion.
    pub mean_length: f64,
    /// Median of the same.
    pub median_length: f64,
    /// Share of completions whose thinking was cut by the cap.
    pub forced_share: f64,
    /// Mean k3 KL to the reference (0 without one).
    pub kl: f64,
    /// Share of tokens clipped.
    pub clip_fraction: f64,
    /// Gradient norm before clipping (last iteration).
    pub grad_norm: f64,
    /// Learning rate.
    pub lr: f64,
    /// Sampling throughput.
    pub rollout_tokens_per_s: f64,
    /// Training throughput (forward + backward tokens).
    pub train_tokens_per_s: f64,
    /// Seconds so far.
    pub elapsed_s: f64,
}

/// Load problems.
pub fn read_problems(path: &Path) -> Result<Vec<Problem>> {
    crate::data::read_jsonl(path)
}

fn judge(r: &Rollout, gold: &str) -> Completion {
    let extracted = reckon::answer::extract_answer(&r.answer, &r.thinking);
    Completion {
        correct: extracted.as_ref().is_some_and(|e| reckon::answer::answers_match(&e.value, gold)),
        natural_end: r.think_end == Some(ThinkEnd::Natural),
        answered: extracted.is_some(),
        generated_tokens: r.generated_tokens,
    }
}

/// Greedy budget-forced evaluation: (accuracy, mean generated tokens).
pub fn evaluate(model: &Qwen2, tok: &Tok, system: &str, problems: &[Problem], budget: &BudgetConfig) -> Result<(f64, f64)> {
    let pieces = Pieces::new(tok);
    let delims = s1_delimiters(tok)?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let greedy = Sampling { temperature: 0.0, top_p: 1.0 };
    let (mut right, mut len) = (0usize, 0usize);
    for p in problems {
        let prompt = prompt_tokens(tok, system, &p.question)?;
        let r = rollout(model, &pieces, &delims, budget, &prompt, &greedy, &mut rng)?;
        let c = judge(&r, &p.gold());
        right += usize::from(c.correct);
        len += c.generated_tokens;
    }
    let n = problems.len().max(1) as f64;
    Ok((right as f64 / n, len as f64 / n))
}

/// Run (or resume) GRPO.
pub fn run_grpo(cfg: &GrpoConfig, opts: &RunOptions) -> Result<Vec<GrpoMetrics>> {
    let dev = device(&cfg.model.device)?;
    let problems = read_problems(&cfg.data.train)?;
    let ckpt_root = prepare_out(opts)?;
    let run_config = serde_json::to_value(cfg)?;
    let src = weights::load(Path::new(&cfg.model.source))?;
    let base_tensors = src.tensors;
    let (mut model, tok, mut opt, mut rng, mut state) = match resume(&ckpt_root, &run_config, &cfg.optim, &dev, &opts.out)? {
        Some(r) => r,
        None => {
            let mut rng = ChaCha8Rng::seed_from_u64(cfg.train.seed);
            let model = Qwen2::from_tensors(src.config.clone(), base_tensors.clone(), cfg.lora.clone(), &mut rng, &dev)?;
            let state = TrainState::fresh("grpo", cfg.lora.clone(), run_config.clone(), &cfg.model.source, &rng);
            (model, src.tok, AdamW::new(cfg.optim.clone()), rng, state)
        }
    };
    model.set_compute_dtype(compute_dtype(&cfg.model.compute_dtype, &dev));
    // The frozen reference for the KL term: adapters off under LoRA, the
    // starting weights otherwise.
    let reference = if cfg.objective.beta > 0.0 {
        Some(match cfg.lora {
            Some(_) => model.without_lora(),
            None => Qwen2::from_tensors(src.config.clone(), base_tensors, None, &mut ChaCha8Rng::seed_from_u64(0), &dev)?,
        })
    } else {
        None
    };
    let pieces = Pieces::new(&tok);
    let delims = s1_delimiters(&tok)?;
    let pad = tok.id("<|endoftext|>").unwrap_or(0);
    let metrics_path = opts.out.join("metrics.jsonl");
    let mut history: Vec<GrpoMetrics> = read_metrics(&metrics_path)?;
    history.retain(|m| m.step <= state.step);
    write_metrics(&metrics_path, &history)?;
    let params = model.trainable();
    let bar = progress_bar(opts.progress, cfg.train.steps, state.step, "grpo");
    let mut last_ckpt = checkpoint::list(&ckpt_root)?.pop().map(|(_, p)| p);
    let mut run = Vec::new();
    let mut steps_now = 0;
    while state.step < cfg.train.steps {
        let step = state.step;
        let t0 = Instant::now();
        let idx = sample_indices(problems.len(), cfg.train.seed, step * cfg.train.prompts_per_step as u64, cfg.train.prompts_per_step);
        // Rollouts.
        let mut seqs: Vec<(Vec<u32>, usize, Rollout)> = Vec::new();
        let mut parts = Vec::new();
        let mut advs = Vec::new();
        let mut judged = Vec::new();
        for &i in &idx {
            let p = &problems[i];
            let prompt = prompt_tokens(&tok, &cfg.data.system_prompt, &p.question)?;
            let gold = p.gold();
            let mut group = Vec::new();
            for _ in 0..cfg.rollout.group_size {
                let r = rollout(&model, &pieces, &delims, &cfg.rollout.budget, &prompt, &cfg.rollout.sampling, &mut rng)?;
                group.push(judge(&r, &gold));
                seqs.push((prompt.clone(), prompt.len(), r));
            }
            let rewards = group_rewards(&group, cfg.reward.weights, cfg.reward.length);
            advs.extend(advantages(&rewards.iter().map(|r| r.total).collect::<Vec<_>>(), cfg.reward.scale_by_std));
            parts.extend(rewards);
            judged.extend(group);
        }
        let rollout_s = t0.elapsed().as_secs_f64();
        let rollout_tokens: usize = seqs.iter().map(|s| s.2.tokens.len()).sum();

        // The batch: prompt + completion, loss only on generated tokens.
        let t1 = Instant::now();
        let tlen = seqs.iter().map(|(p, _, r)| p.len() + r.tokens.len() - 1).max().unwrap_or(1);
        let b = seqs.len();
        let (mut input, mut att, mut tgt, mut mask) = (vec![pad; b * tlen], vec![0u8; b * tlen], vec![pad; b * tlen], vec![0f32; b * tlen]);
        for (i, (p, plen, r)) in seqs.iter().enumerate() {
            let full: Vec<u32> = p.iter().chain(&r.tokens).copied().collect();
            for j in 0..full.len() - 1 {
                input[i * tlen + j] = full[j];
                att[i * tlen + j] = 1;
                tgt[i * tlen + j] = full[j + 1];
                let k = j + 1;
                if k >= *plen && r.generated[k - plen] {
                    mask[i * tlen + j] = 1.0;
                }
            }
        }
        let input = Tensor::from_vec(input, (b, tlen), &dev)?;
        let att = Tensor::from_vec(att, (b, tlen), &dev)?;
        let tgt = Tensor::from_vec(tgt, (b, tlen), &dev)?;
        let mask = Tensor::from_vec(mask, (b, tlen), &dev)?;
        let adv = Tensor::from_vec(advs.iter().map(|&a| a as f32).collect::<Vec<_>>(), b, &dev)?;
        let old = token_logprobs(&model.forward(&input, &att, None)?, &tgt)?.detach();
        let ref_lp = match &reference {
            Some(r) => Some(token_logprobs(&r.forward(&input, &att, None)?, &tgt)?.detach()),
            None => None,
        };
        let lr = lr_at(&cfg.optim, step, cfg.train.steps);
        let (mut kl, mut clip, mut norm) = (0.0, 0.0, 0.0);
        for _ in 0..cfg.train.num_iterations {
            let lp = token_logprobs(&model.forward(&input, &att, Some(&mut rng))?, &tgt)?;
            let o = objective(&lp, &old, ref_lp.as_ref(), &adv, &mask, &cfg.objective)?;
            let l = o.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !l.is_finite() {
                return Err(TrainError::NonFinite { what: "loss", step: step + 1, last: last_ckpt }.into());
            }
            let mut grads = BTreeMap::new();
            accumulate(&mut grads, &params, &o.loss.backward()?)?;
            norm = global_norm(&grads)?;
            if !norm.is_finite() {
                return Err(TrainError::NonFinite { what: "gradient norm", step: step + 1, last: last_ckpt }.into());
            }
            opt.step(&params, &grads, lr)?;
            kl = o.kl;
            clip = o.clip_fraction;
        }
        let train_s = t1.elapsed().as_secs_f64();
        let n = judged.len() as f64;
        let lens: Vec<f64> = judged.iter().map(|c| c.generated_tokens as f64).collect();
        state.step += 1;
        state.elapsed_s += t0.elapsed().as_secs_f64();
        state.tokens_seen += rollout_tokens as u64;
        let m = GrpoMetrics {
            step: state.step,
            reward: parts.iter().map(|p| p.total).sum::<f64>() / n,
            reward_correctness: parts.iter().map(|p| p.correctness).sum::<f64>() / n,
            reward_format: parts.iter().map(|p| p.format).sum::<f64>() / n,
            reward_length: parts.iter().map(|p| p.length).sum::<f64>() / n,
            accuracy: judged.iter().filter(|c| c.correct).count() as f64 / n,
            mean_length: lens.iter().sum::<f64>() / n,
            median_length: reckon::eval::report::median(lens.clone()),
            forced_share: seqs.iter().filter(|s| s.2.think_end != Some(ThinkEnd::Natural)).count() as f64 / n,
            kl,
            clip_fraction: clip,
            grad_norm: norm,
            lr,
            rollout_tokens_per_s: rollout_tokens as f64 / rollout_s,
            train_tokens_per_s: (b * tlen * cfg.train.num_iterations) as f64 / train_s,
            elapsed_s: state.elapsed_s,
        };
        append_metrics(&metrics_path, &m)?;
        bar.set_position(state.step);
        bar.set_message(format!("reward {:.3} acc {:.2} len {:.0}", m.reward, m.accuracy, m.mean_length));
        run.push(m);
        steps_now += 1;
        let stopping = opts.stop_after.is_some_and(|k| steps_now >= k);
        if let Some(p) = save_if_due(&ckpt_root, &cfg.checkpoint, cfg.train.steps, stopping, &mut state, &model, &opt, &rng, &tok)? {
            last_ckpt = Some(p);
        }
        if stopping {
            break;
        }
    }
    bar.finish_and_clear();
    let all: Vec<GrpoMetrics> = read_metrics(&metrics_path)?;
    plot_grpo(&opts.out.join("curves.png"), &all).context("plotting GRPO curves")?;
    Ok(run)
}

fn plot_grpo(png: &Path, rows: &[GrpoMetrics]) -> Result<()> {
    let pts = |f: fn(&GrpoMetrics) -> f64| rows.iter().map(|m| (m.step as f64, f(m))).collect::<Vec<_>>();
    curves(
        png,
        "GRPO",
        &[
            Panel { label: "mean reward", points: pts(|m| m.reward), log_y: false },
            Panel { label: "accuracy", points: pts(|m| m.accuracy), log_y: false },
            Panel { label: "mean completion tokens", points: pts(|m| m.mean_length), log_y: false },
        ],
    )
}
