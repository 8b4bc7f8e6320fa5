//! `unireward train-judge --eval-bench`: the judge's pairwise accuracy during training, judged by the model being
//! trained. On a tiny LLaVA-OneVision judge made from nothing and trained on the demo world's conversations of all
//! four tasks, every logged benchmark evaluation equals `unireward eval` on the checkpoint of the same step, number
//! for number; bad benchmark files are refused before anything is trained or written.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use unireward::judge::Task;
use unireward::pipeline::world::{judgments, template_words, word_level_tokenizer, TinyLlava};
use unireward::train::plots::{PLOT_HEIGHT, PLOT_WIDTH};
use unireward::train::sft::BENCH_KEY_PREFIX;

mod common;

/// A folder with the tiny judge (`judge/`), its training conversations (`train.jsonl`, two world judgments of each
/// task, three conversations each) and a benchmark of other judgments (`bench.jsonl`, two of each task).
struct World(PathBuf);

impl World {
    fn new(name: &str) -> World {
        let dir = std::env::temp_dir().join(format!("unireward-train-judge-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut rng = ChaCha8Rng::seed_from_u64(31);
        let (mut train, mut bench, mut corpus) = (String::new(), String::new(), template_words().unwrap());
        for task in Task::ALL {
            for (i, judgment) in judgments(task, 4, &dir.join("media"), "", &mut rng).unwrap().into_iter().enumerate() {
                corpus.push(judgment.text.clone());
                if i < 2 {
                    for c in judgment.conversations().unwrap() {
                        corpus.push(c["conversations"][1]["value"].as_str().unwrap().to_string());
                        corpus.extend(c["conversations"][0]["value"].as_str().map(str::to_string));
                        train += &format!("{c}\n");
                    }
                } else {
                    let mut line = judgment.eval_line(&mut rng);
                    // Understanding pairs as VL-RewardBench's: a general and a hallucination subset.
                    if matches!(task, Task::ImageUnderstanding | Task::VideoUnderstanding) {
                        line["subset"] = if i == 2 { "vlfeedback" } else { "povid" }.into();
                    }
                    bench += &format!("{line}\n");
                }
            }
        }
        let tokenizer = word_level_tokenizer(corpus.iter().map(String::as_str)).unwrap();
        TinyLlava::default().write(&dir.join("judge"), &tokenizer, 5).unwrap();
        std::fs::write(dir.join("train.jsonl"), train).unwrap();
        std::fs::write(dir.join("bench.jsonl"), bench).unwrap();
        World(dir)
    }

    fn path(&self, p: &str) -> String {
        self.0.join(p).display().to_string()
    }

    fn train_judge(&self, out: &str, bench: &str, extra: &[&str]) -> Output {
        let mut args = vec!["train-judge", "--model", "judge", "--data", "train.jsonl", "--out", out];
        args.extend(["--eval-bench", bench, "--batch-size", "4", "--lr", "1e-3", "--video-frames", "4"]);
        args.extend(extra);
        unireward(&self.0, &args)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the binary in `dir`.
fn unireward(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unireward")).current_dir(dir).args(args).output().unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// The `eval/bench/` entries of each line of `metrics.jsonl` that has any, by step (each line with the held-out
/// conversations' `eval/loss` beside them).
fn logged_bench(metrics: &Path) -> Vec<(u64, serde_json::Map<String, serde_json::Value>)> {
    let log = std::fs::read_to_string(metrics).unwrap();
    log.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|line| {
            let entries: serde_json::Map<_, _> = line
                .as_object()
                .unwrap()
                .iter()
                .filter_map(|(k, v)| Some((k.strip_prefix(BENCH_KEY_PREFIX)?.to_string(), v.clone())))
                .collect();
            if !entries.is_empty() {
                assert!(line["eval/loss"].as_f64().unwrap().is_finite(), "{line}");
            }
            (!entries.is_empty()).then(|| (line["step"].as_u64().unwrap(), entries))
        })
        .collect()
}

#[test]
fn logged_benchmark_metrics_equal_unireward_eval_on_the_checkpoint_of_the_same_step() {
    let world = World::new("equal");
    // 32 conversations, 4 a batch: 8 steps, evaluated and saved at 2, 4, 6 and 8; the conversations' own loss too.
    let output =
        world.train_judge("out", "bench.jsonl", &["--eval-every", "2", "--save-every", "2", "--eval", "train.jsonl"]);
    let log = text(&output);
    assert!(output.status.success(), "{log}");
    assert!(log.contains("done: 8 steps of 8"), "{log}");
    assert!(log.contains("accuracy") && log.contains("step 4  eval loss"), "{log}");
    assert!(log.contains("  bench  image_generation"), "{log}");
    let logged = logged_bench(&world.0.join("out/metrics.jsonl"));
    assert_eq!(logged.iter().map(|(step, _)| *step).collect::<Vec<_>>(), [2, 4, 6, 8]);
    let mut summaries = Vec::new();
    for (step, entries) in &logged {
        let checkpoint = world.path(&format!("out/checkpoint-{step}"));
        let evaluated = unireward(&world.0, &["eval", "--model", &checkpoint, "--data", "bench.jsonl", "--json"]);
        let report = text(&evaluated);
        assert!(evaluated.status.success(), "{report}");
        let report: serde_json::Value = serde_json::from_slice(&evaluated.stdout).unwrap();
        let summary = report["summary"].as_object().unwrap().clone();
        for task in Task::ALL {
            assert_eq!(summary[&format!("{task}.pairs")], 2, "{summary:?}");
        }
        let rates: serde_json::Map<_, _> = summary.into_iter().filter(|(k, _)| !k.ends_with(".pairs")).collect();
        for key in
            ["image_generation.tau", "video_understanding.accuracy", "vl_reward_bench.macro", "position_consistency"]
        {
            assert!(rates.contains_key(key), "{key} not in {rates:?}");
        }
        assert_eq!(entries, &rates, "step {step}: the logged metrics against `unireward eval` of its checkpoint");
        summaries.push(rates);
    }
    // The evaluations see the parameters of their step: the verdict probabilities (and their calibration) move.
    assert_ne!(summaries[0]["ece"], summaries[2]["ece"]);
    let plot = image::open(world.0.join("out/bench.png")).unwrap();
    assert_eq!((plot.width(), plot.height()), (PLOT_WIDTH, PLOT_HEIGHT));
}

#[test]
fn bad_benchmark_files_are_refused_before_anything_is_trained_or_written() {
    let world = World::new("bad");
    let good = std::fs::read_to_string(world.0.join("bench.jsonl")).unwrap();
    let first = good.lines().next().unwrap();
    let mut missing_media: serde_json::Value = serde_json::from_str(first).unwrap();
    missing_media["candidates"][1] = "media/nowhere.png".into();
    let cases = [
        ("absent.jsonl", None, vec!["--eval-bench", "absent.jsonl"]),
        ("malformed.jsonl", Some(format!("{first}\n{{\"task\": \"image-generation\",\n")), vec!["line 2"]),
        (
            "unknown-task.jsonl",
            Some(first.replace("\"image-generation\"", "\"audio-generation\"")),
            vec!["line 1", "audio-generation"],
        ),
        ("no-pairs.jsonl", Some("\n".to_string()), vec!["holds no pairs"]),
        ("missing-media.jsonl", Some(format!("{first}\n{missing_media}\n")), vec!["pair 2", "nowhere.png"]),
    ];
    for (file, content, wanted) in cases {
        if let Some(content) = content {
            std::fs::write(world.0.join(file), content).unwrap();
        }
        let output = world.train_judge("out", file, &["--eval-every", "2"]);
        let message = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{file}: {message}");
        for w in wanted.iter().chain(&["--eval-bench", file]) {
            assert!(message.contains(w), "{file}: `{w}` not in {message}");
        }
        assert!(!world.0.join("out").exists(), "{file}: the refused run wrote into --out");
    }

    // A text-only judge cannot see the images a generation task judges.
    let scratch = common::Scratch::new("train-judge-bench-text-only");
    let conversation = r#"{"conversations": [{"from": "human", "value": "Which?"}, {"from": "gpt", "value": "1."}]}"#;
    std::fs::write(scratch.path("data.jsonl"), format!("{conversation}\n")).unwrap();
    std::fs::write(scratch.path("bench.jsonl"), format!("{first}\n")).unwrap();
    let args =
        ["train-judge", "--model", "model", "--data", "data.jsonl", "--out", "out", "--eval-bench", "bench.jsonl"];
    let output = unireward(&scratch.0, &args);
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && message.contains("pair 1") && message.contains("text-only"), "{message}");
    assert!(!scratch.path("out").exists());
}
