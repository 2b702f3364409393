//! `reckon-train`: fine-tune small Qwen2 models for token-efficient reasoning.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use reckon_trainer::io::jsonl::write_jsonl;
use reckon_trainer::run::bench;
use reckon_trainer::run::config::{ComputeDtype, DeviceChoice};
use reckon_trainer::sft::data;
use reckon_trainer::run::overrides::Override;
use reckon_trainer::{GrpoConfig, RunOptions, SftConfig};

#[derive(Parser)]
#[command(
    name = "reckon-train",
    version,
    about = "Fine-tune small Qwen2 models to reason in few tokens",
    long_about = "Fine-tune small Qwen2-architecture models (Qwen2.5 0.5B/1.5B, or tiny test models) \
on think/answer traces in the s1 format the Reckon runtime uses. Runs on CPU; build with \
--features cuda for NVIDIA GPUs (bf16 compute). Set RUST_LOG=info for details, \
RAYON_NUM_THREADS to limit CPU threads."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Supervised fine-tuning on {question, thinking, answer} JSONL.
    ///
    /// Re-running the same command resumes from the newest checkpoint in
    /// --out (verified by checksum) and continues exactly where it stopped.
    Sft(RunArgs),
    /// Export a checkpoint (LoRA merged), HF directory or GGUF to a GGUF for
    /// the runtime and llama.cpp, quantized by llama.cpp's own quantizer.
    Export {
        /// A checkpoint directory (e.g. OUT/checkpoints/step-00000200), a
        /// Hugging Face directory, or a GGUF.
        #[arg(long)]
        checkpoint: PathBuf,
        /// The .gguf to write.
        #[arg(long)]
        out: PathBuf,
        /// f32, f16, bf16, q8_0, q6_k, q5_k_m, q4_k_m, q4_0, ... (any type
        /// llama.cpp's quantizer offers without an importance matrix);
        /// default q4_k_m, or f16 with --adapter (f32 or f16).
        #[arg(long = "type")]
        file_type: Option<String>,
        /// Write only the LoRA adapters of a checkpoint trained with [lora],
        /// as a GGUF LoRA adapter (a few MB) that the runtime (`reckon
        /// --adapter`) or llama.cpp (`--lora`) applies on top of the base
        /// model the run started from.
        #[arg(long)]
        adapter: bool,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
        /// Quantizer threads.
        #[arg(long, default_value_t = 2)]
        threads: u32,
        /// general.name (default: the file name).
        #[arg(long)]
        name: Option<String>,
        /// general.license.
        #[arg(long, default_value = "apache-2.0")]
        license: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Import a GGUF (e.g. the runtime's default model) or HF directory as a
    /// step-0 checkpoint, to fine-tune what you already run.
    Import {
        /// The .gguf file or Hugging Face directory.
        #[arg(long)]
        model: PathBuf,
        /// Checkpoint root to write into (a step-00000000 directory).
        #[arg(long)]
        out: PathBuf,
    },
    /// Copy a checkpoint into OUT/step-NNNNNNNN with smaller optimizer
    /// state. `--moments drop` (default): without it, a starting point for
    /// another run (e.g. GRPO from an SFT run's adapters) at a third of the
    /// size, not for resuming its own run. `--moments bf16`: moments rounded
    /// to bf16, two thirds of the size, from which the run resumes (what a
    /// long run parks in git between sessions).
    Slim {
        /// The checkpoint directory.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Checkpoint root to write into.
        #[arg(long)]
        out: PathBuf,
        /// What to keep of the optimizer moments.
        #[arg(long, value_enum, default_value = "drop")]
        moments: reckon_trainer::io::checkpoint::SlimMoments,
    },
    /// Reinforcement learning for token efficiency: GRPO with verifiable
    /// rewards, a length term, and rollouts budget-forced by the runtime's
    /// controller. Re-running resumes from the newest checkpoint.
    Grpo(RunArgs),
    /// Draw a run's curves again from OUT/metrics.jsonl: loss.png for an
    /// SFT run, curves.png for GRPO. A run draws them when it stops by
    /// itself; one killed, or ended early at an earlier checkpoint, has none.
    Plot {
        /// The run's output directory (the --out of `sft` or `grpo`).
        #[arg(long)]
        out: PathBuf,
    },
    /// Build training data.
    Data {
        #[command(subcommand)]
        which: DataCmd,
    },
    /// Training-step throughput, memory and MFU against this machine's
    /// measured matmul peak (in the compute type), for a tiny and a 0.5B-shaped model (random
    /// weights). FLOPs count what a step needs: 6N per token for full
    /// fine-tuning, 4N for a frozen base with LoRA (plus the adapters), the
    /// LM head only on rows with loss, plus attention.
    Bench {
        /// Shapes to run: tiny, 0.5b.
        #[arg(long, value_delimiter = ',', default_value = "tiny,0.5b")]
        shapes: Vec<String>,
        /// sft (next-token loss on every token) or grpo (the policy update on
        /// --batch completions of up to --seq-len tokens, micro-batched).
        #[arg(long, value_enum, default_value = "sft")]
        mode: bench::Mode,
        /// LoRA rank on every linear layer (alpha = 2·rank); omit for full
        /// fine-tuning.
        #[arg(long)]
        lora: Option<usize>,
        /// Sequences (sft) or completions (grpo) per step.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Tokens per sequence (grpo: the longest completion).
        #[arg(long, default_value_t = 128)]
        seq_len: usize,
        /// Timed steps (after one warm-up); the median is reported.
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// GRPO micro-batch budget, padded tokens.
        #[arg(long, default_value_t = 2048)]
        micro_batch_tokens: usize,
        /// Peak FLOP/s for MFU, in GFLOP/s (default: measured here, the best
        /// of five 2048² products in the compute type through the model's matmul path).
        #[arg(long)]
        peak_gflops: Option<f64>,
        /// Where to run: `cpu`, `cuda` (needs `--features cuda`), or `auto`.
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceChoice,
        /// Compute type: `auto` (bf16 on CUDA, f32 on the CPU), `f32`, or
        /// `bf16`/`f16` (CUDA only). MFU is against a matmul peak measured in it.
        #[arg(long, value_enum, default_value = "auto")]
        dtype: ComputeDtype,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// What `sft` and `grpo` take.
#[derive(clap::Args)]
struct RunArgs {
    /// TOML config (trainer/configs/ has documented examples of both).
    #[arg(long)]
    config: PathBuf,
    /// Output directory: metrics.jsonl, the plot, checkpoints/.
    #[arg(long)]
    out: PathBuf,
    /// Delete existing checkpoints and start over.
    #[arg(long)]
    fresh: bool,
    /// Stop (with a checkpoint) after this many steps; run again to go on.
    #[arg(long)]
    stop_after: Option<u64>,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
    /// Change one setting of the config for this run, as KEY=VALUE with a
    /// dotted key and a TOML value (`--set train.steps=120 --set
    /// optim.lr=3e-4 --set rollout.max_thinking_tokens=[512,768]`);
    /// repeatable. A key the config does not have is refused.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_override)]
    set: Vec<Override>,
}

fn parse_override(s: &str) -> Result<Override, String> {
    Override::parse(s).map_err(|e| format!("{e:#}"))
}

impl RunArgs {
    fn options(&self) -> RunOptions {
        RunOptions { out: self.out.clone(), fresh: self.fresh, stop_after: self.stop_after, progress: !self.json }
    }
}

#[derive(Subcommand)]
enum DataCmd {
    /// GSM8K lines ({question, answer with #### N}) to SFT records: the worked
    /// solution without <<calculator>> notes becomes the thinking.
    Gsm8k {
        /// GSM8K JSONL (e.g. ../shared/data/gsm8k/train.jsonl).
        #[arg(long)]
        input: PathBuf,
        /// Where to write the SFT JSONL.
        #[arg(long)]
        out: PathBuf,
        /// Keep only the first N.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// GSM8K lines to *long* reasoning traces (the SFT stage that makes a
    /// model verbose): each worked solution kept in order, with the question
    /// restated, every calculation re-checked ("Wait, let me verify ...",
    /// with the inverse operation where there is one), the whole chain
    /// retraced and the answer checked against the question. Phrasing is
    /// drawn per problem from --seed; the same command writes the same file.
    /// Also writes OUT.stats.json (word-count means and deciles, plain vs long).
    Gsm8kLong {
        #[command(flatten)]
        lines: Lines,
        /// Seed of the phrasing.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Pick RL problems the model can learn from: by the reference's
    /// calculator steps (`<<...>>` notes) and/or by pass rate, from
    /// --samples budget-forced samples of each problem by --model on the
    /// runtime's batched engine (resumed from OUT.screen/ when run again).
    /// Writes the kept problems (their JSON plus `steps`, `pass_rate`,
    /// `source_line`) to --out and counts to OUT.stats.json.
    Screen {
        #[command(flatten)]
        lines: Lines,
        /// Calculator steps to keep, as N or LOW-HIGH (e.g. 2-3).
        #[arg(long, value_parser = parse_range)]
        steps: Option<(usize, usize)>,
        /// The model GRPO starts from, as `reckon eval` takes it:
        /// MODEL.gguf or MODEL.gguf+ADAPTER.gguf. Without it, no pass-rate
        /// screen.
        #[arg(long)]
        model: Option<String>,
        /// Samples per problem.
        #[arg(long, default_value_t = 8)]
        samples: u32,
        /// Their temperature.
        #[arg(long, default_value_t = 0.7)]
        temperature: f32,
        /// Thinking cap of each sample, in tokens.
        #[arg(long, default_value_t = 1024)]
        max_think: u32,
        /// Answer cap of each sample, in tokens.
        #[arg(long, default_value_t = 64)]
        max_answer: u32,
        /// Lowest pass rate kept.
        #[arg(long, default_value_t = 0.0)]
        min_pass: f64,
        /// Highest pass rate kept.
        #[arg(long, default_value_t = 1.0)]
        max_pass: f64,
        /// Problems decoded together (each with --samples sequences).
        #[arg(long, default_value_t = 2)]
        parallel: u32,
        /// Seed of the first sample (sample i is seeded SEED + i).
        #[arg(long, default_value_t = 0)]
        seed: u32,
        /// Print the counts as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Which GSM8K lines a data command reads, and where its output goes.
#[derive(clap::Args)]
struct Lines {
    /// GSM8K JSONL (e.g. ../shared/data/gsm8k/train.jsonl).
    #[arg(long)]
    input: PathBuf,
    /// Where to write the output JSONL.
    #[arg(long)]
    out: PathBuf,
    /// First line to use (0-based), e.g. to keep SFT and RL problems apart.
    #[arg(long, default_value_t = 0)]
    offset: usize,
    /// Lines to use (default: all from --offset on).
    #[arg(long)]
    limit: Option<usize>,
}

/// `N` or `LOW-HIGH`.
fn parse_range(s: &str) -> Result<(usize, usize), String> {
    let parse = |t: &str| t.trim().parse::<usize>().map_err(|e| format!("{t:?}: {e}"));
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => (parse(s)?, parse(s)?),
    };
    if lo > hi {
        return Err(format!("{s}: LOW is above HIGH"));
    }
    Ok((lo, hi))
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Sft(args) => {
            let cfg = SftConfig::load_with(&args.config, &args.set)?;
            let o = reckon_trainer::sft::run_sft(&cfg, &args.options())?;
            let (out, json) = (args.out, args.json);
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "step": o.step,
                        "resumed_from": o.resumed_from,
                        "final_loss": o.metrics.last().map(|m| m.loss),
                        "checkpoint": o.checkpoint,
                        "truncated": o.data.truncated,
                        "dropped": o.data.dropped,
                        "metrics": out.join("metrics.jsonl"),
                    })
                );
            } else {
                println!(
                    "step {} (from {}), last loss {}, checkpoint {}; curves in {}",
                    o.step,
                    o.resumed_from,
                    o.metrics.last().map_or("-".into(), |m| format!("{:.4}", m.loss)),
                    o.checkpoint.as_ref().map_or("-".into(), |p| p.display().to_string()),
                    out.join("loss.png").display()
                );
            }
        }
        Cmd::Grpo(args) => {
            let cfg = GrpoConfig::load_with(&args.config, &args.set)?;
            let rows = reckon_trainer::rl::run_grpo(&cfg, &args.options())?;
            let out = args.out;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if let Some(m) = rows.last() {
                println!(
                    "step {}: reward {:.3}, accuracy {:.2}, mean length {:.1} tokens; curves in {}",
                    m.step,
                    m.reward,
                    m.accuracy,
                    m.mean_length,
                    out.join("curves.png").display()
                );
            }
        }
        Cmd::Export { checkpoint, out, file_type, adapter, force, threads, name, license, json } => {
            let file_type = file_type.unwrap_or_else(|| if adapter { "f16" } else { "q4_k_m" }.to_string());
            let opts = reckon_trainer::io::export::ExportOptions { out, file_type, force, threads, name, license };
            let r = if adapter {
                reckon_trainer::io::export::export_adapter(&checkpoint, &opts)?
            } else {
                reckon_trainer::io::export::export(&checkpoint, &opts)?
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({"path": r.path, "type": r.file_type, "bytes": r.bytes, "seconds": r.seconds}))?);
            } else {
                println!("{} ({}, {:.1} MiB) in {:.1} s", r.path.display(), r.file_type, r.bytes as f64 / 1048576.0, r.seconds);
            }
        }
        Cmd::Slim { checkpoint, out, moments } => {
            let dir = reckon_trainer::io::checkpoint::slim(&checkpoint, &out, moments)?;
            let kept = match moments {
                reckon_trainer::io::checkpoint::SlimMoments::Drop => "without optimizer state",
                reckon_trainer::io::checkpoint::SlimMoments::Bf16 => "with bf16 optimizer moments",
            };
            println!("{} {kept}: {}", checkpoint.display(), dir.display());
        }
        Cmd::Plot { out } => {
            let png = replot(&out)?;
            println!("{}", png.display());
        }
        Cmd::Import { model, out } => {
            let dir = reckon_trainer::io::export::import(&model, &out)?;
            println!("imported {} as {}", model.display(), dir.display());
        }
        Cmd::Data { which: DataCmd::Gsm8k { input, out, limit } } => {
            let mut recs = data::gsm8k_to_sft(&input)?;
            if let Some(n) = limit {
                recs.truncate(n);
            }
            write_jsonl(&out, &recs)?;
            println!("{} SFT records written to {}", recs.len(), out.display());
        }
        Cmd::Data { which: DataCmd::Gsm8kLong { lines: Lines { input, out, offset, limit }, seed } } => {
            let (recs, stats) = reckon_trainer::sft::longtrace::gsm8k_long(&input, seed, offset, limit)?;
            write_jsonl(&out, &recs)?;
            let stats_path = out.with_extension("stats.json");
            std::fs::write(&stats_path, serde_json::to_string_pretty(&stats)?).with_context(|| format!("cannot write {}", stats_path.display()))?;
            println!(
                "{} long-trace SFT records written to {} (lines {}..{}, seed {seed})",
                recs.len(),
                out.display(),
                offset,
                offset + recs.len()
            );
            println!(
                "words per trace: mean {:.0} vs {:.0} in the plain solutions ({:.2}x); deciles {:?}",
                stats.long_mean_words, stats.plain_mean_words, stats.ratio, stats.long_word_deciles
            );
            println!("statistics in {}", stats_path.display());
        }
        Cmd::Data { which: DataCmd::Screen { lines: Lines { input, out, offset, limit }, steps, model, samples, temperature, max_think, max_answer, min_pass, max_pass, parallel, seed, json } } => {
            let opts = reckon_trainer::rl::curriculum::ScreenOptions {
                input,
                offset,
                limit,
                steps,
                model,
                samples,
                temperature,
                max_thinking_tokens: max_think,
                max_answer_tokens: max_answer,
                pass: (min_pass, max_pass),
                parallel,
                seed,
                out,
                progress: !json,
            };
            let r = reckon_trainer::rl::curriculum::screen(&opts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("{} of {} problems kept ({} within the step range) in {}", r.kept, r.read, r.in_step_range, r.out.display());
                if let (Some(all), Some(kept)) = (r.mean_pass_rate, r.kept_mean_pass_rate) {
                    println!("mean pass rate {all:.3} screened, {kept:.3} kept; by tenths {:?}", r.pass_rate_histogram);
                }
            }
        }
        Cmd::Bench { shapes, mode, lora, batch, seq_len, steps, micro_batch_tokens, peak_gflops, device, dtype, json } => {
            let dev = device.open()?;
            let peak = match peak_gflops {
                Some(g) => g * 1e9,
                None => bench::matmul_peak(2048, dtype.resolve(&dev)?, &dev)?,
            };
            let mut rows = Vec::new();
            for s in &shapes {
                let config = match s.as_str() {
                    "tiny" => bench::tiny_bench_config(),
                    "0.5b" => bench::qwen2_5_0_5b_config(),
                    other => anyhow::bail!("unknown shape '{other}' (tiny, 0.5b)"),
                };
                let spec = bench::BenchSpec { shape: s.clone(), config, mode, lora_rank: lora, batch, seq_len, steps, micro_batch_tokens, dtype };
                rows.push(bench::bench(&spec, peak, &dev)?);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "peak_flops": peak, "rows": rows }))?);
            } else {
                println!("| shape | mode | dtype | LoRA | params | batch×seq | step s | trained tok/s | GFLOP/s | MFU | peak RSS |");
                println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
                for r in &rows {
                    println!(
                        "| {} | {:?} | {} | {} | {:.1}M | {}×{} | {:.3} | {:.1} | {:.1} | {:.1}% | {:.0} MiB |",
                        r.shape,
                        r.mode,
                        r.dtype,
                        r.lora_rank.map_or("full".into(), |k| format!("r={k}")),
                        r.params as f64 / 1e6,
                        r.batch,
                        r.seq_len,
                        r.step_s,
                        r.trained_tokens_per_s,
                        r.flops / 1e9,
                        100.0 * r.mfu,
                        r.peak_rss_mib
                    );
                }
                match rows.first() {
                    Some(r) => println!("peak: {:.1} GFLOP/s {} matmul on {} ({} threads)", peak / 1e9, r.dtype, r.device, r.threads),
                    None => println!("peak: {:.1} GFLOP/s", peak / 1e9),
                }
            }
        }
    }
    Ok(())
}

/// Redraw the curves of the run in `out` (its kind read from the metrics'
/// fields); returns the picture's path.
fn replot(out: &std::path::Path) -> Result<PathBuf> {
    use reckon_trainer::run::session::{read_metrics, Row};
    use reckon_trainer::rl::GrpoMetrics;
    use reckon_trainer::sft::StepMetrics;
    let metrics = out.join("metrics.jsonl");
    let text = std::fs::read_to_string(&metrics).with_context(|| format!("cannot read {}", metrics.display()))?;
    let first: serde_json::Value = text
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("{} has no metrics rows", metrics.display()))?;
    if first.get("reward").is_some() {
        GrpoMetrics::plot(out, &read_metrics::<GrpoMetrics>(&metrics)?)?;
        Ok(out.join("curves.png"))
    } else if first.get("loss").is_some() {
        StepMetrics::plot(out, &read_metrics::<StepMetrics>(&metrics)?)?;
        Ok(out.join("loss.png"))
    } else {
        anyhow::bail!("{}: neither SFT (loss) nor GRPO (reward) metrics", metrics.display())
    }
}
