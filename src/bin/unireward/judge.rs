//! `unireward judge`: one judgment with a UnifiedReward checkpoint — a pair (which is better, from both orders) or a
//! single candidate (its score) — one-pass by default, or reasoned (the answer generated, parsed, and the verdict's
//! probabilities given the reasoning). Generation tasks take media files as candidates, understanding tasks take
//! response texts about `--image` / `--video`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use unireward::judge::answer::{Judgment, Verdict};
use unireward::judge::{
    Candidate, Context, GenerationConfig, Judge, JudgeRequest, JudgeResult, MediaFile, Mode, Task, TaskTemplate,
};
use unireward::{DType, Device};

#[derive(clap::Args)]
pub struct Args {
    /// The checkpoint directory: config.json, safetensors weights, tokenizer.json (and preprocessor_config.json).
    #[arg(long)]
    model: PathBuf,
    /// image-generation, image-understanding, video-generation or video-understanding.
    #[arg(long, value_parser = parse_task)]
    task: Task,
    /// Pairwise: the two candidates (media files for generation tasks, response texts for understanding tasks).
    #[arg(long, num_args = 2, value_names = ["A", "B"], conflicts_with = "point", required_unless_present = "point")]
    pair: Vec<String>,
    /// Pointwise: the one candidate.
    #[arg(long)]
    point: Option<String>,
    /// The caption (generation tasks).
    #[arg(long)]
    caption: Option<String>,
    /// The question (understanding tasks).
    #[arg(long)]
    question: Option<String>,
    /// The image the question is about (image understanding).
    #[arg(long)]
    image: Vec<PathBuf>,
    /// The video the question is about (video understanding): a folder of frames or an animated GIF.
    #[arg(long)]
    video: Vec<PathBuf>,
    /// Generate the answer text and parse it, then read the verdict's probabilities given the reasoning.
    #[arg(long)]
    reasoned: bool,
    /// Reasoned: tokens to generate at most.
    #[arg(long, default_value_t = 512)]
    max_new_tokens: usize,
    /// A template file replacing the built-in one of this task and mode (the schema of templates/*.json).
    #[arg(long)]
    template: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = crate::parse_device)]
    device: Device,
    /// The compute dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32", value_parser = crate::parse_float_dtype)]
    dtype: DType,
}

fn parse_task(s: &str) -> Result<Task, String> {
    s.parse().map_err(|e: unireward::Error| e.to_string())
}

/// The request the arguments describe.
fn request(args: &Args) -> anyhow::Result<JudgeRequest> {
    let generation = matches!(args.task, Task::ImageGeneration | Task::VideoGeneration);
    let (mode, given) = match &args.point {
        Some(p) => (Mode::Pointwise, vec![p.clone()]),
        None => (Mode::Pairwise, args.pair.clone()),
    };
    let candidates = given
        .into_iter()
        .map(|c| match (generation, args.task) {
            (true, Task::ImageGeneration) => Candidate::Media(MediaFile::Image(c.into())),
            (true, _) => Candidate::Media(MediaFile::Video(c.into())),
            (false, _) => Candidate::Text(c),
        })
        .collect();
    let mut fields = BTreeMap::new();
    for (name, value, flag) in [("caption", &args.caption, "--caption"), ("question", &args.question, "--question")] {
        let Some(value) = value else { continue };
        let wanted = if generation { "caption" } else { "question" };
        anyhow::ensure!(name == wanted, "{flag} does not apply to {} (it takes --{wanted})", args.task);
        fields.insert(name.to_string(), value.clone());
    }
    let media = args
        .image
        .iter()
        .map(|p| MediaFile::Image(p.clone()))
        .chain(args.video.iter().map(|p| MediaFile::Video(p.clone())))
        .collect();
    Ok(JudgeRequest { task: args.task, mode, context: Context { fields, media }, candidates })
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let request = request(args)?;
    let mut judge = Judge::load(&args.model, args.dtype, args.device)
        .with_context(|| format!("loading the judge in {}", args.model.display()))?;
    if let Some(path) = &args.template {
        let template = TaskTemplate::from_file(path)?;
        anyhow::ensure!(
            (template.task, template.mode) == (request.task, request.mode),
            "--template {} is a {}.{} template, this judgment is {}.{}",
            path.display(),
            template.task,
            template.mode,
            request.task,
            request.mode
        );
        judge.set_template(template);
    }
    let result = if args.reasoned {
        let cfg = GenerationConfig { max_new_tokens: args.max_new_tokens, ..Default::default() };
        judge.reasoned(&request, &cfg)?
    } else {
        judge.judge_many(std::slice::from_ref(&request))?.results.remove(0)
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&result))?);
    } else {
        print_table(&result);
    }
    Ok(())
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::First => "A",
        Verdict::Second => "B",
        Verdict::Tie => "tie",
    }
}

/// The result as JSON (every number as computed).
pub fn to_json(r: &JudgeResult) -> serde_json::Value {
    let mut out = serde_json::json!({
        "task": r.task.name(),
        "mode": r.mode.name(),
        "labels": r.labels,
        "probs": r.probs,
        "prompt_tokens": r.prompt_tokens,
        "seconds": r.seconds,
    });
    if let Some(v) = r.verdict {
        out["verdict"] = verdict_name(v).into();
    }
    if let Some(p) = &r.pair {
        out["forward"] = serde_json::json!(p.forward);
        out["swapped"] = serde_json::json!(p.swapped);
        out["position_consistent"] = p.position_consistent.into();
    }
    if let Some(s) = r.score {
        out["score"] = s.into();
    }
    if let Some(s) = r.argmax_score {
        out["argmax_score"] = s.into();
    }
    if let Some(reasoning) = &r.reasoning {
        out["answer"] = reasoning.text.clone().into();
        out["generated_tokens"] = reasoning.generated_tokens.into();
        match &reasoning.parsed {
            Ok(Judgment::Verdict(v)) => out["parsed_verdict"] = verdict_name(*v).into(),
            Ok(Judgment::Score(s)) => out["parsed_score"] = (*s).into(),
            Err(e) => out["parse_error"] = e.to_string().into(),
        }
    }
    out
}

fn print_table(r: &JudgeResult) {
    println!("{} {} ({} prompt tokens, {:.3} s)", r.task, r.mode, r.prompt_tokens, r.seconds);
    if let Some(p) = &r.pair {
        println!("{:<8} {:>9} {:>9} {:>9}", "", "A better", "B better", "tie");
        for (name, probs) in [("A first", p.forward), ("B first", p.swapped), ("debiased", p.debiased)] {
            println!("{name:<8} {:>9.4} {:>9.4} {:>9.4}", probs[0], probs[1], probs[2]);
        }
        println!("position consistent: {}", if p.position_consistent { "yes" } else { "no" });
    } else if r.score.is_none() {
        for (label, p) in r.labels.iter().zip(&r.probs) {
            println!("{p:>9.4}  {label}");
        }
    }
    if let Some(v) = r.verdict {
        println!("verdict: {}", verdict_name(v));
    }
    if let (Some(score), Some(argmax)) = (r.score, r.argmax_score) {
        println!("score: {score:.3} expected, {argmax} most probable");
    }
    if let Some(reasoning) = &r.reasoning {
        println!("answer ({} tokens): {}", reasoning.generated_tokens, reasoning.text);
        match &reasoning.parsed {
            Ok(Judgment::Verdict(v)) => println!("parsed verdict: {}", verdict_name(*v)),
            Ok(Judgment::Score(s)) => println!("parsed score: {s}"),
            Err(e) => println!("parsed: {e}"),
        }
    }
}
