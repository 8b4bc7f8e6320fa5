//! `unireward eval`: a judge on a pairwise benchmark file (JSONL, one pair a line), one-pass from both orders, with
//! the papers' metrics: GenAI-Bench / VideoGen-RewardBench `tau` and `diff` for generation tasks, VL-RewardBench
//! general / hallucination / reasoning accuracy with overall and macro average for understanding tasks, plus position
//! consistency and the expected calibration error of the debiased verdict probabilities.
//!
//! A line: `{"task": "image-generation", "caption": "…", "candidates": ["a.png", "b.png"], "label": "A"}` for
//! generation tasks (candidates: media paths), `{"task": "image-understanding", "question": "…", "media": "x.png",
//! "candidates": ["response 1", "response 2"], "label": "B", "subset": "povid"}` for understanding tasks; `label` is
//! `A`, `B` or `tie`; paths are relative to the file's folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;
use unireward::judge::answer::Verdict;
use unireward::judge::metrics::{
    expected_calibration_error, pairwise_accuracy, position_consistency, vl_reward_bench_accuracy, VlCategory,
    DEFAULT_CALIBRATION_BINS,
};
use unireward::judge::{Candidate, Context, Judge, JudgeRequest, MediaFile, Mode, Task};
use unireward::{DType, Device};

/// Bounds the benchmark file read into memory.
const MAX_DATA_BYTES: u64 = 256 << 20;

#[derive(clap::Args)]
pub struct Args {
    /// The checkpoint directory.
    #[arg(long)]
    model: PathBuf,
    /// The benchmark file (JSONL).
    #[arg(long)]
    data: PathBuf,
    /// Pairs judged per batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Print every pair's result and the summary as JSON.
    #[arg(long)]
    json: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = crate::parse_device)]
    device: Device,
    /// The compute dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32", value_parser = crate::parse_float_dtype)]
    dtype: DType,
}

/// One line of the file.
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

/// A parsed line: the request, its ground truth and VL-RewardBench category.
struct Record {
    request: JudgeRequest,
    truth: Verdict,
    category: Option<VlCategory>,
}

fn parse_label(label: &str) -> anyhow::Result<Verdict> {
    match label.trim() {
        "A" | "a" => Ok(Verdict::First),
        "B" | "b" => Ok(Verdict::Second),
        "tie" | "Tie" => Ok(Verdict::Tie),
        other => anyhow::bail!("`label` is {other:?}; expected A, B or tie"),
    }
}

fn record(line: Line, folder: &Path) -> anyhow::Result<Record> {
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
    anyhow::ensure!(line.candidates.len() == 2, "`candidates` has {} entries; a pair has 2", line.candidates.len());
    let (name, value) = if generation { ("caption", &line.caption) } else { ("question", &line.question) };
    let value = value.as_ref().with_context(|| format!("`{name}` is missing ({} needs it)", task))?;
    let mut context = Context::with_field(name, value);
    let candidates = if generation {
        anyhow::ensure!(line.media.is_none(), "`media` is for understanding tasks; {task} judges the candidates");
        line.candidates.iter().map(|c| Candidate::Media(media(c))).collect()
    } else {
        context.media =
            vec![media(line.media.as_deref().context("`media` is missing (the image or video asked about)")?)];
        line.candidates.iter().map(|c| Candidate::Text(c.clone())).collect()
    };
    let category = line.subset.as_deref().map(VlCategory::from_subset).transpose()?;
    Ok(Record {
        request: JudgeRequest { task, mode: Mode::Pairwise, context, candidates },
        truth: parse_label(&line.label)?,
        category,
    })
}

fn read_records(path: &Path) -> anyhow::Result<Vec<Record>> {
    let text = unireward::model::files::read_text(path, MAX_DATA_BYTES)?;
    let folder = path.parent().unwrap_or(Path::new("."));
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let line: Line = serde_json::from_str(l).with_context(|| format!("{} line {}", path.display(), i + 1))?;
            record(line, folder).with_context(|| format!("{} line {}", path.display(), i + 1))
        })
        .collect()
}

/// One judged pair.
struct Outcome {
    verdict: Verdict,
    probs: [f64; 3],
    forward: Verdict,
    swapped: Verdict,
}

fn most_probable(p: [f32; 3]) -> Verdict {
    let best = (0..3).fold(0, |best, i| if p[i] > p[best] { i } else { best });
    [Verdict::First, Verdict::Second, Verdict::Tie][best]
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
    let records = read_records(&args.data)?;
    anyhow::ensure!(!records.is_empty(), "--data {} holds no pairs", args.data.display());
    let judge = Judge::load(&args.model, args.dtype, args.device)
        .with_context(|| format!("loading the judge in {}", args.model.display()))?;
    let mut outcomes = Vec::with_capacity(records.len());
    for chunk in records.chunks(args.batch) {
        let requests: Vec<JudgeRequest> = chunk.iter().map(|r| r.request.clone()).collect();
        let batch = judge.judge_many(&requests)?;
        for result in batch.results {
            let pair = result.pair.context("a pairwise result holds both orders")?;
            // The swapped order's own verdict, in its positions (its "first" is candidate B).
            let [a, b, tie] = pair.swapped;
            outcomes.push(Outcome {
                verdict: pair.verdict,
                probs: pair.debiased.map(f64::from),
                forward: most_probable(pair.forward),
                swapped: most_probable([b, a, tie]),
            });
        }
        eprintln!("judged {}/{} pairs", outcomes.len(), records.len());
    }
    let summary = summarize(&records, &outcomes)?;
    if args.json {
        let pairs: Vec<_> = outcomes
            .iter()
            .map(|o| {
                serde_json::json!({"verdict": name(o.verdict), "probs": o.probs,
                "position_consistent": o.forward == unireward::judge::metrics::swapped(o.swapped)})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"pairs": pairs, "summary": summary}))?);
    } else {
        println!("| metric | value |\n| --- | ---: |");
        for (k, v) in summary.as_object().into_iter().flatten() {
            println!("| {k} | {v} |");
        }
    }
    Ok(())
}

fn name(v: Verdict) -> &'static str {
    match v {
        Verdict::First => "A",
        Verdict::Second => "B",
        Verdict::Tie => "tie",
    }
}

/// The metrics, named as the papers name them (`{task}.tau`, `vl_reward_bench.macro`, …).
fn summarize(records: &[Record], outcomes: &[Outcome]) -> anyhow::Result<serde_json::Value> {
    let mut out = BTreeMap::new();
    let mut by_task: BTreeMap<Task, Vec<(Verdict, Option<Verdict>)>> = BTreeMap::new();
    let mut vl = Vec::new();
    for (r, o) in records.iter().zip(outcomes) {
        by_task.entry(r.request.task).or_default().push((r.truth, Some(o.verdict)));
        if let Some(category) = r.category {
            vl.push((category, r.truth, Some(o.verdict)));
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
    let orders: Vec<_> = outcomes.iter().map(|o| (Some(o.forward), Some(o.swapped))).collect();
    out.insert("position_consistency".into(), serde_json::json!(position_consistency(&orders).accuracy));
    let calibration: Vec<_> = records.iter().zip(outcomes).map(|(r, o)| (o.probs, r.truth)).collect();
    let ece = expected_calibration_error(&calibration, DEFAULT_CALIBRATION_BINS)?.ece;
    out.insert("ece".into(), serde_json::json!(ece));
    Ok(serde_json::json!(out))
}
