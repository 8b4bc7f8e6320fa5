//! The pipeline's summary: `report.md` (Markdown tables of every section given) and PNG plots beside it —
//! `judge-training/<family>.png` (the judge trainer's curves, [`write_metric_plots`]), `scores.png` and
//! `margins.png` (the filter's pointwise scores and pairwise margins, read from its audit file), `policy-accuracy.png`
//! (the policy's accuracies before and after training, per task) and `online-rounds.png` (accuracies per online
//! round). Every section is optional; what is not given is left out. Everything is read and drawn before any file is
//! written.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use image::RgbImage;

use super::filter::{AuditRecord, Summary};
use super::policy_eval::{PolicyEvaluation, PolicyTaskEvaluation};
use crate::judge::bench::BenchSummary;
use crate::model::files::read_text;
use crate::train::plots::{bar_chart, histogram, line_chart, save_png, write_metric_plots, Series};
use crate::train::plots::{PLOT_HEIGHT, PLOT_WIDTH};
use crate::{Error, Result};

/// The largest audit file read.
pub const MAX_AUDIT_BYTES: u64 = 1 << 30;
/// Bins of the score and margin histograms.
const HISTOGRAM_BINS: usize = 20;

/// The filter's outcome: its counts and, for the score distributions, its audit file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FilterReport {
    pub summary: Summary,
    /// The audit file ([`AuditRecord`] lines); required to exist when given.
    pub audit: Option<PathBuf>,
}

/// One online round: the policy's held-out evaluation after the round and the round's filter counts.
#[derive(Clone, Debug, PartialEq)]
pub struct OnlineRound {
    pub policy: PolicyEvaluation,
    pub filter: Summary,
}

/// What a pipeline run reports; every section is optional.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PipelineReport {
    /// The report's heading (`Pipeline report` when empty).
    pub title: String,
    /// The judge trainer's `metrics.jsonl`.
    pub judge_metrics: Option<PathBuf>,
    /// The judge's benchmark summary before and after training.
    pub judge_before: Option<BenchSummary>,
    pub judge_after: Option<BenchSummary>,
    pub filter: Option<FilterReport>,
    /// The policy on held-out questions before and after DPO.
    pub policy_before: Option<PolicyEvaluation>,
    pub policy_after: Option<PolicyEvaluation>,
    /// In round order.
    pub online_rounds: Vec<OnlineRound>,
    /// `(stage, seconds)` in stage order.
    pub stage_seconds: Vec<(String, f64)>,
    /// Free lines, listed at the end.
    pub notes: Vec<String>,
}

/// What the audit file says about the judgments.
#[derive(Clone, Debug, Default, PartialEq)]
struct AuditStats {
    /// Parsed pointwise scores, and pairwise margins (finite ones).
    scores: Vec<f64>,
    margins: Vec<f64>,
    /// Pairwise verdicts: `first`, `second`, `tie`.
    verdicts: BTreeMap<String, usize>,
    pairwise: usize,
    pointwise: usize,
    unparsable: usize,
}

/// Reads the audit file at `path`: every non-blank line an [`AuditRecord`], else an error naming the line.
fn read_audit(path: &Path) -> Result<AuditStats> {
    if !path.exists() {
        return Err(Error::InvalidArgument(format!("the filter's audit file {} does not exist", path.display())));
    }
    let text = read_text(path, MAX_AUDIT_BYTES)?;
    let mut stats = AuditStats::default();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let record: AuditRecord = serde_json::from_str(line).map_err(|e| {
            Error::InvalidArgument(format!("the filter's audit file {} line {}: {e}", path.display(), i + 1))
        })?;
        stats.unparsable += usize::from(record.unparsable.is_some());
        match record.mode.as_str() {
            "pairwise" => {
                stats.pairwise += 1;
                if let Some(v) = record.verdict {
                    *stats.verdicts.entry(v).or_default() += 1;
                }
                stats.margins.extend(record.margin.map(f64::from).filter(|m| m.is_finite()));
            }
            "pointwise" => {
                stats.pointwise += 1;
                stats.scores.extend(record.score.filter(|s| s.is_finite()));
            }
            other => {
                return Err(Error::InvalidArgument(format!(
                    "the filter's audit file {} line {}: `mode` is {other:?}, not pairwise or pointwise",
                    path.display(),
                    i + 1
                )))
            }
        }
    }
    Ok(stats)
}

