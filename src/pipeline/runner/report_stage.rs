//! The report stage: the summary of what the stages wrote (read back from their folders, so a rerun that skipped
//! them reports them too), as [`write_report`]'s Markdown and plots in `<out>/report/`.

use super::data_stages::{pairs_file, read_filter_summary};
use super::evals::{read_judge_summary, read_policy_evaluation, BASE_JUDGE_SUMMARY_FILE, JUDGE_SUMMARY_FILE};
use super::executor::{Executor, StageContext};
use super::plan::Plan;
use super::stages::{round_dir, FILTER, JUDGE_EVAL, JUDGE_TRAIN, POLICY_EVAL_AFTER, POLICY_EVAL_BEFORE};
use crate::pipeline::filter::default_audit;
use crate::pipeline::report::{write_report, FilterReport, OnlineRound, PipelineReport};
use crate::Result;

/// What the stages of `plan` wrote under `ex`'s folder, with this run's stage timings.
pub fn gather(plan: &Plan, ex: &Executor<'_>) -> Result<PipelineReport> {
    let mut report = PipelineReport { title: "Pipeline report".into(), ..PipelineReport::default() };
    if plan.judge_train.is_some() {
        report.judge_metrics = Some(ex.dir(JUDGE_TRAIN).join("metrics.jsonl")).filter(|p| p.is_file());
    }
    if plan.bench.is_some() {
        report.judge_before = read_judge_summary(&ex.dir(JUDGE_EVAL), BASE_JUDGE_SUMMARY_FILE)?;
        report.judge_after = read_judge_summary(&ex.dir(JUDGE_EVAL), JUDGE_SUMMARY_FILE)?;
    }
    let held_out = plan.held_out.is_some();
    if held_out {
        report.policy_before = Some(read_policy_evaluation(&ex.dir(POLICY_EVAL_BEFORE))?);
    }
    match &plan.online {
        None => {
            let filter = ex.dir(FILTER);
            let audit = default_audit(&pairs_file(&filter));
            report.filter = Some(FilterReport { summary: read_filter_summary(&filter)?, audit: Some(audit) });
            if held_out {
                report.policy_after = Some(read_policy_evaluation(&ex.dir(POLICY_EVAL_AFTER))?);
            }
        }
        Some(online) => {
            for round in 1..=online.rounds {
                let dir = ex.dir(&round_dir(round));
                let filter = read_filter_summary(&dir.join(FILTER))?;
                if held_out {
                    let policy = read_policy_evaluation(&dir.join("eval"))?;
                    report.online_rounds.push(OnlineRound { policy, filter });
                } else {
                    report.notes.push(format!("round {round}: {} pairs from {} prompts", filter.pairs, filter.prompts));
                }
            }
            report.policy_after = report.online_rounds.last().map(|r| r.policy.clone());
        }
    }
    report.stage_seconds = ex.timings.clone();
    Ok(report)
}

/// Writes `report` into the stage's folder.
pub fn report_stage(context: &mut StageContext<'_>, report: &PipelineReport) -> Result<bool> {
    write_report(report, &context.dir)?;
    Ok(true)
}
