//! The GRPO loop: budget-forced rollouts per prompt group, verifiable
//! rewards, group-normalized advantages, the clipped objective over the
//! model's own tokens, AdamW; metrics, plots, checkpoints and exact resume
//! as in SFT.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use reckon::budget::{BudgetConfig, ThinkEnd};
use serde::{Deserialize, Serialize};

use crate::io::checkpoint::Stage;
use crate::io::tokenizer::Tok;
use crate::io::weights;
use crate::model::Qwen2;
use crate::rl::config::GrpoConfig;
use crate::rl::engine::EngineRollouts;
use crate::rl::objective::{objective_part, Totals};
use crate::rl::rewards::{advantages, group_rewards, Completion};
use crate::rl::rollout::{rollout, s1_delimiters, Pieces, Rollout, Sampling};
use crate::run::optim::{global_norm, lr_at, AdamW};
use crate::run::plot::{curves, Panel};
use crate::run::session::{accumulate, Guard, Plan, Row, RunOptions, Session, StepDone};
use crate::sft::data::{prompt_tokens, sample_indices};

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
    /// Mean generated tokens of the correct completions (none: no
    /// completion was correct).
    #[serde(default)]
    pub mean_length_correct: Option<f64>,
    /// Mean generated tokens of the wrong completions (none: none was).
    #[serde(default)]
    pub mean_length_wrong: Option<f64>,
    /// Share of completions whose thinking was cut by the cap.
    pub forced_share: f64,
    /// Mean k3 KL to the reference (0 without one).
    pub kl: f64,
    /// Share of tokens clipped.
    pub clip_fraction: f64,
    /// Gradient norm before clipping (last iteration).
    pub grad_norm: f64,
    /// Completions in the update (groups with all-equal rewards left out).
    #[serde(default)]
    pub trained_completions: usize,
    /// Engine rollouts: mean |ln π_trainer − ln π_engine| over generated tokens.
    #[serde(default)]
    pub mismatch_mean: f64,
    /// Engine rollouts: the largest such gap.
    #[serde(default)]
    pub mismatch_max: f64,
    /// Engine rollouts: k3 estimate of KL(π_engine ‖ π_trainer).
    #[serde(default)]
    pub mismatch_k3: f64,
    /// Mean truncated-importance-sampling weight (1: none applied).
    #[serde(default)]
    pub tis_weight: f64,
    /// Learning rate.
    pub lr: f64,
    /// Sampling throughput.
    pub rollout_tokens_per_s: f64,
    /// Training throughput (forward + backward tokens).
    pub train_tokens_per_s: f64,
    /// Seconds of this step's rollouts (the engine's adapter swap included).
    #[serde(default)]
    pub rollout_s: f64,
    /// Seconds of this step's policy update.
    #[serde(default)]
    pub train_s: f64,
    /// Seconds so far.
    pub elapsed_s: f64,
}

/// Load problems.
pub fn read_problems(path: &Path) -> Result<Vec<Problem>> {
    crate::sft::data::read_jsonl(path)
}

