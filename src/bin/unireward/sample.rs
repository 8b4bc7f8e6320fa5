//! `unireward sample`: K candidates per prompt from a policy (a Qwen2 or LLaVA-OneVision checkpoint) for the filter —
//! a prompts file (the candidates file's lines without `candidates`: id, task, context with the question and the image
//! or video) in, a candidates file out, appended and flushed prompt by prompt; `--resume` continues after its last
//! complete line.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use unireward::pipeline::filter::read_prompts;
use unireward::pipeline::sample::{run_sample, Policy, SampleOptions};
use unireward::{DType, Device};

use crate::progress::Progress;

#[derive(clap::Args)]
pub struct Args {
    /// The policy checkpoint directory (Qwen2 or LLaVA-OneVision).
    #[arg(long)]
    policy: PathBuf,
    /// The prompts file (JSONL, one understanding prompt a line).
    #[arg(long)]
    prompts: PathBuf,
    /// Where the candidates go (JSONL, the filter's --candidates).
    #[arg(long)]
    out: PathBuf,
    /// Candidates per prompt.
    #[arg(long, default_value_t = 10)]
    k: usize,
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Nucleus sampling mass in (0, 1].
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// With the prompt's id, the seed of its draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Frames sampled evenly from each video.
    #[arg(long, default_value_t = 8)]
    frames: usize,
    /// Continue the run whose output this is, after its last complete prompt.
    #[arg(long)]
    resume: bool,
    /// The folder media paths are relative to; default the prompts file's folder.
    #[arg(long)]
    media_folder: Option<PathBuf>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = crate::parse_device)]
    device: Device,
    /// The compute dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32", value_parser = crate::parse_float_dtype)]
    dtype: DType,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let options = SampleOptions {
        k: args.k,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        max_new_tokens: args.max_new_tokens,
        frames: args.frames,
    };
    options.validate()?;
    let media_folder = crate::media_folder(&args.media_folder, &args.prompts);
    let file = read_prompts(&args.prompts, &media_folder)
        .with_context(|| format!("reading --prompts {}", args.prompts.display()))?;
    let policy = Policy::load(&args.policy, args.dtype, args.device)
        .with_context(|| format!("loading the policy in {}", args.policy.display()))?;
    static STOP: AtomicBool = AtomicBool::new(false);
    ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    let progress = Progress::new("prompts", 10)?;
    let outcome = run_sample(&file, &policy, &options, &args.out, args.resume, &STOP, |done, total| {
        progress.update(done, total, "")
    })?;
    progress.finish();
    if outcome.interrupted {
        println!("interrupted: continue with --resume");
    }
    println!("{} prompts x {} candidates in {}", outcome.total, args.k, args.out.display());
    Ok(())
}