/// A rate or score as the tables print it.
fn number(value: Option<f64>) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.3}"),
        Some(_) => "n/a".into(),
        None => "—".into(),
    }
}

/// A benchmark metric's cell: counts as integers, rates to 3 decimals, `n/a` for a rate over nothing.
fn metric(summary: Option<&BenchSummary>, key: &str) -> String {
    match summary.and_then(|s| s.metrics.get(key)) {
        None => "—".into(),
        Some(serde_json::Value::Number(n)) if n.is_u64() => n.to_string(),
        Some(v) => number(Some(v.as_f64().unwrap_or(f64::NAN))),
    }
}

fn judge_section(md: &mut String, before: Option<&BenchSummary>, after: Option<&BenchSummary>) {
    let keys: BTreeSet<&String> = before.iter().chain(after.iter()).flat_map(|s| s.metrics.keys()).collect();
    md.push_str("## Judge benchmark\n\n| metric | before training | after training |\n| --- | ---: | ---: |\n");
    for key in keys {
        let _ = writeln!(md, "| {key} | {} | {} |", metric(before, key), metric(after, key));
    }
    md.push('\n');
}

fn filter_section(md: &mut String, filter: &FilterReport, audit: Option<&AuditStats>, plots: &[&str]) {
    let s = &filter.summary;
    md.push_str("## Filter\n\n| count | value |\n| --- | ---: |\n");
    for (name, n) in [
        ("prompts judged", s.prompts),
        ("pairs written", s.pairs),
        ("prompts without a pair", s.without_pair),
        ("tied pairwise judgments", s.ties),
        ("unparsable judgments", s.unparsable),
        ("invalid prompts skipped", s.skipped),
    ] {
        let _ = writeln!(md, "| {name} | {n} |");
    }
    let per_prompt = (s.prompts > 0).then(|| s.pairs as f64 / s.prompts as f64);
    let _ = writeln!(md, "| pairs per prompt | {} |\n", number(per_prompt));
    if let Some(a) = audit {
        md.push_str("### Judgments (audit file)\n\n| judgments | value |\n| --- | ---: |\n");
        let _ = writeln!(md, "| pairwise | {} |", a.pairwise);
        for (verdict, n) in &a.verdicts {
            let _ = writeln!(md, "| pairwise, verdict {verdict} | {n} |");
        }
        let _ = writeln!(md, "| pointwise | {} |", a.pointwise);
        let _ = writeln!(md, "| unparsable | {} |", a.unparsable);
        for (name, values) in [("score", &a.scores), ("margin", &a.margins)] {
            if values.is_empty() {
                continue;
            }
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let min = values.iter().copied().fold(f64::INFINITY, f64::min);
            let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let _ = writeln!(
                md,
                "| {name}: mean / min / max | {} / {} / {} |",
                number(Some(mean)),
                number(Some(min)),
                number(Some(max))
            );
        }
        md.push('\n');
    }
    for plot in plots {
        let _ = writeln!(md, "![{plot}]({plot})\n");
    }
}

