//! `unireward eval`: a judge on a pairwise benchmark file (JSONL, one pair a line), from both orders — one-pass, or
//! reasoned with `--reasoned` — with the papers' metrics: [`unireward::judge::bench`] behind a command line (the file
//! format and the metrics are documented there).
//!
//! With `--out`, every pair's result is appended to a JSONL file as its batch finishes (flushed to disk), `--resume`
//! continues after the last complete batch (of a run with the same `--batch`), and the metrics are those of the whole
//! file.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::Context as _;
use unireward::judge::bench::{evaluate_bench, read_bench_file, BenchOptions};
use unireward::judge::{GenerationConfig, Judge};
use unireward::{DType, Device};

use crate::progress::Progress;

#[derive(clap::Args)]
pub struct Args {
    /// The checkpoint directory.
    #[arg(long)]
    model: PathBuf,
    /// The benchmark file (JSONL).
    #[arg(long)]
    data: PathBuf,
    /// Pairs judged per batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Where every pair's result goes (JSONL, a line a pair, flushed batch by batch); the metrics are the file's.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run whose --out this is, after its last complete batch. It needs that run's --batch (the batches
    /// then hold the same pairs and the file the same bytes as an uninterrupted run's); another is refused.
    #[arg(long, requires = "out")]
    resume: bool,
    /// Reasoned judgments: each order's answer generated (greedy) and its verdict read after the reasoning, one pair
    /// at a time — how a judge trained to reason before its verdict is measured (one-pass reads the verdict first).
    #[arg(long)]
    reasoned: bool,
    /// Reasoned: tokens each answer generates at most.
    #[arg(long, default_value_t = 512, requires = "reasoned")]
    max_new_tokens: usize,
    /// Print every pair's result and the summary as JSON.
    #[arg(long)]
    json: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = crate::parse_device)]
    device: Device,
    /// The compute dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32", value_parser = crate::parse_float_dtype)]
    dtype: DType,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let reasoned =
        args.reasoned.then(|| GenerationConfig { max_new_tokens: args.max_new_tokens, ..Default::default() });
    let options = BenchOptions { batch: args.batch, out: args.out.clone(), resume: args.resume, reasoned };
    options.validate()?;
    let folder = args.data.parent().unwrap_or(std::path::Path::new("."));
    let pairs = read_bench_file(&args.data, folder)?;
    anyhow::ensure!(!pairs.is_empty(), "--data {} holds no pairs", args.data.display());
    let judge = Judge::load(&args.model, args.dtype, args.device)
        .with_context(|| format!("loading the judge in {}", args.model.display()))?;
    let progress = Progress::new("pairs", args.batch.max(1))?;
    // No Ctrl-C handler: a killed run continues with --resume.
    let never = AtomicBool::new(false);
    let outcome = evaluate_bench(&judge, &pairs, &options, &never, |done, total| progress.update(done, total, ""))?;
    progress.finish();
    if args.json {
        let pairs: Vec<_> = outcome.results.iter().map(|r| r.to_json()).collect::<unireward::Result<_>>()?;
        let json = serde_json::json!({"pairs": pairs, "summary": outcome.summary});
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!("| metric | value |\n| --- | ---: |");
        for (k, v) in &outcome.summary.metrics {
            println!("| {k} | {v} |");
        }
    }
    Ok(())
}