fn judge(r: &Rollout, gold: &str) -> Completion {
    // The answer segment only: a right number in the thinking with a wrong
    // (or no) answer is not a correct completion.
    let extracted = reckon::answer::extract_answer(&r.answer, "");
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
    let problems = read_problems(&cfg.data.train)?;
    let plan = Plan {
        stage: Stage::Grpo,
        model: &cfg.model,
        lora: cfg.lora.as_ref(),
        optim: &cfg.optim,
        checkpoint: &cfg.checkpoint,
        steps: cfg.train.steps,
        seed: cfg.train.seed,
        run_config: serde_json::to_value(cfg)?,
    };
    let mut run = Session::open(&plan, opts, |rng, device| Session::from_source(&plan, rng, device))?;
    // The frozen reference for the KL term: the model with adapters off
    // under LoRA, the starting weights under full fine-tuning.
    let reference = match (cfg.objective.beta > 0.0, &cfg.lora) {
        (true, Some(_)) => Some(run.model.without_lora()),
        (true, None) => {
            let src = weights::load(Path::new(&cfg.model.source))?;
            Some(Qwen2::from_tensors(src.config, src.tensors, None, &mut ChaCha8Rng::seed_from_u64(0), &run.device)?)
        }
        _ => None,
    };
    // The engine loads what the run trains on: model.source (its adapters
    // stacked under the run's), or with continue_adapters the source
    // checkpoint's own base, under the run's adapters alone.
    let engine_source = if run.state.continued_from.is_some() { run.state.source.clone() } else { cfg.model.source.clone() };
    let mut engine = match cfg.rollout.backend(Path::new(&engine_source))? {
        Some(base) => Some(EngineRollouts::open(base, &run.model, cfg.rollout.engine_slots, None, cfg.rollout.engine_flash_attention)?),
        None => None,
    };
    let pieces = Pieces::new(&run.tok);
    let delims = s1_delimiters(&run.tok)?;
    let pad = run.tok.id("<|endoftext|>").unwrap_or(0);
    run.drive(&plan, opts, |run| {
        let step = run.state.step;
        let t0 = Instant::now();
        let idx = sample_indices(problems.len(), cfg.train.seed, step * cfg.train.prompts_per_step as u64, cfg.train.prompts_per_step);
        // Rollouts: (prompt, completion, engine log-probs) per problem's group.
        let budgets: Vec<reckon::BudgetConfig> = (0..idx.len()).map(|slot| cfg.rollout.budget_for(cfg.train.seed, step, slot)).collect();
        let groups: Vec<Vec<(Vec<u32>, Rollout, Option<Vec<f32>>)>> = match &mut engine {
            Some(er) => {
                er.sync(&run.model)?;
                let questions: Vec<String> = idx.iter().map(|&i| problems[i].question.clone()).collect();
                let seed = (cfg.train.seed as u32).wrapping_add((step as u32).wrapping_mul(0x9E37_79B9));
                let g = cfg.rollout.group_size;
                let mut all = er.rollouts(&questions, &budgets, g as u32, &cfg.rollout.sampling, &cfg.data.system_prompt, seed)?.into_iter();
                (0..idx.len()).map(|_| all.by_ref().take(g).map(|e| (e.prompt, e.rollout, Some(e.behaviour))).collect()).collect()
            }
            None => {
                let mut out = Vec::new();
                for (slot, &i) in idx.iter().enumerate() {
                    let prompt = prompt_tokens(&run.tok, &cfg.data.system_prompt, &problems[i].question)?;
                    let mut group = Vec::new();
                    for _ in 0..cfg.rollout.group_size {
                        let r = rollout(&run.model, &pieces, &delims, &budgets[slot], &prompt, &cfg.rollout.sampling, &mut run.rng)?;
                        group.push((prompt.clone(), r, None));
                    }
                    out.push(group);
                }
                out
            }
        };
        let mut seqs: Vec<Scored> = Vec::new();
        let mut rolled: Vec<Rollout> = Vec::new();
        let mut parts = Vec::new();
        let mut judged = Vec::new();
        for (&i, outs) in idx.iter().zip(groups) {
            let gold = problems[i].gold();
            let group: Vec<Completion> = outs.iter().map(|(_, r, _)| judge(r, &gold)).collect();
            let rewards = group_rewards(&group, cfg.reward.weights, cfg.reward.length);
            let totals: Vec<f64> = rewards.iter().map(|r| r.total).collect();
            let uniform = totals.iter().all(|&t| t == totals[0]);
            if !(uniform && cfg.train.drop_uniform_groups) {
                for ((prompt, r, behaviour), a) in outs.iter().zip(advantages(&totals, cfg.reward.scale_by_std)) {
                    seqs.push(Scored { prompt: prompt.clone(), tokens: r.tokens.clone(), generated: r.generated.clone(), advantage: a, behaviour: behaviour.clone() });
                }
            }
            rolled.extend(outs.into_iter().map(|(_, r, _)| r));
            parts.extend(rewards);
            judged.extend(group);
        }
        let rollout_s = t0.elapsed().as_secs_f64();
        let rollout_tokens: usize = rolled.iter().map(|r| r.tokens.len()).sum();

        let t1 = Instant::now();
        let lr = lr_at(&cfg.optim, step, cfg.train.steps);
        let guard = run.guard();
        let update = policy_update(&run.model, reference.as_ref(), &seqs, cfg, pad, &mut run.opt, lr, &mut run.rng, &guard)?;
        let train_s = t1.elapsed().as_secs_f64();
        let n = judged.len() as f64;
        let lens: Vec<f64> = judged.iter().map(|c| c.generated_tokens as f64).collect();
        let row = GrpoMetrics {
            step: 0,
            reward: parts.iter().map(|p| p.total).sum::<f64>() / n,
            reward_correctness: parts.iter().map(|p| p.correctness).sum::<f64>() / n,
            reward_format: parts.iter().map(|p| p.format).sum::<f64>() / n,
            reward_length: parts.iter().map(|p| p.length).sum::<f64>() / n,
            accuracy: judged.iter().filter(|c| c.correct).count() as f64 / n,
            mean_length: lens.iter().sum::<f64>() / n,
            median_length: reckon::eval::report::median(lens.clone()),
            mean_length_correct: mean_length_where(&judged, true),
            mean_length_wrong: mean_length_where(&judged, false),
            forced_share: rolled.iter().filter(|r| r.think_end != Some(ThinkEnd::Natural)).count() as f64 / n,
            kl: update.kl,
            clip_fraction: update.clip_fraction,
            grad_norm: update.grad_norm,
            trained_completions: seqs.len(),
            mismatch_mean: update.mismatch_mean,
            mismatch_max: update.mismatch_max,
            mismatch_k3: update.mismatch_k3,
            tis_weight: update.tis_weight,
            lr,
            rollout_tokens_per_s: rollout_tokens as f64 / rollout_s,
            train_tokens_per_s: update.tokens as f64 / train_s,
            rollout_s,
            train_s,
            elapsed_s: 0.0,
        };
        Ok(StepDone { row, tokens: rollout_tokens as u64 })
    })
}

