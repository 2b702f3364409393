//! GRPO rollouts on the runtime's own engine: llama.cpp, the G samples of a
//! prompt in one batched context with the prompt decoded once, budget-forced
//! by the same controller, tokenizer, template and kernels the phone runs.
//!
//! Each step the trainer's current LoRA adapter is written as a GGUF adapter
//! (f32) and swapped into the loaded engine ([`reckon::Engine::set_adapter`]:
//! the model stays loaded). A run that starts from an SFT checkpoint trained
//! with LoRA keeps that adapter too: both are written as one adapter of the
//! summed rank (W + B₁A₁ + B₂A₂ = W + [B₁ B₂][A₁; A₂]), on the GGUF the SFT
//! run started from; the trainer holds the same weights (that GGUF
//! dequantized, the SFT adapter merged). Full fine-tuning is refused: it
//! would write and reload a whole model every step.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use reckon::engine::{Finished, Job};
use reckon::{Engine, EngineOptions, SamplingConfig, SolveOptions};

use crate::io::export::{adapter_pairs, concat_adapters, write_adapter, AdapterPair, Provenance};
use crate::model::Qwen2;
use crate::rl::rollout::{Rollout, Sampling};

/// Where the engine's weights come from.
#[derive(Debug, Clone)]
pub struct EngineBase {
    /// The GGUF llama.cpp loads.
    pub gguf: PathBuf,
    /// An adapter the run's own is stacked on (an SFT checkpoint's).
    pub adapter: Vec<AdapterPair>,
}

/// The engine base for a run's `model.source`: a GGUF file itself, or a
/// LoRA checkpoint whose run started from a GGUF (its adapter stacked).
/// `None` when neither (a tiny model, an HF directory, a full fine-tune).
pub fn engine_base(source: &Path) -> Result<Option<EngineBase>> {
    if source.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) && source.is_file() {
        return Ok(Some(EngineBase { gguf: source.to_path_buf(), adapter: Vec::new() }));
    }
    if !source.join("manifest.json").is_file() {
        return Ok(None);
    }
    let state = crate::io::checkpoint::read_state(source)?;
    let origin = PathBuf::from(&state.source);
    let Some(lora) = state.lora.clone() else { return Ok(None) };
    if !(origin.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) && origin.is_file()) {
        return Ok(None);
    }
    // Its adapters alone (an adapter-only checkpoint is not laid over its base).
    let ck = crate::io::checkpoint::load_stored(source)?;
    let adapter = adapter_pairs(&ck.model_config, &ck.tensors, lora.rank, lora.alpha / lora.rank as f64)?;
    Ok(Some(EngineBase { gguf: origin, adapter }))
}

/// The loaded engine and the adapter file it reads.
pub struct EngineRollouts {
    engine: Engine,
    base: EngineBase,
    dir: tempfile::TempDir,
    written: u64,
    /// Sequences decoded together.
    pub slots: u32,
    /// llama.cpp threads (`None`: its default).
    pub threads: Option<u32>,
}

/// One engine completion, in the trainer's terms.
pub struct EngineRollout {
    /// Prompt tokens exactly as decoded.
    pub prompt: Vec<u32>,
    /// The completion (tokens, generated flags, texts, why thinking ended).
    pub rollout: Rollout,
    /// ln π_engine of each completion token (0 where injected).
    pub behaviour: Vec<f32>,
}

impl EngineRollouts {
    /// Load `base` with `model`'s current adapter.
    pub fn open(base: EngineBase, model: &Qwen2, slots: u32, threads: Option<u32>, flash_attention: bool) -> Result<Self> {
        if model.lora().is_none() {
            bail!(
                "rollout.backend = \"engine\" needs [lora]: with full fine-tuning the engine would have to write and reload the whole model every step; train adapters, or set rollout.backend = \"trainer\""
            );
        }
        let dir = tempfile::tempdir().context("temporary directory for rollout adapters")?;
        let first = write_step_adapter(dir.path(), 0, &base, model)?;
        let opts = EngineOptions { format: Some(reckon::format::ThinkFormat::S1), adapter: Some(first), flash_attention, ..Default::default() };
        let engine = Engine::load(&base.gguf, opts).with_context(|| format!("loading {} for rollouts", base.gguf.display()))?;
        Ok(Self { engine, base, dir, written: 0, slots, threads })
    }

