//! The evaluation stages: the judge on its benchmark file (before and after its fine-tuning) and the policy on
//! its held-out questions, each writing its summary as JSON for the report (and for a rerun that skips them).

use std::path::Path;

use super::executor::StageContext;
use super::json_file::{read_json, write_json};
use crate::judge::bench::{evaluate_bench, BenchOptions, BenchPair, BenchSummary};
use crate::judge::{GenerationConfig, Judge};
use crate::pipeline::policy_eval::{evaluate_policy, PolicyEvalOptions, PolicyEvaluation, PolicyQuestion};
use crate::pipeline::sample::Policy;
use crate::runtime::{DType, Device};
use crate::Result;

/// The evaluation file of a policy-eval stage.
pub const EVALUATION_FILE: &str = "evaluation.json";
/// The judge-eval stage's summaries: of the judge the filter uses, and of the judge before its fine-tuning.
pub const JUDGE_SUMMARY_FILE: &str = "summary.json";
pub const BASE_JUDGE_SUMMARY_FILE: &str = "base-summary.json";

/// How the judge-eval stage judges: pairs per batch (one-pass), reasoned or not, and where.
pub struct JudgeSettings {
    pub batch: usize,
    /// Reasoned judgments with this generation (`[filter] reasoned`); `None`: one-pass verdicts.
    pub reasoned: Option<GenerationConfig>,
    pub dtype: DType,
    pub device: Device,
}

/// Evaluates each `(summary file, judge)` on `pairs` (results appended beside it, continued when the stage
/// resumes); false when stopped early.
pub fn judge_eval_stage(
    context: &mut StageContext<'_>,
    judges: &[(&str, &Path)],
    pairs: &[BenchPair],
    how: &JudgeSettings,
) -> Result<bool> {
    for (file, dir) in judges {
        let summary_path = context.dir.join(file);
        if summary_path.is_file() {
            continue; // finished before the stage was stopped
        }
        let results = context.dir.join(format!("{}.results.jsonl", file.trim_end_matches(".json")));
        let options = BenchOptions {
            batch: how.batch,
            resume: context.resume && results.exists(),
            out: Some(results),
            reasoned: how.reasoned.clone(),
        };
        let judge = Judge::load(dir, how.dtype, how.device)?;
        let stop = context.stop;
        let outcome = evaluate_bench(&judge, pairs, &options, stop, |done, total| {
            context.progress(done, total, "pairs", file.to_string())
        })?;
        if outcome.interrupted {
            return Ok(false);
        }
        write_json(&summary_path, &outcome.summary)?;
    }
    Ok(true)
}

/// The judge's benchmark summary in a finished judge-eval stage's `dir` (`file`), if it wrote one.
pub fn read_judge_summary(dir: &Path, file: &str) -> Result<Option<BenchSummary>> {
    let path = dir.join(file);
    path.is_file().then(|| read_json(&path)).transpose()
}

/// Evaluates the policy in `policy` on `questions` into the stage's evaluation file.
pub fn policy_eval_stage(
    context: &mut StageContext<'_>,
    policy: &Path,
    questions: &[PolicyQuestion],
    options: &PolicyEvalOptions,
    dtype: DType,
    device: Device,
) -> Result<bool> {
    context.progress(0, questions.len(), "questions", String::new());
    let policy = Policy::load(policy, dtype, device)?;
    let evaluation = evaluate_policy(&policy, questions, options)?;
    let message = format!("accuracy {:.3}", evaluation.accuracy);
    context.progress(questions.len(), questions.len(), "questions", message);
    write_json(&context.dir.join(EVALUATION_FILE), &evaluation)?;
    Ok(true)
}

/// The evaluation a finished policy-eval stage in `dir` wrote.
pub fn read_policy_evaluation(dir: &Path) -> Result<PolicyEvaluation> {
    read_json(&dir.join(EVALUATION_FILE))
}