/// The rows of the policy tables: `all` first, then each task of either evaluation.
fn policy_rows(evaluations: &[Option<&PolicyEvaluation>]) -> Vec<(String, Vec<Option<PolicyTaskEvaluation>>)> {
    let overall = |e: &PolicyEvaluation| PolicyTaskEvaluation {
        questions: e.questions,
        correct: e.answers.iter().filter(|a| a.correct).count(),
        preferred: e.answers.iter().filter(|a| a.preferred).count(),
        accuracy: e.accuracy,
        preference_accuracy: e.preference_accuracy,
    };
    let tasks: BTreeSet<&String> = evaluations.iter().flatten().flat_map(|e| e.per_task.keys()).collect();
    let mut rows = vec![("all".to_string(), evaluations.iter().map(|e| e.map(overall)).collect())];
    for task in tasks {
        rows.push((task.clone(), evaluations.iter().map(|e| e.and_then(|e| e.per_task.get(task).cloned())).collect()));
    }
    rows
}

fn policy_section(md: &mut String, before: Option<&PolicyEvaluation>, after: Option<&PolicyEvaluation>, plot: bool) {
    md.push_str(
        "## Policy on held-out questions\n\n| task | questions | accuracy before | accuracy after | preference \
         accuracy before | preference accuracy after |\n| --- | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for (task, cells) in policy_rows(&[before, after]) {
        let (b, a) = (&cells[0], &cells[1]);
        let questions = a.as_ref().or(b.as_ref()).map_or(0, |e| e.questions);
        let _ = writeln!(
            md,
            "| {task} | {questions} | {} | {} | {} | {} |",
            number(b.as_ref().map(|e| e.accuracy)),
            number(a.as_ref().map(|e| e.accuracy)),
            number(b.as_ref().map(|e| e.preference_accuracy)),
            number(a.as_ref().map(|e| e.preference_accuracy)),
        );
    }
    md.push('\n');
    if plot {
        md.push_str("![policy-accuracy.png](policy-accuracy.png)\n\n");
    }
}

fn online_section(md: &mut String, rounds: &[OnlineRound]) {
    md.push_str(
        "## Online rounds\n\n| round | accuracy | preference accuracy | prompts judged | pairs | ties | unparsable |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for (i, r) in rounds.iter().enumerate() {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            i + 1,
            number(Some(r.policy.accuracy)),
            number(Some(r.policy.preference_accuracy)),
            r.filter.prompts,
            r.filter.pairs,
            r.filter.ties,
            r.filter.unparsable
        );
    }
    md.push_str("\n![online-rounds.png](online-rounds.png)\n\n");
}

fn timings_section(md: &mut String, stages: &[(String, f64)]) {
    md.push_str("## Stage timings\n\n| stage | seconds |\n| --- | ---: |\n");
    for (stage, seconds) in stages {
        let _ = writeln!(md, "| {stage} | {seconds:.1} |");
    }
    let _ = writeln!(md, "| total | {:.1} |\n", stages.iter().map(|(_, s)| s).sum::<f64>());
}

/// The policy bars: per row of [`policy_rows`], accuracy and preference accuracy before and after (those given).
fn policy_plot(before: Option<&PolicyEvaluation>, after: Option<&PolicyEvaluation>) -> Result<RgbImage> {
    let rows = policy_rows(&[before, after]);
    let categories: Vec<String> = rows.iter().map(|(t, _)| t.clone()).collect();
    let mut groups = Vec::new();
    for (column, (when, given)) in [("before", before.is_some()), ("after", after.is_some())].into_iter().enumerate() {
        if !given {
            continue;
        }
        let value = |f: fn(&PolicyTaskEvaluation) -> f64| -> Vec<f64> {
            rows.iter().map(|(_, v)| v[column].as_ref().map_or(f64::NAN, f)).collect()
        };
        groups.push((format!("accuracy {when}"), value(|e| e.accuracy)));
        groups.push((format!("preference accuracy {when}"), value(|e| e.preference_accuracy)));
    }
    bar_chart("policy accuracy on held-out questions", "accuracy", &categories, &groups, PLOT_WIDTH, PLOT_HEIGHT)
}

