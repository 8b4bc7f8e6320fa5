//! The whole pipeline in one run (`unireward pipeline --config FILE.toml`): the judge fine-tuned and evaluated,
//! the policy fine-tuned and evaluated, K candidates sampled per prompt, judged into pairs, DPO, the policy
//! evaluated again, and a report — or, `--online`, rounds of sample → filter → a few DPO steps → evaluation.
//!
//! - [`config`]: the TOML config ([`PipelineConfig`]); [`plan`]: it checked, with its inputs read ([`Plan`]);
//! - [`record`]: each stage's record of what it ran on; [`executor`]: skip / continue / start over per stage;
//! - [`stages`]: the stages in order; `train_stage`, `data_stages`, `evals`, `report_stage`: their bodies;
//! - [`observer`]: the progress events ([`StageEvent`]) a caller draws.
//!
//! Every stage writes under `<out>/<stage>/`. A rerun skips the finished stages whose records match, continues an
//! unfinished one with the stage's own resume (the trainers' checkpoints, the sampler's and the filter's
//! appended outputs), and starts over a stage whose inputs or options changed, with every stage after it.

pub mod config;
mod data_stages;
mod evals;
pub mod executor;
mod json_file;
pub mod observer;
pub mod plan;
pub mod record;
mod report_stage;
pub mod stages;
mod train_stage;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

pub use config::{DpoSection, FilterConfig, JudgeConfig, OnlineConfig, PipelineConfig, PolicyConfig, TrainConfig};
pub use data_stages::{pairs_file, CANDIDATES_FILE};
pub use executor::Flow;
pub use observer::{Observer, StageEvent};
pub use plan::Plan;

use crate::{Error, Result};
use executor::Executor;
use record::{Hashes, StageRecord};

/// How a run goes besides its config.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Online rounds (`[online]`) instead of one offline pass.
    pub online: bool,
    /// This stage (a name of [`stages::stage_names`]) and every one after it start over.
    pub rerun: Option<String>,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineOutcome {
    /// The stop flag ended a stage early; a rerun continues it.
    pub interrupted: bool,
    /// The report's Markdown (`<out>/report/report.md`) when the run reached the end.
    pub report: Option<PathBuf>,
    /// The stages this run ran, with their seconds.
    pub stage_seconds: Vec<(String, f64)>,
}

/// Checks `config` entirely (nothing is written when it is refused), then runs its stages, telling `observer`
/// as they go; `stop` ends the current stage after its current step (or prompt), resumable.
pub fn run_pipeline(
    config: PipelineConfig,
    options: &RunOptions,
    stop: &AtomicBool,
    observer: &mut dyn Observer,
) -> Result<PipelineOutcome> {
    let plan = Plan::new(config, options.online)?;
    let names = stages::stage_names(&plan);
    if let Some(rerun) = &options.rerun {
        if !names.contains(rerun) {
            return Err(Error::InvalidArgument(format!(
                "--rerun {rerun}: no such stage in this run; its stages: {}",
                names.join(", ")
            )));
        }
    }
    let mut ex = Executor::new(&plan.config.out, stop, observer, options.rerun.clone());
    let mut hashes = Hashes::default();
    let stopped =
        |ex: &Executor<'_>| PipelineOutcome { interrupted: true, report: None, stage_seconds: ex.timings.clone() };
    if stages::run_stages(&plan, &mut ex, &mut hashes)? == Flow::Stopped {
        return Ok(stopped(&ex));
    }
    let record = StageRecord::new(stages::REPORT, ex.upstream(), serde_json::Value::Null);
    let report = report_stage::gather(&plan, &ex)?;
    if ex.stage(stages::REPORT, record, |cx| report_stage::report_stage(cx, &report))? == Flow::Stopped {
        return Ok(stopped(&ex));
    }
    Ok(PipelineOutcome {
        interrupted: false,
        report: Some(ex.dir(stages::REPORT).join("report.md")),
        stage_seconds: ex.timings.clone(),
    })
}