impl Row for GrpoMetrics {
    fn step(&self) -> u64 {
        self.step
    }
    fn stamp(&mut self, step: u64, elapsed_s: f64) {
        self.step = step;
        self.elapsed_s = elapsed_s;
    }
    fn message(&self) -> String {
        format!("reward {:.3} acc {:.2} len {:.0}", self.reward, self.accuracy, self.mean_length)
    }
    fn plot(dir: &Path, rows: &[Self]) -> Result<()> {
        plot_grpo(&dir.join("curves.png"), rows)
    }
}

/// A completion with its advantage, ready for the policy loss.
#[derive(Debug, Clone)]
pub struct Scored {
    /// The prompt's tokens.
    pub prompt: Vec<u32>,
    /// The completion's tokens.
    pub tokens: Vec<u32>,
    /// Per completion token: sampled by the model (trained) or injected.
    pub generated: Vec<bool>,
    /// Group-relative advantage.
    pub advantage: f64,
    /// ln π of each completion token under the engine that sampled it
    /// (engine rollouts; 0 where injected): TIS weights and the mismatch.
    pub behaviour: Option<Vec<f32>>,
}

/// What one policy update did.
#[derive(Debug, Clone, Default)]
pub struct UpdateStats {
    /// Mean k3 KL to the reference over active tokens (last iteration).
    pub kl: f64,
    /// Share of active tokens clipped (last iteration).
    pub clip_fraction: f64,
    /// Gradient norm before clipping (last iteration).
    pub grad_norm: f64,
    /// Padded tokens forwarded and backpropagated, all iterations.
    pub tokens: usize,
    /// Micro-batches per iteration.
    pub micro_batches: usize,
    /// Engine rollouts: mean |ln π_trainer − ln π_engine| over generated tokens.
    pub mismatch_mean: f64,
    /// The largest such gap.
    pub mismatch_max: f64,
    /// k3 estimate of KL(π_engine ‖ π_trainer) over the same tokens.
    pub mismatch_k3: f64,
    /// Mean TIS weight over trained tokens (1 without engine log-probs).
    pub tis_weight: f64,
}

