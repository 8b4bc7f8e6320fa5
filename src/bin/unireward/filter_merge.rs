//! `unireward filter-merge`: the finished shards of one `unireward filter --shard i/n` run joined into the pairs
//! and audit files an unsharded run writes, byte for byte.

use std::path::PathBuf;

use anyhow::Context;
use unireward::pipeline::filter::{merge_shards, ShardOutput};

#[derive(clap::Args)]
pub struct Args {
    /// The shards' pairs files (each with its `<pairs>.progress`), all n of them, in any order.
    #[arg(long, num_args = 1.., required = true)]
    shards: Vec<PathBuf>,
    /// The shards' audit files, in the same order; default `<pairs>.audit.jsonl` for each.
    #[arg(long, num_args = 1..)]
    audits: Vec<PathBuf>,
    /// The merged pairs file (must not exist).
    #[arg(long)]
    out: PathBuf,
    /// The merged audit file; default `<out>.audit.jsonl`.
    #[arg(long)]
    audit: Option<PathBuf>,
    /// Print the summed counts as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.audits.is_empty() || args.audits.len() == args.shards.len(),
        "--audits lists {} files for {} --shards",
        args.audits.len(),
        args.shards.len()
    );
    let shards: Vec<ShardOutput> = args
        .shards
        .iter()
        .enumerate()
        .map(|(i, pairs)| ShardOutput {
            pairs: pairs.clone(),
            audit: args.audits.get(i).cloned().unwrap_or_else(|| unireward::pipeline::filter::default_audit(pairs)),
        })
        .collect();
    let audit = args.audit.clone().unwrap_or_else(|| unireward::pipeline::filter::default_audit(&args.out));
    let summary = merge_shards(&shards, &args.out, &audit).context("merging the shards")?;
    crate::filter::print_summary(&summary, false, args.json)
}
