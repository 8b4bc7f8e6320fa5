//! `unireward pipeline --config FILE.toml [--online] [--rerun STAGE]`: the whole pipeline of one config (see the
//! README's "Pipeline" section and `examples/pipeline.toml`), one progress bar per stage. Ctrl-C stops after the
//! current step of the current stage; running the command again continues there.
//!
//! For the tests of a killed run: with `UNIREWARD_PIPELINE_ABORT_AT=STAGE:N` set, the process aborts (as a kill
//! would, nothing cleaned up) right after stage STAGE reports N units done.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use unireward::pipeline::runner::{run_pipeline, PipelineConfig, RunOptions, StageEvent};

use crate::progress::{say, Progress};

#[derive(clap::Args)]
pub struct Args {
    /// The pipeline's config (TOML; paths in it are relative to its folder).
    #[arg(long)]
    config: PathBuf,
    /// Rounds of sample → filter → DPO → evaluation (the config's `[online]`) instead of one offline pass.
    #[arg(long)]
    online: bool,
    /// Run this stage (e.g. `dpo`, `online/round-2/filter`) and every one after it again.
    #[arg(long)]
    rerun: Option<String>,
}

/// Draws a run's events: a bar per running stage, a line when a stage starts, is skipped or ends.
#[derive(Default)]
pub struct Bars {
    bar: Option<Progress>,
    abort_at: Option<(String, usize)>,
}

impl Bars {
    pub fn event(&mut self, event: StageEvent<'_>) {
        match event {
            StageEvent::Started { stage, resumed } => {
                say(&format!("{stage}: {}", if resumed { "continuing" } else { "running" }));
            }
            StageEvent::Skipped { stage } => say(&format!("{stage}: up to date, kept")),
            StageEvent::Progress { stage, done, total, unit, message } => {
                if self.bar.is_none() {
                    self.bar = Progress::new(unit, 10).ok();
                }
                if let Some(bar) = &self.bar {
                    bar.update(done, total, &message);
                }
                if self.abort_at.as_ref().is_some_and(|(s, n)| s == stage && *n == done) {
                    std::process::abort();
                }
            }
            StageEvent::Finished { stage, seconds } => {
                self.clear();
                say(&format!("{stage}: done in {seconds:.1} s"));
            }
            StageEvent::Interrupted { stage } => {
                self.clear();
                say(&format!("{stage}: interrupted; run the command again to continue"));
            }
        }
    }

    pub fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }
}

/// `STAGE:N` of the test hook.
fn abort_at() -> anyhow::Result<Option<(String, usize)>> {
    let Ok(value) = std::env::var("UNIREWARD_PIPELINE_ABORT_AT") else { return Ok(None) };
    let (stage, n) = value.rsplit_once(':').context("UNIREWARD_PIPELINE_ABORT_AT: expected STAGE:N")?;
    Ok(Some((stage.to_string(), n.parse().context("UNIREWARD_PIPELINE_ABORT_AT: N")?)))
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let config = PipelineConfig::from_file(&args.config)?;
    static STOP: AtomicBool = AtomicBool::new(false);
    ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    let mut bars = Bars { bar: None, abort_at: abort_at()? };
    let options = RunOptions { online: args.online, rerun: args.rerun.clone() };
    let outcome = run_pipeline(config, &options, &STOP, &mut |e: StageEvent<'_>| bars.event(e))?;
    bars.clear();
    match &outcome.report {
        Some(report) => println!("report: {}", report.display()),
        None => println!("interrupted: run the command again to continue"),
    }
    Ok(())
}