/// Pack sequences of `lens` into micro-batches: sorted by length (so a
/// batch pads little), each at most `budget` padded tokens (rows × longest;
/// a sequence longer than the budget goes alone). Returns indices.
pub fn micro_batches(lens: &[usize], budget: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(lens[i]), i));
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    for i in order {
        // Sorted longest first: the batch's first row is its longest.
        let longest = cur.first().map_or(lens[i], |&f| lens[f]);
        if !cur.is_empty() && (cur.len() + 1) * longest > budget {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(i);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// One micro-batch's tensors: per-token log-probs `[b, len]` of the
/// completion tokens under `model` (at the sampler's temperature and top-p;
/// 0 where masked), the mask of trained tokens and the advantages.
fn micro_logprobs(model: &Qwen2, seqs: &[&Scored], sampling: &crate::rl::rollout::Sampling, pad: u32, dropout: crate::model::DropoutRng) -> Result<(Tensor, Tensor, Tensor, Option<Tensor>)> {
    let dev = model.device().clone();
    let tlen = seqs.iter().map(|s| s.prompt.len() + s.tokens.len() - 1).max().unwrap_or(1).max(1);
    let b = seqs.len();
    let (mut input, mut att, mut mask) = (vec![pad; b * tlen], vec![0u8; b * tlen], vec![0f32; b * tlen]);
    let (mut rows, mut targets, mut slot) = (Vec::new(), Vec::new(), vec![0u32; b * tlen]);
    let has_behaviour = seqs.iter().all(|s| s.behaviour.is_some());
    let mut behaviour = vec![0f32; if has_behaviour { b * tlen } else { 0 }];
    for (i, s) in seqs.iter().enumerate() {
        let plen = s.prompt.len();
        let full: Vec<u32> = s.prompt.iter().chain(&s.tokens).copied().collect();
        for j in 0..full.len() - 1 {
            input[i * tlen + j] = full[j];
            att[i * tlen + j] = 1;
            let k = j + 1;
            if k >= plen && s.generated[k - plen] {
                mask[i * tlen + j] = 1.0;
                if let (true, Some(beh)) = (has_behaviour, &s.behaviour) {
                    behaviour[i * tlen + j] = beh[k - plen];
                }
                slot[i * tlen + j] = rows.len() as u32;
                rows.push((i * tlen + j) as u32);
                targets.push(full[k]);
            }
        }
    }
    let n = rows.len() as u32;
    for (j, m) in mask.iter().enumerate() {
        if *m == 0.0 {
            slot[j] = n;
        }
    }
    let input = Tensor::from_vec(input, (b, tlen), &dev)?;
    let att = Tensor::from_vec(att, (b, tlen), &dev)?;
    let h = model.hidden(&input, &att, dropout)?;
    let d = h.dim(2)?;
    let temperature = if sampling.temperature > 0.0 { sampling.temperature } else { 1.0 };
    let lp = if rows.is_empty() {
        Tensor::zeros(0, DType::F32, &dev)?
    } else {
        let hr = h.reshape((b * tlen, d))?.index_select(&Tensor::new(rows.as_slice(), &dev)?, 0)?;
        model.row_logprobs(&hr, &targets, temperature, sampling.top_p)?
    };
    // Back to [b, len]: masked positions read the appended 0.
    let lp = Tensor::cat(&[&lp, &Tensor::zeros(1, lp.dtype(), &dev)?], 0)?;
    let lp2 = lp.index_select(&Tensor::from_vec(slot, b * tlen, &dev)?, 0)?.reshape((b, tlen))?;
    let mask = Tensor::from_vec(mask, (b, tlen), &dev)?;
    let adv = Tensor::from_vec(seqs.iter().map(|s| s.advantage as f32).collect::<Vec<_>>(), b, &dev)?;
    let behaviour = if has_behaviour { Some(Tensor::from_vec(behaviour, (b, tlen), &dev)?) } else { None };
    Ok((lp2, mask, adv, behaviour))
}

/// Completions split into micro-batches, with the step's totals and the
/// frozen log-probs (old policy when iterating, reference for the KL).
struct Prepared<'a> {
    groups: Vec<Vec<&'a Scored>>,
    totals: Totals,
    old: Option<Vec<Tensor>>,
    refs: Option<Vec<Tensor>>,
}

fn prepare<'a>(model: &Qwen2, reference: Option<&Qwen2>, seqs: &'a [Scored], cfg: &GrpoConfig, pad: u32) -> Result<Prepared<'a>> {
    let lens: Vec<usize> = seqs.iter().map(|s| s.prompt.len() + s.tokens.len()).collect();
    let groups: Vec<Vec<&Scored>> = micro_batches(&lens, cfg.train.micro_batch_tokens).iter().map(|b| b.iter().map(|&i| &seqs[i]).collect()).collect();
    let totals = Totals {
        completions: seqs.len(),
        active_tokens: seqs.iter().map(|s| s.generated.iter().filter(|g| **g).count()).sum::<usize>() as f64,
    };
    let sampling = &cfg.rollout.sampling;
    let detached = |m: &Qwen2, g: &[&Scored]| -> Result<Tensor> { Ok(micro_logprobs(m, g, sampling, pad, None)?.0.detach()) };
    let old = if cfg.train.num_iterations > 1 { Some(groups.iter().map(|g| detached(model, g)).collect::<Result<_>>()?) } else { None };
    let refs = match reference {
        Some(r) => Some(groups.iter().map(|g| detached(r, g)).collect::<Result<_>>()?),
        None => None,
    };
    Ok(Prepared { groups, totals, old, refs })
}

