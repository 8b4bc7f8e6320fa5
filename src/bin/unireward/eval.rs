//! `unireward eval`: a judge on a pairwise benchmark file (JSONL, one pair a line), one-pass from both orders, with
//! the papers' metrics: GenAI-Bench / VideoGen-RewardBench `tau` and `diff` for generation tasks, VL-RewardBench
//! general / hallucination / reasoning accuracy with overall and macro average for understanding tasks, plus position
//! consistency and the expected calibration error of the debiased verdict probabilities.
//!
//! A line: `{"task": "image-generation", "caption": "…", "candidates": ["a.png", "b.png"], "label": "A"}` for
//! generation tasks (candidates: media paths), `{"task": "image-understanding", "question": "…", "media": "x.png",
//! "candidates": ["response 1", "response 2"], "label": "B", "subset": "povid"}` for understanding tasks; `label` is
//! `A`, `B` or `tie`; paths are relative to the file's folder.
//!
//! With `--out`, every pair's result is appended to a JSONL file as its batch finishes (flushed to disk), `--resume`
//! continues after the last complete batch, and the metrics are those of the whole file.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;
use unireward::judge::answer::Verdict;
use unireward::judge::metrics::VlCategory;
use unireward::judge::{Candidate, Context, Judge, JudgeRequest, MediaFile, Mode, Task};
use unireward::pipeline::append::JsonlAppender;
use unireward::{DType, Device};

use crate::eval_results::{name, pair_json, parse_label, read_results, summarize, PairResult};
use crate::progress::Progress;

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
    /// Where every pair's result goes (JSONL, a line a pair, flushed batch by batch); the metrics are the file's.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run whose --out this is, after its last complete batch (use the same --batch: the batches then
    /// hold the same pairs and the file the same bytes as an uninterrupted run's).
    #[arg(long, requires = "out")]
    resume: bool,
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

/// A parsed line: the request, its ground truth and VL-RewardBench subset (its category checked).
struct Record {
    request: JudgeRequest,
    truth: Verdict,
    subset: Option<String>,
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
    if let Some(subset) = &line.subset {
        VlCategory::from_subset(subset)?;
    }
    Ok(Record {
        request: JudgeRequest { task, mode: Mode::Pairwise, context, candidates },
        truth: parse_label(&line.label)?,
        subset: line.subset,
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

fn most_probable(p: [f32; 3]) -> Verdict {
    let best = (0..3).fold(0, |best, i| if p[i] > p[best] { i } else { best });
    [Verdict::First, Verdict::Second, Verdict::Tie][best]
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
    let records = read_records(&args.data)?;
    anyhow::ensure!(!records.is_empty(), "--data {} holds no pairs", args.data.display());
    let (mut output, mut results) = match &args.out {
        None => (None, Vec::new()),
        Some(out) if args.resume => {
            let (output, lines) = JsonlAppender::resume(out, args.batch, MAX_DATA_BYTES)?;
            let results = read_results(&lines, out)?;
            check_resumed(out, &results, &records)?;
            (Some(output), results)
        }
        Some(out) => (Some(JsonlAppender::create(out)?), Vec::new()),
    };
    let judge = Judge::load(&args.model, args.dtype, args.device)
        .with_context(|| format!("loading the judge in {}", args.model.display()))?;
    let progress = Progress::new("pairs", args.batch)?;
    // Batches start at multiples of --batch, wherever a resumed run starts.
    for (chunk_index, chunk) in records.chunks(args.batch).enumerate().skip(results.len() / args.batch) {
        let requests: Vec<JudgeRequest> = chunk.iter().map(|r| r.request.clone()).collect();
        let batch = judge.judge_many(&requests)?;
        let mut lines = String::new();
        for (i, (record, result)) in chunk.iter().zip(batch.results).enumerate() {
            let pair = result.pair.context("a pairwise result holds both orders")?;
            // The swapped order's own verdict, in its positions (its "first" is candidate B).
            let [a, b, tie] = pair.swapped;
            let judged = PairResult {
                index: chunk_index * args.batch + i,
                task: record.request.task.name().into(),
                label: name(record.truth).into(),
                subset: record.subset.clone(),
                verdict: name(pair.verdict).into(),
                probs: pair.debiased.map(f64::from),
                forward: name(most_probable(pair.forward)).into(),
                swapped: name(most_probable([b, a, tie])).into(),
            };
            lines += &judged.line();
            results.push(judged);
        }
        if let Some(output) = &mut output {
            output.append(&lines)?;
        }
        progress.update(results.len(), records.len(), "");
    }
    progress.finish();
    if let Some(out) = &args.out {
        drop(output);
        let (_, lines) = JsonlAppender::resume(out, 1, MAX_DATA_BYTES)?;
        results = read_results(&lines, out)?;
    }
    let summary = summarize(&results)?;
    if args.json {
        let pairs: Vec<_> = results.iter().map(pair_json).collect::<anyhow::Result<_>>()?;
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"pairs": pairs, "summary": summary}))?);
    } else {
        println!("| metric | value |\n| --- | ---: |");
        for (k, v) in summary.as_object().into_iter().flatten() {
            println!("| {k} | {v} |");
        }
    }
    Ok(())
}

/// Refuses to continue an output that is not this benchmark file's first pairs.
fn check_resumed(out: &Path, results: &[PairResult], records: &[Record]) -> anyhow::Result<()> {
    anyhow::ensure!(
        results.len() <= records.len(),
        "--resume: {} has {} pairs, --data {}: another run's output",
        out.display(),
        results.len(),
        records.len()
    );
    for (i, (r, record)) in results.iter().zip(records).enumerate() {
        let same = r.index == i && r.task == record.request.task.name() && r.label == name(record.truth);
        anyhow::ensure!(
            same && r.subset == record.subset,
            "--resume: {} line {} is not pair {i} of --data: another run's output",
            out.display(),
            i + 1
        );
    }
    Ok(())
}