fn online_plot(rounds: &[OnlineRound]) -> Result<RgbImage> {
    let series = |name: &str, f: fn(&PolicyEvaluation) -> f64| Series {
        name: name.into(),
        points: rounds.iter().enumerate().map(|(i, r)| ((i + 1) as f64, f(&r.policy))).collect(),
    };
    let (accuracy, preference) =
        (series("accuracy", |e| e.accuracy), series("preference_accuracy", |e| e.preference_accuracy));
    line_chart("policy accuracy per online round", "round", &[&accuracy, &preference], PLOT_WIDTH, PLOT_HEIGHT)
}

/// Writes `report.md` and its plots into `dir` (created if missing; files of the same names replaced) and returns
/// the report's path. A missing or corrupt audit file or metrics log is an error, before anything is written.
pub fn write_report(report: &PipelineReport, dir: &Path) -> Result<PathBuf> {
    let audit = match report.filter.as_ref().and_then(|f| f.audit.as_ref()) {
        Some(path) => Some(read_audit(path)?),
        None => None,
    };
    if let Some(metrics) = &report.judge_metrics {
        // Read first, so that a bad log fails before any file is written.
        crate::train::plots::read_metrics(metrics)?;
    }
    let mut images: Vec<(&str, RgbImage)> = Vec::new();
    if let Some(a) = &audit {
        if !a.scores.is_empty() {
            images.push((
                "scores.png",
                histogram("pointwise scores", "score", &a.scores, HISTOGRAM_BINS, PLOT_WIDTH, PLOT_HEIGHT)?,
            ));
        }
        if !a.margins.is_empty() {
            images.push((
                "margins.png",
                histogram("pairwise margins", "margin", &a.margins, HISTOGRAM_BINS, PLOT_WIDTH, PLOT_HEIGHT)?,
            ));
        }
    }
    let (before, after) = (report.policy_before.as_ref(), report.policy_after.as_ref());
    let policy_plotted = before.is_some() || after.is_some();
    if policy_plotted {
        images.push(("policy-accuracy.png", policy_plot(before, after)?));
    }
    if !report.online_rounds.is_empty() {
        images.push(("online-rounds.png", online_plot(&report.online_rounds)?));
    }

    let title = if report.title.is_empty() { "Pipeline report" } else { &report.title };
    let mut md = format!("# {title}\n\n");
    if report.judge_before.is_some() || report.judge_after.is_some() {
        judge_section(&mut md, report.judge_before.as_ref(), report.judge_after.as_ref());
    }
    if let Some(metrics) = &report.judge_metrics {
        let plots = write_metric_plots(metrics, &dir.join("judge-training"))?;
        let _ = writeln!(md, "## Judge training\n\nFrom `{}` ({} records).\n", metrics.display(), plots.log.records);
        for file in &plots.files {
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let _ = writeln!(md, "![{name}](judge-training/{name})\n");
        }
    }
    if let Some(filter) = &report.filter {
        let plots: Vec<&str> =
            images.iter().map(|(n, _)| *n).filter(|n| *n == "scores.png" || *n == "margins.png").collect();
        filter_section(&mut md, filter, audit.as_ref(), &plots);
    }
    if policy_plotted {
        policy_section(&mut md, before, after, true);
    }
    if !report.online_rounds.is_empty() {
        online_section(&mut md, &report.online_rounds);
    }
    if !report.stage_seconds.is_empty() {
        timings_section(&mut md, &report.stage_seconds);
    }
    if !report.notes.is_empty() {
        md.push_str("## Notes\n\n");
        for note in &report.notes {
            let _ = writeln!(md, "- {note}");
        }
    }
    for (name, image) in &images {
        save_png(image, dir, name)?;
    }
    let path = dir.join("report.md");
    std::fs::create_dir_all(dir).map_err(|e| Error::Checkpoint(format!("cannot create {}: {e}", dir.display())))?;
    std::fs::write(&path, md).map_err(|e| Error::Checkpoint(format!("cannot write {}: {e}", path.display())))?;
    Ok(path)
}
