//! `unireward demo`: the whole UnifiedReward pipeline on the procedural world, nothing to download — the world
//! drawn, a tiny LLaVA-OneVision base model pretrained on its described answers, a judge made from it trained
//! jointly on the four tasks (and, on the other half of the cores meanwhile, one judge per task for the
//! joint-versus-single comparison, then the two controls), a tiny policy made from it and fine-tuned, K samples per
//! prompt, the filter, DPO, and the policy's held-out accuracy before and after; a progress bar per stage, the
//! report and plots in `--out`. A second run continues (or skips) what the first finished. `--check` makes the
//! demo's claims its exit status.
//!
//! `unireward demo --kernels`: one DPO step's loss and gradient, fused against naive (the former demo).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::Context;
use unireward::judge::bench::BenchSummary;
use unireward::judge::Task;
use unireward::pipeline::demo::single_task::{evaluate_judge, single_task_judge};
use unireward::pipeline::demo::{
    dpo_on_random_pairs, pair_truth, pretrain_base, write_pipeline_config, DemoChecks, DemoConfig, PairTruth,
};
use unireward::pipeline::policy_eval::PolicyEvaluation;
use unireward::pipeline::runner::stages::{FILTER, JUDGE_EVAL, JUDGE_TRAIN, POLICY_EVAL_AFTER, POLICY_EVAL_BEFORE};
use unireward::pipeline::runner::{pairs_file, run_pipeline, PipelineConfig, RunOptions, StageEvent};
use unireward::pipeline::world::DemoFiles;
use unireward::train::run::latest_checkpoint;

use crate::demo_kernels;
use crate::pipeline::Bars;
use crate::progress::{say, Progress};

#[derive(clap::Args)]
pub struct Args {
    /// Run the kernel demo instead: one DPO step's loss and gradient, fused against naive.
    #[arg(long)]
    kernels: bool,
    #[command(flatten)]
    kernel: demo_kernels::KernelArgs,
    /// Where the world, the models, every stage's output and the report go (a second run continues there).
    #[arg(long, default_value = "unireward-demo", conflicts_with = "kernels")]
    out: PathBuf,
    /// Every stage on a handful of examples: the plumbing in seconds, not a judge that learned anything.
    #[arg(long, conflicts_with = "kernels")]
    smoke: bool,
    /// The world's and the models' seed.
    #[arg(long, default_value_t = 0, conflicts_with = "kernels")]
    seed: u64,
    /// Fail (exit status 1) unless the judge learned, the filter's pairs beat random pairs and DPO raised the
    /// policy's held-out preference accuracy.
    #[arg(long, conflicts_with = "kernels")]
    check: bool,
}

/// Set by Ctrl-C (or a failed stage): every stage stops after its current step, keeping what it finished.
static STOP: AtomicBool = AtomicBool::new(false);

pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.kernels {
        return demo_kernels::run(&args.kernel);
    }
    let started = Instant::now();
    let config = if args.smoke { DemoConfig::smoke(args.seed) } else { DemoConfig::full(args.seed) };
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating --out {}", args.out.display()))?;
    let out = args.out.canonicalize().with_context(|| format!("--out {}", args.out.display()))?;
    ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;

    say(&format!("world: drawing scenes, videos, captions and questions into {}", out.join("world").display()));
    let files = config.sizes.write(&out.join("world"), &config.model, config.seed)?;

    // The pipeline's half of the cores trains the base too: at the demo's sizes one thread per model runs faster
    // than two (BENCHMARKS.md).
    let (pipeline_threads, side_threads) = thread_pools()?;
    say("base: the tiny model pretrained on described answers, the judge's and the policy's start");
    let progress = Progress::new("steps", 100)?;
    let base = pipeline_threads.install(|| {
        pretrain_base(&config, &files, &out.join("base"), &STOP, |done, total| progress.update(done, total, ""))
    })?;
    progress.finish();
    let Some(base) = base else {
        println!("interrupted: run the demo again to continue");
        return Ok(());
    };
    let config_path = out.join("pipeline.toml");
    write_pipeline_config(&config.pipeline_config(&files, &base, &out.join("run"), &out), &config_path)?;
    let pipeline = PipelineConfig::from_file(&config_path)?;
    let stage_dir = |stage: &str| pipeline.out.join(stage);

    // The single-task judges need only the base: they train on their own threads while the pipeline runs, and
    // the two controls run there after them, each once the pipeline has finished the stage it reads.
    let mut bars = Bars::default();
    let (finished, finished_stages) = mpsc::channel::<String>();
    let (outcome, beside) = std::thread::scope(|scope| {
        let side = scope.spawn(|| {
            let (config, files, base, out, pipeline) = (&config, &files, &base, &out, &pipeline);
            let beside =
                side_threads.install(move || beside_the_pipeline(config, files, base, out, pipeline, &finished_stages));
            if beside.is_err() {
                // A judge or a control failed: the pipeline stops too, for the error to be told now.
                STOP.store(true, Ordering::SeqCst);
            }
            beside
        });
        let outcome = pipeline_threads.install(|| {
            run_pipeline(pipeline.clone(), &RunOptions::default(), &STOP, &mut |e: StageEvent<'_>| {
                if let StageEvent::Finished { stage, .. } | StageEvent::Skipped { stage } = &e {
                    // Nobody listens once the side thread has failed: nothing to tell then.
                    let _ = finished.send(stage.to_string());
                }
                bars.event(e)
            })
        });
        // No stage finishes any more: a control still waiting for one gives up.
        drop(finished);
        if outcome.is_err() {
            // The pipeline failed: the judges beside it stop too.
            STOP.store(true, Ordering::SeqCst);
        }
        let beside = side.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the thread beside the pipeline panicked")));
        (outcome, beside)
    });
    bars.clear();
    let (Some(report), Some(beside)) = (outcome?.report, beside?) else {
        println!("interrupted: run the demo again to continue");
        return Ok(());
    };
    let Beside { single, mismatched, random } = beside;
    // The pipeline finished every stage, so both controls ran beside it.
    let mismatched = mismatched.context("the judge-control did not run")?;
    let random = random.context("the policy-control did not run")?;

    let read = |path: PathBuf| -> anyhow::Result<String> {
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let joint: BenchSummary = serde_json::from_str(&read(stage_dir(JUDGE_EVAL).join("summary.json"))?)?;
    let base_judge: BenchSummary = serde_json::from_str(&read(stage_dir(JUDGE_EVAL).join("base-summary.json"))?)?;
    let before: PolicyEvaluation = serde_json::from_str(&read(stage_dir(POLICY_EVAL_BEFORE).join("evaluation.json"))?)?;
    let after: PolicyEvaluation = serde_json::from_str(&read(stage_dir(POLICY_EVAL_AFTER).join("evaluation.json"))?)?;
    let truth = pair_truth(&pairs_file(&stage_dir(FILTER)), &files.prompt_answers)?;

    let checks = DemoChecks {
        judge_image_understanding: joint.task_accuracy(Task::ImageUnderstanding).unwrap_or(f64::NAN),
        pairs: truth.get("all").copied().unwrap_or_default(),
        policy_before: before.preference_accuracy,
        policy_after: after.preference_accuracy,
    };
    let failures = checks.failures();
    let judges = JudgeSummaries { base: base_judge, joint, mismatched, single };
    let policies = PolicySummaries { before, after, random };
    let summary = summary_markdown(&judges, &truth, &policies, &failures);
    let summary_path = out.join("demo.md");
    std::fs::write(&summary_path, &summary).with_context(|| format!("writing {}", summary_path.display()))?;
    println!("{summary}");
    println!("the pipeline's report and plots: {}", report.display());
    println!("this summary: {}", summary_path.display());
    println!("rerun the pipeline alone: unireward pipeline --config {}", config_path.display());
    println!("demo time: {:.0} s", started.elapsed().as_secs_f64());
    if args.check && !failures.is_empty() {
        anyhow::bail!("the demo's claims do not hold:\n- {}", failures.join("\n- "));
    }
    Ok(())
}

