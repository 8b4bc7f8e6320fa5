//! The sample and filter stages: K candidates per prompt from the current policy (`candidates.jsonl`), then the
//! judge's pairs (`pairs.jsonl`, its audit and progress files, and `summary.json`), both continuing their own
//! output when the stage resumes.

use std::path::{Path, PathBuf};

use super::executor::StageContext;
use super::json_file::{read_json, write_json};
use crate::judge::{GenerationConfig, Judge};
use crate::pipeline::filter::{
    default_audit, read_candidates, run_filter, CandidateFile, FilterOptions, InvalidPolicy, JudgeJudgments, Shard,
    Strategy, Summary,
};
use crate::pipeline::sample::{run_sample, Policy, SampleOptions};
use crate::runtime::{DType, Device};
use crate::Result;

pub const CANDIDATES_FILE: &str = "candidates.jsonl";
pub const PAIRS_FILE: &str = "pairs.jsonl";
pub const SUMMARY_FILE: &str = "summary.json";

/// Samples `prompts` from the policy in `policy` into the stage's candidates file; false when stopped early.
pub fn sample_stage(
    context: &mut StageContext<'_>,
    prompts: &CandidateFile,
    policy: &Path,
    options: &SampleOptions,
    dtype: DType,
    device: Device,
) -> Result<bool> {
    let out = context.dir.join(CANDIDATES_FILE);
    let policy = Policy::load(policy, dtype, device)?;
    let stop = context.stop;
    let outcome = run_sample(prompts, &policy, options, &out, context.resume && out.exists(), stop, |done, total| {
        context.progress(done, total, "prompts", String::new())
    })?;
    Ok(!outcome.interrupted)
}

/// How the filter stage judges.
pub struct FilterSettings<'a> {
    pub judge: &'a Path,
    pub strategy: Strategy,
    /// Reasoned judgments generated with this, or one-pass verdicts (`None`).
    pub reasoned: Option<GenerationConfig>,
    pub batch: usize,
    pub dtype: DType,
    pub device: Device,
}

/// Judges the candidates of the stage `candidates` (media relative to `media_folder`) into the stage's pairs.
pub fn filter_stage(
    context: &mut StageContext<'_>,
    candidates: &Path,
    media_folder: &Path,
    settings: &FilterSettings<'_>,
) -> Result<bool> {
    let file = read_candidates(candidates, media_folder)?;
    let judge = Judge::load(settings.judge, settings.dtype, settings.device)?;
    let judgments = JudgeJudgments { judge: &judge, reasoned: settings.reasoned.clone(), batch: settings.batch };
    let pairs = context.dir.join(PAIRS_FILE);
    let options = FilterOptions {
        strategy: settings.strategy,
        shard: Shard::ALL,
        resume: context.resume && pairs.exists(),
        invalid: InvalidPolicy::Refuse,
        audit: default_audit(&pairs),
        pairs,
        judge: judgments.label(settings.judge, settings.dtype, settings.device),
    };
    let stop = context.stop;
    let outcome = run_filter(&file, &judgments, &options, stop, |done, total, s| {
        context.progress(done, total, "prompts", format!("{} pairs", s.pairs))
    })?;
    if outcome.interrupted {
        return Ok(false);
    }
    write_json(&context.dir.join(SUMMARY_FILE), &outcome.summary)?;
    Ok(true)
}

/// The filter summary a finished filter stage in `dir` wrote.
pub fn read_filter_summary(dir: &Path) -> Result<Summary> {
    read_json(&dir.join(SUMMARY_FILE))
}

/// The pairs file of a filter stage in `dir`.
pub fn pairs_file(dir: &Path) -> PathBuf {
    dir.join(PAIRS_FILE)
}