/// One pass over the micro-batches: accumulated gradients of the step's
/// objective, and its KL, clip fraction and forwarded tokens.
fn policy_pass(model: &Qwen2, p: &Prepared, cfg: &GrpoConfig, pad: u32, rng: &mut ChaCha8Rng, guard: &Guard) -> Result<(BTreeMap<String, Tensor>, UpdateStats)> {
    let params = model.trainable();
    let mut grads = BTreeMap::new();
    let mut stats = UpdateStats { micro_batches: p.groups.len(), ..Default::default() };
    for (k, g) in p.groups.iter().enumerate() {
        let (lp, mask, adv, behaviour) = micro_logprobs(model, g, &cfg.rollout.sampling, pad, Some(&mut *rng))?;
        stats.tokens += lp.elem_count();
        let old_lp = match &p.old {
            Some(o) => o[k].clone(),
            None => lp.detach(),
        };
        if let Some(beh) = &behaviour {
            // Trainer vs engine on the tokens the engine sampled.
            let (t, e, m): (Vec<Vec<f32>>, Vec<Vec<f32>>, Vec<Vec<f32>>) = (old_lp.to_dtype(DType::F32)?.to_vec2()?, beh.to_vec2()?, mask.to_vec2()?);
            for ((t, e), m) in t.iter().zip(&e).zip(&m) {
                for j in 0..t.len() {
                    if m[j] > 0.0 {
                        let r = (t[j] - e[j]) as f64;
                        stats.mismatch_mean += r.abs();
                        stats.mismatch_max = stats.mismatch_max.max(r.abs());
                        stats.mismatch_k3 += r.exp() - 1.0 - r;
                    }
                }
            }
        }
        let o = objective_part(&lp, &old_lp, p.refs.as_ref().map(|r| &r[k]), behaviour.as_ref(), &adv, &mask, &cfg.objective, &p.totals)?;
        stats.tis_weight += o.tis_weight;
        let l = o.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        guard.finite("loss", l)?;
        accumulate(&mut grads, &params, &o.loss.backward()?)?;
        stats.kl += o.kl;
        stats.clip_fraction += o.clip_fraction;
    }
    let active = p.totals.active_tokens.max(1.0);
    stats.mismatch_mean /= active;
    stats.mismatch_k3 /= active;
    stats.grad_norm = global_norm(&grads)?;
    guard.finite("gradient norm", stats.grad_norm)?;
    Ok((grads, stats))
}

/// The gradients of one GRPO objective over `seqs` (old log-probs = the
/// current ones, as with one iteration), micro-batched as the update is.
pub fn policy_gradients(model: &Qwen2, reference: Option<&Qwen2>, seqs: &[Scored], cfg: &GrpoConfig, pad: u32, rng: &mut ChaCha8Rng) -> Result<(BTreeMap<String, Tensor>, UpdateStats)> {
    let single = GrpoConfig { train: crate::rl::config::GrpoTrain { num_iterations: 1, ..cfg.train.clone() }, ..cfg.clone() };
    let p = prepare(model, reference, seqs, &single, pad)?;
    policy_pass(model, &p, &single, pad, rng, &Guard::default())
}

