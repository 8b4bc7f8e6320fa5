//! `unireward plot`: PNG plots of a metrics log (train-judge's `metrics.jsonl`, or any trainer's or evaluation's
//! JSON lines of metrics), one per metric family.

use std::path::{Path, PathBuf};

use anyhow::Context;
use unireward::train::plots::{write_metric_plots, PlotReport};

#[derive(clap::Args)]
pub struct Args {
    /// The metrics log: one JSON object a line, with `step` and numeric metrics.
    #[arg(long)]
    metrics: PathBuf,
    /// Where the PNGs go (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let report = write_metric_plots(&args.metrics, &args.out)
        .with_context(|| format!("plotting --metrics {}", args.metrics.display()))?;
    if args.json {
        let gaps: serde_json::Map<_, _> = report.gaps().into_iter().map(|(k, n)| (k.to_string(), n.into())).collect();
        let files: Vec<_> = report.files.iter().map(|f| f.display().to_string()).collect();
        let json = serde_json::json!({
            "files": files, "records": report.log.records, "gaps": gaps, "cut_last_line": report.log.cut_last_line,
        });
        println!("{json}");
    } else {
        print_report(&report, &args.metrics);
    }
    Ok(())
}

/// The plots written and what was not plotted, for people (also used at the end of `train-judge`).
pub fn print_report(report: &PlotReport, metrics: &Path) {
    for file in &report.files {
        println!("wrote {}", file.display());
    }
    for (name, n) in report.gaps() {
        eprintln!("{name}: {n} NaN or null values in {}, shown as gaps", metrics.display());
    }
    if report.log.cut_last_line {
        eprintln!("{}: the last line is incomplete and was skipped", metrics.display());
    }
}
