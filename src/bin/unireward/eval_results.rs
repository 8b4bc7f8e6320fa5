//! `unireward eval`'s per-pair results: one JSON line per benchmark record (its task, label and subset, and the
//! judge's verdict, debiased probabilities and both orders' own verdicts), written to `--out` as judged, and the
//! papers' metrics computed from a whole list of them — read back from the file, so that a resumed run reports what
//! an uninterrupted one does.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use unireward::judge::answer::Verdict;
use unireward::judge::metrics::{
    expected_calibration_error, pairwise_accuracy, position_consistency, swapped, vl_reward_bench_accuracy, VlCategory,
    DEFAULT_CALIBRATION_BINS,
};
use unireward::judge::Task;

/// One judged pair, as written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairResult {
    /// The record's position among the benchmark file's records, from 0.
    pub index: usize,
    pub task: String,
    /// The ground truth: `A`, `B` or `tie`.
    pub label: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// The debiased verdict and its `[A, B, tie]` probabilities.
    pub verdict: String,
    pub probs: [f64; 3],
    /// The most probable verdict of each order, in the pair's own positions.
    pub forward: String,
    pub swapped: String,
}

impl PairResult {
    pub fn line(&self) -> String {
        serde_json::to_string(self).expect("results serialize") + "\n"
    }
}

pub fn name(v: Verdict) -> &'static str {
    match v {
        Verdict::First => "A",
        Verdict::Second => "B",
        Verdict::Tie => "tie",
    }
}

pub fn parse_label(label: &str) -> anyhow::Result<Verdict> {
    match label.trim() {
        "A" | "a" => Ok(Verdict::First),
        "B" | "b" => Ok(Verdict::Second),
        "tie" | "Tie" => Ok(Verdict::Tie),
        other => anyhow::bail!("`label` is {other:?}; expected A, B or tie"),
    }
}

/// A result with its names parsed.
struct Parsed {
    task: Task,
    truth: Verdict,
    category: Option<VlCategory>,
    verdict: Verdict,
    probs: [f64; 3],
    forward: Verdict,
    swapped: Verdict,
}

fn parse(r: &PairResult) -> anyhow::Result<Parsed> {
    Ok(Parsed {
        task: r.task.parse()?,
        truth: parse_label(&r.label)?,
        category: r.subset.as_deref().map(VlCategory::from_subset).transpose()?,
        verdict: parse_label(&r.verdict)?,
        probs: r.probs,
        forward: parse_label(&r.forward)?,
        swapped: parse_label(&r.swapped)?,
    })
}

/// The results of a `--out` file, line by line.
pub fn read_results(lines: &[String], path: &Path) -> anyhow::Result<Vec<PairResult>> {
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("--out {} line {}", path.display(), i + 1)))
        .collect()
}

/// A result as `--json` prints it: the verdict, its probabilities and whether the two orders agree.
pub fn pair_json(r: &PairResult) -> anyhow::Result<serde_json::Value> {
    let p = parse(r)?;
    Ok(
        serde_json::json!({"verdict": r.verdict, "probs": r.probs, "position_consistent": p.forward == swapped(p.swapped)}),
    )
}

/// The metrics, named as the papers name them (`{task}.tau`, `vl_reward_bench.macro`, …).
pub fn summarize(results: &[PairResult]) -> anyhow::Result<serde_json::Value> {
    let parsed: Vec<Parsed> = results.iter().map(parse).collect::<anyhow::Result<_>>()?;
    let mut out = BTreeMap::new();
    let mut by_task: BTreeMap<Task, Vec<(Verdict, Option<Verdict>)>> = BTreeMap::new();
    let mut vl = Vec::new();
    for r in &parsed {
        by_task.entry(r.task).or_default().push((r.truth, Some(r.verdict)));
        if let Some(category) = r.category {
            vl.push((category, r.truth, Some(r.verdict)));
        }
    }
    for (task, list) in &by_task {
        let acc = pairwise_accuracy(list);
        out.insert(format!("{task}.pairs"), serde_json::json!(acc.total));
        if matches!(task, Task::ImageGeneration | Task::VideoGeneration) {
            out.insert(format!("{task}.tau"), serde_json::json!(acc.tau));
            out.insert(format!("{task}.diff"), serde_json::json!(acc.diff));
        } else {
            out.insert(format!("{task}.accuracy"), serde_json::json!(acc.tau));
        }
    }
    if !vl.is_empty() {
        let acc = vl_reward_bench_accuracy(&vl);
        for (category, a) in VlCategory::ALL.iter().zip(&acc.categories) {
            out.insert(format!("vl_reward_bench.{}", category.name()), serde_json::json!(a.accuracy));
        }
        out.insert("vl_reward_bench.overall".into(), serde_json::json!(acc.overall.accuracy));
        out.insert("vl_reward_bench.macro".into(), serde_json::json!(acc.macro_average));
    }
    let orders: Vec<_> = parsed.iter().map(|r| (Some(r.forward), Some(r.swapped))).collect();
    out.insert("position_consistency".into(), serde_json::json!(position_consistency(&orders).accuracy));
    let calibration: Vec<_> = parsed.iter().map(|r| (r.probs, r.truth)).collect();
    let ece = expected_calibration_error(&calibration, DEFAULT_CALIBRATION_BINS)?.ece;
    out.insert("ece".into(), serde_json::json!(ece));
    Ok(serde_json::json!(out))
}