/// Two thread pools splitting this machine's cores: the pipeline's, and the one the single-task judges train on
/// beside it (one core each on two; a single core shared).
fn thread_pools() -> anyhow::Result<(rayon::ThreadPool, rayon::ThreadPool)> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = |threads: usize| {
        rayon::ThreadPoolBuilder::new().num_threads(threads.max(1)).build().context("starting a thread pool")
    };
    Ok((pool(cores - cores / 2)?, pool(cores / 2)?))
}

/// What runs beside the pipeline: the single-task judges, then each control once the pipeline has finished the
/// stage it reads (a control the pipeline never got that far for is `None`).
struct Beside {
    single: BTreeMap<Task, BenchSummary>,
    /// The trained judge on the held-out judgments with mismatched contexts.
    mismatched: Option<BenchSummary>,
    /// The policy after DPO on random pairs.
    random: Option<PolicyEvaluation>,
}

/// The single-task judges, then the judge-control once `finished` names judge-train and the policy-control once it
/// names the filter (it closes when the pipeline ends); `None` when Ctrl-C stopped them.
fn beside_the_pipeline(
    config: &DemoConfig,
    files: &DemoFiles,
    base: &Path,
    out: &Path,
    pipeline: &PipelineConfig,
    finished: &mpsc::Receiver<String>,
) -> anyhow::Result<Option<Beside>> {
    let Some(single) = single_task_judges(config, files, base, out)? else { return Ok(None) };
    let mut beside = Beside { single, mismatched: None, random: None };
    let reached = |stage: &str| finished.iter().any(|done| done == stage);
    if !reached(JUDGE_TRAIN) {
        return Ok(Some(beside));
    }
    say("judge-control: the trained judge on the held-out judgments, each shown another one's context");
    let (_, trained) =
        latest_checkpoint(&pipeline.out.join(JUDGE_TRAIN)).context("the judge-train stage left no checkpoint")?;
    let reasoned = config.filter.reasoned_generation()?;
    let mismatched_bench = &files.judge_held_out_mismatched;
    let Some(mismatched) = evaluate_judge(&trained, mismatched_bench, &files.dir, None, reasoned, &STOP)? else {
        return Ok(None);
    };
    beside.mismatched = Some(mismatched);
    if !reached(FILTER) {
        return Ok(Some(beside));
    }
    say("policy-control: DPO on random pairs of the same prompts' candidates, evaluated alike");
    let control = out.join("policy-control");
    let Some(random) = dpo_on_random_pairs(pipeline, files, &pipeline.out, &control, &STOP)? else {
        return Ok(None);
    };
    beside.random = Some(random);
    Ok(Some(beside))
}

/// Each task's judge trained alone from `base` and evaluated on its held-out judgments, in the order of
/// [`Task::ALL`]; `None` when Ctrl-C stopped them.
fn single_task_judges(
    config: &DemoConfig,
    files: &DemoFiles,
    base: &Path,
    out: &Path,
) -> anyhow::Result<Option<BTreeMap<Task, BenchSummary>>> {
    let mut single = BTreeMap::new();
    for task in Task::ALL {
        let stage = format!("single-task/{task}");
        say(&format!("{stage}: a judge trained on {task} alone, beside the pipeline"));
        let progress = Progress::new("steps", 100)?;
        let summary = single_task_judge(config, files, base, task, &out.join(&stage), &STOP, |done, total| {
            progress.update(done, total, &stage)
        })?;
        progress.finish();
        let Some(summary) = summary else { return Ok(None) };
        say(&format!("{stage}: done"));
        single.insert(task, summary);
    }
    Ok(Some(single))
}

/// A figure to three decimals, or `-` when absent.
fn figure(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.3}"))
}

/// The judges' results on the held-out judgments.
struct JudgeSummaries {
    /// The base model, pretrained on described answers only.
    base: BenchSummary,
    joint: BenchSummary,
    /// The joint judge, each judgment shown another judgment's context.
    mismatched: BenchSummary,
    single: BTreeMap<Task, BenchSummary>,
}

/// The demo's summary: the judge per task (the base model, joint, joint with mismatched contexts, single-task), the
/// filter's pairs against the truth, the policy before and after DPO, and the claims that failed.
/// The policy on its held-out questions.
struct PolicySummaries {
    before: PolicyEvaluation,
    /// After DPO on the judge's pairs.
    after: PolicyEvaluation,
    /// After DPO on random pairs of the same prompts (the control).
    random: PolicyEvaluation,
}