/// The policy update on scored completions: `num_iterations` optimizer
/// steps, each over length-sorted micro-batches of at most
/// `train.micro_batch_tokens` padded tokens whose gradients are accumulated
/// (normalised by the whole step's totals, so the result equals one big
/// batch). With one iteration the old log-probs are the current ones,
/// detached (no second forward). Nothing to train on (every group uniform)
/// is no update.
#[allow(clippy::too_many_arguments)]
pub fn policy_update(
    model: &Qwen2,
    reference: Option<&Qwen2>,
    seqs: &[Scored],
    cfg: &GrpoConfig,
    pad: u32,
    opt: &mut AdamW,
    lr: f64,
    rng: &mut ChaCha8Rng,
    guard: &Guard,
) -> Result<UpdateStats> {
    if seqs.is_empty() {
        return Ok(UpdateStats::default());
    }
    let p = prepare(model, reference, seqs, cfg, pad)?;
    let params = model.trainable();
    let mut tokens = 0;
    let mut stats = UpdateStats::default();
    for _ in 0..cfg.train.num_iterations {
        let (grads, s) = policy_pass(model, &p, cfg, pad, rng, guard)?;
        opt.step(&params, &grads, lr)?;
        tokens += s.tokens;
        stats = s;
    }
    stats.tokens = tokens;
    Ok(stats)
}

/// Mean generated tokens of the completions whose correctness is `correct`.
fn mean_length_where(judged: &[Completion], correct: bool) -> Option<f64> {
    let lens: Vec<f64> = judged.iter().filter(|c| c.correct == correct).map(|c| c.generated_tokens as f64).collect();
    (!lens.is_empty()).then(|| lens.iter().sum::<f64>() / lens.len() as f64)
}

fn plot_grpo(png: &Path, rows: &[GrpoMetrics]) -> Result<()> {
    let pts = |f: fn(&GrpoMetrics) -> f64| rows.iter().map(|m| (m.step as f64, f(m))).collect::<Vec<_>>();
    curves(
        png,
        "GRPO",
        &[
            Panel { label: "mean reward", points: pts(|m| m.reward), log_y: false },
            Panel { label: "rollout accuracy", points: pts(|m| m.accuracy), log_y: false },
            Panel { label: "mean completion tokens", points: pts(|m| m.mean_length), log_y: false },
            // Steps with no correct (wrong) completion are left out.
            Panel { label: "tokens, correct completions", points: pts(|m| m.mean_length_correct.unwrap_or(f64::NAN)), log_y: false },
            Panel { label: "tokens, wrong completions", points: pts(|m| m.mean_length_wrong.unwrap_or(f64::NAN)), log_y: false },
            Panel { label: "share forced at the cap", points: pts(|m| m.forced_share), log_y: false },
            Panel { label: "completions trained on", points: pts(|m| m.trained_completions as f64), log_y: false },
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(thinking: &str, answer: &str) -> Rollout {
        Rollout { tokens: vec![1, 2], generated: vec![true, true], thinking: thinking.into(), answer: answer.into(), think_end: Some(ThinkEnd::Natural), generated_tokens: 2 }
    }

    #[test]
    fn correctness_reads_the_answer_segment_only() {
        let right = judge(&done("6 * 7 = 42", "Final Answer: 42"), "42");
        assert!(right.correct && right.answered);
        // The right number in the thinking does not rescue a wrong answer...
        let wrong = judge(&done("6 * 7 = 42, so 42", "Final Answer: 41"), "42");
        assert!(!wrong.correct && wrong.answered);
        // ...nor a missing one.
        let none = judge(&done("6 * 7 = 42", ""), "42");
        assert!(!none.correct && !none.answered);
    }

    #[test]
    fn lengths_of_correct_and_wrong_completions_are_kept_apart() {
        let c = |correct, n| Completion { correct, natural_end: true, answered: true, generated_tokens: n };
        let judged = [c(true, 10), c(false, 40), c(true, 20), c(false, 60)];
        assert_eq!(mean_length_where(&judged, true), Some(15.0));
        assert_eq!(mean_length_where(&judged, false), Some(50.0));
        assert_eq!(mean_length_where(&judged[..1], false), None, "no wrong completion: no mean");
    }

    #[test]
    fn micro_batches_sort_by_length_and_respect_the_budget() {
        let lens = [5, 30, 12, 30, 7, 100];
        let b = micro_batches(&lens, 64);
        // Longest first; rows × longest ≤ 64 unless a sequence is alone.
        assert_eq!(b[0], vec![5]);
        assert_eq!(b[1], vec![1, 3]);
        assert_eq!(b[2], vec![2, 4, 0]);
        let mut all: Vec<usize> = b.concat();
        all.sort();
        assert_eq!(all, (0..lens.len()).collect::<Vec<_>>());
    }
}
