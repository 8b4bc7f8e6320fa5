//! A judge on a pairwise benchmark file (JSONL, one pair a line), from both orders (one-pass verdicts, or reasoned
//! judgments: [`BenchOptions::reasoned`]), with the papers' metrics: GenAI-Bench / VideoGen-RewardBench `tau` and
//! `diff` for generation tasks, VL-RewardBench general / hallucination / reasoning accuracy with overall and macro
//! average for understanding tasks, plus position consistency and the expected calibration error of the debiased
//! verdict probabilities (see [`super::metrics`]).
//!
//! A line: `{"task": "image-generation", "caption": "…", "candidates": ["a.png", "b.png"], "label": "A"}` for
//! generation tasks (candidates: media paths), `{"task": "image-understanding", "question": "…", "media": "x.png",
//! "candidates": ["response 1", "response 2"], "label": "B", "subset": "povid"}` for understanding tasks; `label` is
//! `A`, `B` or `tie`; paths are relative to the media folder.
//!
//! With an output file, every pair's result ([`PairResult`], one JSON line) is appended as its batch finishes
//! (flushed to disk); a resumed run continues after the last complete batch of a run with the same batch size, and
//! the metrics are those of the whole file — read back from it, so that a resumed run reports what an uninterrupted
//! one does. `unireward eval` is this module behind a command line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use super::answer::Verdict;
use super::metrics::{
    expected_calibration_error, pairwise_accuracy, position_consistency, swapped, vl_reward_bench_accuracy, VlCategory,
    DEFAULT_CALIBRATION_BINS,
};
use super::{Candidate, Context, GenerationConfig, Judge, JudgeRequest, MediaFile, Mode, Task};
use crate::pipeline::append::{read_complete_lines, JsonlAppender};
use crate::{Error, Result};

/// Bounds the benchmark file and a results file read into memory.
pub const MAX_BENCH_BYTES: u64 = 256 << 20;

/// One line of the file, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    task: String,
    #[serde(default)]
    caption: Option<String>,
    #[serde(default)]
    question: Option<String>,
    #[serde(default)]
    media: Option<String>,
    candidates: Vec<String>,
    label: String,
    #[serde(default)]
    subset: Option<String>,
}

/// One benchmark pair, checked: the judge's request (media paths resolved against the media folder), its ground
/// truth and its VL-RewardBench subset (a known one).
#[derive(Clone, Debug, PartialEq)]
pub struct BenchPair {
    pub request: JudgeRequest,
    pub truth: Verdict,
    pub subset: Option<String>,
}

fn invalid(message: String) -> Error {
    Error::InvalidArgument(message)
}

fn pair(line: Line, folder: &Path) -> Result<BenchPair> {
    let task: Task = line.task.parse()?;
    let generation = matches!(task, Task::ImageGeneration | Task::VideoGeneration);
    let media = |p: &str| {
        let path = folder.join(p);
        if matches!(task, Task::ImageGeneration | Task::ImageUnderstanding) {
            MediaFile::Image(path)
        } else {
            MediaFile::Video(path)
        }
    };
    if line.candidates.len() != 2 {
        return Err(invalid(format!("`candidates` has {} entries; a pair has 2", line.candidates.len())));
    }
    let (name, value) = if generation { ("caption", &line.caption) } else { ("question", &line.question) };
    let value = value.as_ref().ok_or_else(|| invalid(format!("`{name}` is missing ({task} needs it)")))?;
    let mut context = Context::with_field(name, value);
    let candidates = if generation {
        if line.media.is_some() {
            return Err(invalid(format!("`media` is for understanding tasks; {task} judges the candidates")));
        }
        line.candidates.iter().map(|c| Candidate::Media(media(c))).collect()
    } else {
        let asked = line
            .media
            .as_deref()
            .ok_or_else(|| invalid("`media` is missing (the image or video asked about)".into()))?;
        context.media = vec![media(asked)];
        line.candidates.iter().map(|c| Candidate::Text(c.clone())).collect()
    };
    if let Some(subset) = &line.subset {
        VlCategory::from_subset(subset)?;
    }
    Ok(BenchPair {
        request: JudgeRequest { task, mode: Mode::Pairwise, context, candidates },
        truth: parse_label(&line.label)?,
        subset: line.subset,
    })
}

/// Reads and checks every line of the benchmark file `path` (blank lines skipped); media paths are relative to
/// `media_folder`. The first bad line is an error naming its line and field.
pub fn read_bench_file(path: &Path, media_folder: &Path) -> Result<Vec<BenchPair>> {
    let text = crate::model::files::read_text(path, MAX_BENCH_BYTES)?;
    let at = |i: usize, e: String| invalid(format!("{} line {}: {e}", path.display(), i + 1));
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let line: Line = serde_json::from_str(l).map_err(|e| at(i, e.to_string()))?;
            pair(line, media_folder).map_err(|e| match e {
                Error::InvalidArgument(m) => at(i, m),
                other => other,
            })
        })
        .collect()
}

