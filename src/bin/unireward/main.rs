//! `unireward`: the command line of the library.

mod bench;
mod bench_judge;
mod bench_llava;
mod bench_model;
mod bench_passes;
mod bench_products;
mod bench_train;
mod demo;
mod demo_kernels;
mod dpo;
mod eval;
mod eval_policy;
mod filter;
mod filter_merge;
mod generate;
mod generate_media;
mod judge;
mod kernels;
mod peak_alloc;
pub mod pipeline;
mod plot;
mod preprocess;
mod progress;
mod report;
mod sample;
mod synthetic;
mod train_judge;
mod train_options;
mod train_reward;

use clap::{Parser, Subcommand};
use unireward::{DType, Device};

#[global_allocator]
static ALLOCATOR: peak_alloc::PeakAlloc = peak_alloc::PeakAlloc;

#[derive(Parser)]
#[command(name = "unireward", version, about = "Fused kernels for reward models and preference alignment")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// DPO loss and gradient on a synthetic batch with a Qwen2-sized vocabulary, against the naive path.
    Demo(demo::Args),
    /// Fused against naive paths on the same inputs: time and peak memory of each, and their ratios.
    #[command(subcommand)]
    Bench(bench::Bench),
    /// Compiles every CUDA kernel with NVRTC and prints registers and spills per kernel.
    Kernels(kernels::Args),
    /// Generates text with a Qwen2 or LLaVA-OneVision checkpoint (images and videos with the latter; greedy or
    /// sampled; the prompt raw or in the chat template).
    Generate(generate::Args),
    /// Judges a pair (which is better) or one candidate (its score) with a UnifiedReward checkpoint.
    Judge(judge::Args),
    /// A judge on a pairwise benchmark file (JSONL): GenAI-Bench tau/diff, VL-RewardBench accuracies, position
    /// consistency, calibration.
    Eval(eval::Args),
    /// A policy's accuracy on held-out understanding questions with known answers: greedy exact match and
    /// preference of the answer over the wrong ones, per task.
    EvalPolicy(eval_policy::Args),
    /// Judges K candidates per prompt (a candidates JSONL) into chosen/rejected preference pairs, resumable and
    /// shardable, with an audit file of every judgment.
    Filter(filter::Args),
    /// K sampled answers per understanding prompt from a policy (Qwen2 or LLaVA-OneVision): the filter's candidates
    /// file, resumable.
    Sample(sample::Args),
    /// Joins the finished shards of a `filter --shard i/n` run into the unsharded run's files.
    FilterMerge(filter_merge::Args),
    /// Images and videos to the vision tower's pixel input (LLaVA-OneVision's preprocessing), optionally as .npy.
    Preprocess(preprocess::Args),
    /// Supervised fine-tuning of a judge on a conversation file, with checkpoints and --resume.
    TrainJudge(train_judge::Args),
    /// A scalar reward model (Qwen2ForSequenceClassification) with Bradley–Terry on pairs or K-wise on rankings.
    TrainReward(train_reward::Args),
    /// DPO (and the DPO family's losses) of a policy on a preference-pair file, with a cached reference.
    Dpo(dpo::Args),
    /// The whole pipeline of a config file: judge training and evaluation, policy SFT, sampling, filtering, DPO,
    /// held-out evaluations and a report; rerun, it continues or redoes only what changed (`--online`: rounds).
    Pipeline(pipeline::Args),
    /// PNG plots of a metrics log (JSONL), one per metric family: loss, lr, grad_norm, rewards, ...
    Plot(plot::Args),
    /// Lists the CUDA devices this machine offers (none is fine: the CPU path needs nothing).
    Devices,
}

/// Parses `cpu` or `cuda:N` (or `cuda` for device 0).
fn parse_device(s: &str) -> Result<Device, String> {
    Device::parse(s)
}

/// The folder a file's media paths are relative to: `given`, else the file's own folder.
fn media_folder(given: &Option<std::path::PathBuf>, file: &std::path::Path) -> std::path::PathBuf {
    given.clone().unwrap_or_else(|| file.parent().map_or_else(|| ".".into(), std::path::Path::to_path_buf))
}

/// Parses a float dtype name.
fn parse_float_dtype(s: &str) -> Result<DType, String> {
    DType::parse_float(s)
}

/// Errors are for the user: one line with its causes (`{:#}`), exit status 1. Returning them from `main` would print
/// their Debug form, a backtrace included whenever `RUST_BACKTRACE` is set.
fn main() -> std::process::ExitCode {
    let command = Cli::parse().command;
    // On a worker of rayon's pool, an op's parallel work starts on this thread; from the main thread every op would
    // be handed to the pool and waited for, a context switch per op (a fifth of a tiny model's training step).
    match rayon::scope(|_| run(command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Demo(args) => demo::run(&args),
        Command::Bench(bench) => bench::run(&bench),
        Command::Kernels(args) => kernels::run(&args),
        Command::Generate(args) => generate::run(&args),
        Command::Judge(args) => judge::run(&args),
        Command::Eval(args) => eval::run(&args),
        Command::EvalPolicy(args) => eval_policy::run(&args),
        Command::Filter(args) => filter::run(&args),
        Command::Sample(args) => sample::run(&args),
        Command::FilterMerge(args) => filter_merge::run(&args),
        Command::Preprocess(args) => preprocess::run(&args),
        Command::TrainJudge(args) => train_judge::run(&args),
        Command::TrainReward(args) => train_reward::run(&args),
        Command::Dpo(args) => dpo::run(&args),
        Command::Pipeline(args) => pipeline::run(&args),
        Command::Plot(args) => plot::run(&args),
        Command::Devices => {
            let count = unireward::runtime::cuda::device_count();
            println!("CUDA driver: {}", if unireward::runtime::cuda::driver_present() { "found" } else { "not found" });
            println!("NVRTC: {}", if unireward::runtime::cuda::nvrtc_present() { "found" } else { "not found" });
            println!("CUDA devices: {count}");
            for ordinal in 0..count {
                match unireward::runtime::cuda::backend(ordinal) {
                    Ok(b) => println!("  cuda:{ordinal}  {}", b.arch()),
                    Err(e) => println!("  cuda:{ordinal}  unusable: {e}"),
                }
            }
            Ok(())
        }
    }
}