fn summary_markdown(
    judges: &JudgeSummaries,
    truth: &BTreeMap<String, PairTruth>,
    policies: &PolicySummaries,
    failures: &[String],
) -> String {
    let PolicySummaries { before, after, random } = policies;
    let mut s = String::from("# unireward demo\n\n## The judge on held-out judgments (accuracy; chance 0.5)\n\n");
    s += "| task | base model (described answers only) | trained jointly on the four tasks | the same, contexts \
          mismatched | trained on this task alone |\n";
    s += "| --- | ---: | ---: | ---: | ---: |\n";
    for task in Task::ALL {
        let single = judges.single.get(&task).and_then(|b| b.task_accuracy(task));
        let row = [&judges.base, &judges.joint, &judges.mismatched].map(|b| figure(b.task_accuracy(task)));
        let _ = writeln!(s, "| {task} | {} | {} | {} | {} |", row[0], row[1], row[2], figure(single));
    }
    s += "\nContexts mismatched: each judgment shown the caption, or the picture or video asked about, of another \
          judgment of its task, candidates and labels unchanged. A judge that relates the candidates to their \
          context falls to chance there; what it keeps, it gets from the candidates alone (an answer's prior).\n";
    s += "\n## The filter's pairs against the world's answers (random pairs: 0.5)\n\n";
    s += "| task | pairs | with one true answer | chose the true one | share |\n| --- | ---: | ---: | ---: | ---: |\n";
    for (task, t) in truth {
        let _ =
            writeln!(s, "| {task} | {} | {} | {} | {} |", t.pairs, t.decisive, t.chosen_true, figure(t.agreement()));
    }
    s += "\n## The policy on held-out questions\n\n";
    s += "Greedy: its answer is the true one. Preference: it gives the true answer a higher log-probability than the \
          wrong one (chance 0.5).\n\n";
    s += "| task | greedy before DPO | greedy after | preference before | preference after |\n";
    s += "| --- | ---: | ---: | ---: | ---: |\n";
    let _ = writeln!(
        s,
        "| all | {:.3} | {:.3} | {:.3} | {:.3} |",
        before.accuracy, after.accuracy, before.preference_accuracy, after.preference_accuracy
    );
    let _ = writeln!(
        s,
        "| all, DPO on random pairs instead (control) | {:.3} | {:.3} | {:.3} | {:.3} |",
        before.accuracy, random.accuracy, before.preference_accuracy, random.preference_accuracy
    );
    for (task, b) in &before.per_task {
        let a = after.per_task.get(task);
        let (greedy, preference) = (figure(a.map(|a| a.accuracy)), figure(a.map(|a| a.preference_accuracy)));
        let _ = writeln!(s, "| {task} | {:.3} | {greedy} | {:.3} | {preference} |", b.accuracy, b.preference_accuracy);
    }
    s += "\n## Claims\n\n";
    if failures.is_empty() {
        s += "All hold: the judge beat chance on held-out image questions, the filter's pairs beat random pairs, DPO \
              made the policy prefer the true answers more often.\n";
    }
    for failure in failures {
        let _ = writeln!(s, "- does not hold: {failure}");
    }
    let task = Task::ImageUnderstanding;
    if let (Some(joint), Some(mismatched)) = (judges.joint.task_accuracy(task), judges.mismatched.task_accuracy(task)) {
        if joint - mismatched < SEES_CONTEXT_DROP {
            let _ = writeln!(
                s,
                "\nBut the judge does not look: shown another judgment's image, its {task} accuracy stays at \
                 {mismatched:.3} (from {joint:.3}, a drop under {SEES_CONTEXT_DROP}): what it gets right, it gets \
                 from the answers alone, not from the picture."
            );
        }
    }
    s
}

/// The drop in accuracy, when contexts are mismatched, that shows a judge relates candidates to their context:
/// twice the standard deviation of an accuracy over the demo's 100 held-out judgments of a task.
const SEES_CONTEXT_DROP: f64 = 0.1;