/// How a benchmark is judged.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchOptions {
    /// Pairs judged per batch (at least 1). Batches start at multiples of it, whatever a resumed run starts from.
    pub batch: usize,
    /// Where every pair's result is appended (JSONL, a line a pair, flushed batch by batch); `None`: kept in memory.
    pub out: Option<PathBuf>,
    /// Continue the run whose `out` this is, after its last complete batch; the run must have used the same batch
    /// size (the batches then hold the same pairs and the file the same bytes as an uninterrupted run's).
    pub resume: bool,
    /// Reasoned judgments (each order's answer generated, then its verdict read: [`Judge::reasoned_both_orders`],
    /// one pair at a time) with this generation; `None`: one-pass verdicts, batched. A judge trained to reason
    /// before its verdict is only measured this way.
    pub reasoned: Option<GenerationConfig>,
}

impl BenchOptions {
    /// Refuses a batch of 0 and a resume without an output file, naming the CLI's flags.
    pub fn validate(&self) -> Result<()> {
        if self.batch == 0 {
            return Err(invalid("--batch must be at least 1".into()));
        }
        if self.resume && self.out.is_none() {
            return Err(invalid("--resume continues an output file: give --out".into()));
        }
        Ok(())
    }
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions { batch: 8, out: None, resume: false, reasoned: None }
    }
}

/// One judged pair, as written to the results file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairResult {
    /// The pair's position among the benchmark file's pairs, from 0.
    pub index: usize,
    /// The batch size of the run that judged it (a resumed run must use the same).
    pub batch: usize,
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
    /// Judged with reasoning of at most this many generated tokens (absent: one-pass).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoned_max_new_tokens: Option<usize>,
}

impl PairResult {
    /// The result's line in the results file, with its newline.
    pub fn line(&self) -> String {
        serde_json::to_string(self).expect("results serialize") + "\n"
    }

    /// The result as `unireward eval --json` prints it: the verdict, its probabilities and whether the two orders
    /// agree.
    pub fn to_json(&self) -> Result<serde_json::Value> {
        let p = parse(self)?;
        Ok(serde_json::json!({
            "verdict": self.verdict, "probs": self.probs, "position_consistent": p.forward == swapped(p.swapped),
        }))
    }
}

/// The metrics of a list of results, named as the papers name them: `{task}.pairs`, `{task}.tau` and `{task}.diff`
/// (generation tasks), `{task}.accuracy` (understanding tasks), `vl_reward_bench.{general, hallucination,
/// reasoning, overall, macro}` (pairs with a subset), `position_consistency`, `ece`. A rate over no pairs is `null`.
/// Serialized as the flat, key-sorted object `unireward eval --json` prints under `"summary"`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BenchSummary {
    pub metrics: BTreeMap<String, serde_json::Value>,
}

impl BenchSummary {
    /// A metric's value (`None` when absent or `null`).
    pub fn get(&self, key: &str) -> Option<f64> {
        self.metrics.get(key).and_then(serde_json::Value::as_f64)
    }

    /// The accuracy the papers report first for `task`: `tau` for generation tasks, `accuracy` for understanding.
    pub fn task_accuracy(&self, task: Task) -> Option<f64> {
        let key = if matches!(task, Task::ImageGeneration | Task::VideoGeneration) { "tau" } else { "accuracy" };
        self.get(&format!("{task}.{key}"))
    }
}

/// A benchmark run's results, in pair order, and their metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchOutcome {
    /// Every pair judged so far (an interrupted run: the batches finished, a resumed one's included).
    pub results: Vec<PairResult>,
    pub summary: BenchSummary,
    /// Stopped by the stop flag before the last batch.
    pub interrupted: bool,
}

/// A verdict's name in the results: `A`, `B` or `tie`.
pub fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::First => "A",
        Verdict::Second => "B",
        Verdict::Tie => "tie",
    }
}

/// A label of the benchmark file (`A`, `B`, `tie`; `a`, `b`, `Tie` too).
pub fn parse_label(label: &str) -> Result<Verdict> {
    match label.trim() {
        "A" | "a" => Ok(Verdict::First),
        "B" | "b" => Ok(Verdict::Second),
        "tie" | "Tie" => Ok(Verdict::Tie),
        other => Err(invalid(format!("`label` is {other:?}; expected A, B or tie"))),
    }
}

fn most_probable(p: [f32; 3]) -> Verdict {
    let best = (0..3).fold(0, |best, i| if p[i] > p[best] { i } else { best });
    [Verdict::First, Verdict::Second, Verdict::Tie][best]
}