    /// Swap in `model`'s current adapter.
    pub fn sync(&mut self, model: &Qwen2) -> Result<()> {
        self.written += 1;
        let path = write_step_adapter(self.dir.path(), self.written, &self.base, model)?;
        self.engine.set_adapter(Some(&path), 1.0)?;
        // The previous step's file is no longer read.
        let _ = std::fs::remove_file(self.dir.path().join(format!("step-{}.gguf", self.written - 1)));
        Ok(())
    }

    /// `group` samples of each question, budget-forced with `budgets[i]`,
    /// seeds drawn from `seed`. Returns them in order, question by question.
    pub fn rollouts(&self, questions: &[String], budgets: &[reckon::BudgetConfig], group: u32, sampling: &Sampling, system: &str, seed: u32) -> Result<Vec<EngineRollout>> {
        let options: Vec<SolveOptions> = budgets
            .iter()
            .enumerate()
            .map(|(i, b)| SolveOptions {
                budget: b.clone(),
                sampling: SamplingConfig {
                    temperature: sampling.temperature as f32,
                    top_k: 0,
                    top_p: sampling.top_p as f32,
                    min_p: 0.0,
                    seed: seed.wrapping_add(i as u32 * group),
                    repeat_penalty: 1.0,
                    repeat_last_n: 0,
                },
                threads: self.threads,
                system_prompt: Some(system.to_string()).filter(|s| !s.is_empty()),
            })
            .collect();
        let total = questions.len() * group as usize;
        let mut done: Vec<Option<Finished>> = (0..total).map(|_| None).collect();
        // As many slots as asked for, or as the context limit fits.
        let mut slots = self.slots.min(total as u32).max(1);
        let mut need = 1;
        for (q, o) in questions.iter().zip(&options) {
            let prompt = self.engine.prompt_tokens(q, o)?;
            need = need.max(self.engine.slot_context(prompt.len(), &o.budget)?);
        }
        slots = slots.min((self.engine.context_limit() / need).max(1));
        // A group shares its prompt when its samples fit side by side; a
        // larger group is split (each part decodes the prompt).
        let mut jobs: Vec<Job> = Vec::new();
        for (i, (q, o)) in questions.iter().zip(&options).enumerate() {
            for start in (0..group).step_by(slots as usize) {
                let samples = (start..group.min(start + slots))
                    .map(|k| reckon::engine::Sample::silent(i as u64 * u64::from(group) + u64::from(k), Some(o.sampling.seed.wrapping_add(k))))
                    .collect();
                jobs.push(Job { question: q.clone(), options: o.clone(), samples });
            }
        }
        self.engine.solve_queue(jobs, slots, self.threads, &mut |f| {
            let t = f.tag as usize;
            if t < total {
                done[t] = Some(f);
            }
        })?;
        done.into_iter()
            .enumerate()
            .map(|(i, f)| {
                let f = f.with_context(|| format!("the engine returned no completion {i}"))?;
                let res = f.result.with_context(|| format!("rollout {i} failed"))?;
                let tokens: Vec<u32> = f.tokens.iter().map(|t| t.id as u32).collect();
                let generated: Vec<bool> = f.tokens.iter().map(|t| t.sampled).collect();
                let behaviour: Vec<f32> = f.tokens.iter().map(|t| t.logprob.unwrap_or(0.0)).collect();
                let generated_tokens = generated.iter().filter(|g| **g).count();
                Ok(EngineRollout {
                    prompt: f.prompt.iter().map(|&t| t as u32).collect(),
                    rollout: Rollout { tokens, generated, thinking: res.thinking, answer: res.answer, think_end: res.think_end, generated_tokens },
                    behaviour,
                })
            })
            .collect()
    }
}

fn write_step_adapter(dir: &Path, n: u64, base: &EngineBase, model: &Qwen2) -> Result<PathBuf> {
    let lora = model.lora().context("no adapters to write")?;
    let own = adapter_pairs(&model.config, &model.tensors(), lora.rank, lora.alpha / lora.rank as f64)?;
    let pairs = if base.adapter.is_empty() { own } else { concat_adapters(&base.adapter, &own)? };
    let path = dir.join(format!("step-{n}.gguf"));
    let prov = Provenance { name: format!("grpo rollout adapter {n}"), base_model: base.gguf.display().to_string(), recipe: "GRPO rollouts".into(), license: "apache-2.0".into() };
    write_adapter(&path, &pairs, false, &prov)?;
    Ok(path)
}
