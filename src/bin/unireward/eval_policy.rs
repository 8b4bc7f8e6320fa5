//! `unireward eval-policy`: a policy's accuracy on held-out understanding questions with known answers — greedy
//! answers matched against the answer, and whether the answer is more probable than every wrong answer
//! ([`unireward::pipeline::policy_eval`], whose documentation gives the file format), overall and per task.

use std::path::PathBuf;

use anyhow::Context;
use unireward::pipeline::policy_eval::{evaluate_policy, read_policy_questions, PolicyEvalOptions};
use unireward::pipeline::sample::Policy;
use unireward::{DType, Device};

#[derive(clap::Args)]
pub struct Args {
    /// The policy checkpoint directory (Qwen2 or LLaVA-OneVision).
    #[arg(long)]
    policy: PathBuf,
    /// The questions file (JSONL: id, task, context, answer, wrong_answers).
    #[arg(long)]
    data: PathBuf,
    /// Print the evaluation (every answer included) as JSON.
    #[arg(long)]
    json: bool,
    /// The longest greedy answer, in tokens.
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Frames sampled evenly from each video.
    #[arg(long, default_value_t = 8)]
    frames: usize,
    /// The folder media paths are relative to; default the questions file's folder.
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
    let options = PolicyEvalOptions { max_new_tokens: args.max_new_tokens, frames: args.frames };
    let media_folder = crate::media_folder(&args.media_folder, &args.data);
    let questions = read_policy_questions(&args.data, &media_folder)
        .with_context(|| format!("reading --data {}", args.data.display()))?;
    let policy = Policy::load(&args.policy, args.dtype, args.device)
        .with_context(|| format!("loading the policy in {}", args.policy.display()))?;
    let evaluation = evaluate_policy(&policy, &questions, &options)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&evaluation)?);
    } else {
        println!("| task | questions | accuracy | preference accuracy |\n| --- | ---: | ---: | ---: |");
        let all = std::iter::once(("all", evaluation.questions, evaluation.accuracy, evaluation.preference_accuracy));
        let tasks =
            evaluation.per_task.iter().map(|(t, e)| (t.as_str(), e.questions, e.accuracy, e.preference_accuracy));
        for (task, n, accuracy, preference) in all.chain(tasks) {
            println!("| {task} | {n} | {accuracy:.3} | {preference:.3} |");
        }
    }
    Ok(())
}