/// Judges `pairs` in batches of `options.batch` (both orders; one-pass, or reasoned per `options.reasoned`),
/// appending each batch's results to `options.out` when given. The options and a resumed file are checked before
/// anything is judged or written. `stop` is read before each batch; `on_progress(done, total)` follows each. The
/// summary is that of every result (read back from `out` when given).
pub fn evaluate_bench(
    judge: &Judge,
    pairs: &[BenchPair],
    options: &BenchOptions,
    stop: &AtomicBool,
    mut on_progress: impl FnMut(usize, usize),
) -> Result<BenchOutcome> {
    options.validate()?;
    if pairs.is_empty() {
        return Err(invalid("the benchmark holds no pairs".into()));
    }
    let (mut output, mut results) = match &options.out {
        None => (None, Vec::new()),
        Some(out) if options.resume => {
            // Checked before the file is cut back to whole batches: another run's lines are never removed.
            let judged = read_results(&read_complete_lines(out, MAX_BENCH_BYTES)?, out)?;
            check_resumed(out, &judged, pairs, options)?;
            let (output, lines) = JsonlAppender::resume(out, options.batch, MAX_BENCH_BYTES)?;
            (Some(output), read_results(&lines, out)?)
        }
        Some(out) => (Some(JsonlAppender::create(out)?), Vec::new()),
    };
    let mut interrupted = false;
    for (chunk_index, chunk) in pairs.chunks(options.batch).enumerate().skip(results.len() / options.batch) {
        if stop.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }
        let judged = match &options.reasoned {
            None => judge.judge_many(&chunk.iter().map(|p| p.request.clone()).collect::<Vec<_>>())?.results,
            Some(cfg) => chunk.iter().map(|p| judge.reasoned_both_orders(&p.request, cfg)).collect::<Result<_>>()?,
        };
        let mut lines = String::new();
        for (i, (pair, result)) in chunk.iter().zip(judged).enumerate() {
            let verdict = result.pair.ok_or_else(|| invalid("a pairwise result holds both orders".into()))?;
            // The swapped order's own verdict, in its positions (its "first" is candidate B).
            let [a, b, tie] = verdict.swapped;
            let judged = PairResult {
                index: chunk_index * options.batch + i,
                batch: options.batch,
                task: pair.request.task.name().into(),
                label: verdict_name(pair.truth).into(),
                subset: pair.subset.clone(),
                verdict: verdict_name(verdict.verdict).into(),
                probs: verdict.debiased.map(f64::from),
                forward: verdict_name(most_probable(verdict.forward)).into(),
                swapped: verdict_name(most_probable([b, a, tie])).into(),
                reasoned_max_new_tokens: options.reasoned.as_ref().map(|cfg| cfg.max_new_tokens),
            };
            lines += &judged.line();
            results.push(judged);
        }
        if let Some(output) = &mut output {
            output.append(&lines)?;
        }
        on_progress(results.len(), pairs.len());
    }
    if let (Some(out), Some(output)) = (&options.out, output) {
        drop(output);
        results = read_results(&read_complete_lines(out, MAX_BENCH_BYTES)?, out)?;
    }
    let summary = summarize(&results)?;
    Ok(BenchOutcome { results, summary, interrupted })
}

/// Refuses to continue an output that is not this benchmark's first pairs, or was judged in other batches.
fn check_resumed(out: &Path, results: &[PairResult], pairs: &[BenchPair], options: &BenchOptions) -> Result<()> {
    let batch = options.batch;
    let reasoned = options.reasoned.as_ref().map(|cfg| cfg.max_new_tokens);
    if results.len() > pairs.len() {
        return Err(invalid(format!(
            "--resume: {} has {} pairs, the benchmark {}: another run's output",
            out.display(),
            results.len(),
            pairs.len()
        )));
    }
    for (i, (r, pair)) in results.iter().zip(pairs).enumerate() {
        if r.batch != batch {
            return Err(invalid(format!(
                "--resume: {} line {} was judged with --batch {}, this run has --batch {batch}: resume with \
                 --batch {} (other batches would judge, and write, other bytes)",
                out.display(),
                i + 1,
                r.batch,
                r.batch
            )));
        }
        if r.reasoned_max_new_tokens != reasoned {
            let how =
                |m: Option<usize>| m.map_or("one-pass".to_string(), |m| format!("reasoned (--max-new-tokens {m})"));
            return Err(invalid(format!(
                "--resume: {} line {} was judged {}, this run {}: resume it as it was judged",
                out.display(),
                i + 1,
                how(r.reasoned_max_new_tokens),
                how(reasoned)
            )));
        }
        let same = r.index == i && r.task == pair.request.task.name() && r.label == verdict_name(pair.truth);
        if !same || r.subset != pair.subset {
            return Err(invalid(format!(
                "--resume: {} line {} is not pair {i} of the benchmark: another run's output",
                out.display(),
                i + 1
            )));
        }
    }
    Ok(())
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

fn parse(r: &PairResult) -> Result<Parsed> {
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

/// The results of a results file's `lines`, naming `path` and the line of a bad one.
pub fn read_results(lines: &[String], path: &Path) -> Result<Vec<PairResult>> {
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| invalid(format!("{} line {}: {e}", path.display(), i + 1))))
        .collect()
}

/// The metrics of `results` ([`BenchSummary`]).
pub fn summarize(results: &[PairResult]) -> Result<BenchSummary> {
    let parsed: Vec<Parsed> = results.iter().map(parse).collect::<Result<_>>()?;
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
    Ok(BenchSummary { metrics: out })
}
