//! `unireward filter`: a judge turns a candidates file (K candidates per prompt) into preference pairs, with an
//! audit file of every judgment, a progress file that `--resume` continues from, and `--shard i/n` to split the
//! prompts among processes (joined by `unireward filter-merge`). Progress is a bar on a terminal; the summary is a
//! table, or JSON with `--json`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use unireward::judge::{GenerationConfig, Judge};
use unireward::pipeline::filter::{
    default_audit, read_candidates, run_filter, FilterOptions, InvalidPolicy, JudgeJudgments, Shard, Strategy, Summary,
};
use unireward::{DType, Device};

use crate::progress::Progress;

#[derive(clap::Args)]
pub struct Args {
    /// The judge checkpoint directory.
    #[arg(long)]
    judge: PathBuf,
    /// The candidates file (JSONL, one prompt a line).
    #[arg(long)]
    candidates: PathBuf,
    /// Where the pairs go (JSONL); the progress file is `<out>.progress`.
    #[arg(long)]
    out: PathBuf,
    /// pair-rank+point-sift, pair-rank, point-sift, round-robin or bradley-terry.
    #[arg(long, default_value = "pair-rank+point-sift", value_parser = parse_strategy)]
    strategy: Strategy,
    /// Generate and parse reasoned judgments instead of one-pass verdicts.
    #[arg(long)]
    reasoned: bool,
    /// The most tokens a reasoned judgment generates.
    #[arg(long, default_value_t = 512)]
    max_new_tokens: usize,
    /// One-pass judgments scored per model batch (a prompt's pairs or candidates, in chunks of this many).
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// The audit file (JSONL, one judgment a line); default `<out>.audit.jsonl`.
    #[arg(long)]
    audit: Option<PathBuf>,
    /// Continue the run whose files these are, after its last finished prompt.
    #[arg(long)]
    resume: bool,
    /// Judge only shard i of n (the prompts whose index is i modulo n).
    #[arg(long, default_value = "0/1", value_parser = parse_shard)]
    shard: Shard,
    /// Skip (and count) invalid prompts instead of refusing the file.
    #[arg(long)]
    skip_invalid: bool,
    /// The folder media paths are relative to; default the candidates file's folder.
    #[arg(long)]
    media_folder: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = crate::parse_device)]
    device: Device,
    /// The compute dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32", value_parser = crate::parse_float_dtype)]
    dtype: DType,
}

/// The message of a parse error, without its kind.
fn message(e: unireward::Error) -> String {
    match e {
        unireward::Error::InvalidArgument(m) => m,
        other => other.to_string(),
    }
}

fn parse_strategy(s: &str) -> Result<Strategy, String> {
    s.parse().map_err(message)
}

fn parse_shard(s: &str) -> Result<Shard, String> {
    s.parse().map_err(message)
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
    let media_folder = crate::media_folder(&args.media_folder, &args.candidates);
    let file = read_candidates(&args.candidates, &media_folder)
        .with_context(|| format!("reading --candidates {}", args.candidates.display()))?;
    anyhow::ensure!(file.records > 0, "--candidates {} holds no prompts", args.candidates.display());
    let judge = Judge::load(&args.judge, args.dtype, args.device)
        .with_context(|| format!("loading the judge in {}", args.judge.display()))?;
    let reasoned =
        args.reasoned.then(|| GenerationConfig { max_new_tokens: args.max_new_tokens, ..Default::default() });
    let judgments = JudgeJudgments { judge: &judge, reasoned, batch: args.batch };
    let options = FilterOptions {
        strategy: args.strategy,
        shard: args.shard,
        resume: args.resume,
        invalid: if args.skip_invalid { InvalidPolicy::Skip } else { InvalidPolicy::Refuse },
        pairs: args.out.clone(),
        audit: args.audit.clone().unwrap_or_else(|| default_audit(&args.out)),
        judge: judgments.label(&args.judge, args.dtype, args.device),
    };
    static STOP: AtomicBool = AtomicBool::new(false);
    ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    let progress = Progress::new("prompts", 10)?;
    let outcome = run_filter(&file, &judgments, &options, &STOP, |done, total, s| {
        progress.update(done, total, &format!("{} pairs", s.pairs))
    })?;
    progress.finish();
    for p in &outcome.invalid {
        eprintln!("skipped {} line {}: {}", args.candidates.display(), p.line, p.reason);
    }
    print_summary(&outcome.summary, outcome.interrupted, args.json)?;
    Ok(())
}

/// The counts, as a table or as JSON.
pub fn print_summary(summary: &Summary, interrupted: bool, json: bool) -> anyhow::Result<()> {
    if json {
        let mut value = serde_json::to_value(summary)?;
        value["interrupted"] = interrupted.into();
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    if interrupted {
        println!("interrupted: continue with --resume");
    }
    println!(
        "| prompts | pairs | without pair | ties | unparsable | skipped |\n| ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let s = summary;
    println!("| {} | {} | {} | {} | {} | {} |", s.prompts, s.pairs, s.without_pair, s.ties, s.unparsable, s.skipped);
    Ok(())
}
