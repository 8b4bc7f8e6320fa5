//! `unireward::pipeline::report`: the report states the numbers it is given (judge benchmark before and after, filter
//! counts and the audit file's judgments, policy accuracies per task, online rounds, stage timings), its plots are
//! PNGs of the plot size, and a missing or corrupt audit file or metrics log is a clear error with nothing written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use unireward::judge::bench::BenchSummary;
use unireward::pipeline::filter::Summary;
use unireward::pipeline::policy_eval::{PolicyAnswer, PolicyEvaluation, PolicyTaskEvaluation};
use unireward::pipeline::report::{write_report, FilterReport, OnlineRound, PipelineReport};
use unireward::train::plots::{bar_chart, histogram, PLOT_HEIGHT, PLOT_WIDTH};

/// A temporary directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("unireward-report-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn files(&self, under: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.0.join(under))
            .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn bench(pairs: u64, tau: f64, accuracy: Option<f64>) -> BenchSummary {
    let mut metrics = BTreeMap::new();
    metrics.insert("image_generation.pairs".to_string(), serde_json::json!(pairs));
    metrics.insert("image_generation.tau".to_string(), serde_json::json!(tau));
    metrics.insert("image_understanding.accuracy".to_string(), serde_json::json!(accuracy));
    BenchSummary { metrics }
}

/// An evaluation whose answers are `(task, correct, preferred)`, its rates computed from them.
fn evaluation(answers: &[(&str, bool, bool)]) -> PolicyEvaluation {
    let answers: Vec<PolicyAnswer> = answers
        .iter()
        .enumerate()
        .map(|(i, &(task, correct, preferred))| PolicyAnswer {
            id: format!("q{i}"),
            task: task.into(),
            greedy: "3".into(),
            correct,
            answer_log_prob: -1.0,
            wrong_log_probs: vec![if preferred { -2.0 } else { -0.5 }],
            preferred,
        })
        .collect();
    let rates = |of: &[&PolicyAnswer]| {
        let n = of.len();
        let (c, p) = (of.iter().filter(|a| a.correct).count(), of.iter().filter(|a| a.preferred).count());
        PolicyTaskEvaluation {
            questions: n,
            correct: c,
            preferred: p,
            accuracy: c as f64 / n as f64,
            preference_accuracy: p as f64 / n as f64,
        }
    };
    let mut per_task = BTreeMap::new();
    for task in ["image_understanding", "video_understanding"] {
        let of: Vec<&PolicyAnswer> = answers.iter().filter(|a| a.task == task).collect();
        if !of.is_empty() {
            per_task.insert(task.to_string(), rates(&of));
        }
    }
    let all = rates(&answers.iter().collect::<Vec<_>>());
    PolicyEvaluation {
        questions: all.questions,
        accuracy: all.accuracy,
        preference_accuracy: all.preference_accuracy,
        per_task,
        answers,
    }
}

const AUDIT: &str = r#"{"id":"p0","index":0,"mode":"pairwise","candidates":[0,1],"verdict":"first","margin":1.5,"probs":[0.8,0.2]}
{"id":"p0","index":0,"mode":"pairwise","candidates":[2,3],"verdict":"tie","margin":0.0,"probs":[0.5,0.5]}
{"id":"p0","index":0,"mode":"pointwise","candidates":[0],"score":4.0,"probs":[0.1,0.9]}

{"id":"p0","index":0,"mode":"pointwise","candidates":[1],"score":2.0,"probs":[0.6,null]}
{"id":"p1","index":1,"mode":"pointwise","candidates":[0],"unparsable":"no score","probs":[]}
{"id":"p1","index":1,"mode":"pairwise","candidates":[0,1],"margin":null,"unparsable":"no verdict","probs":[]}
"#;

fn full_report(dir: &Path) -> PipelineReport {
    std::fs::write(dir.join("audit.jsonl"), AUDIT).unwrap();
    let metrics = "{\"step\": 1, \"loss\": 2.0, \"lr\": 0.001}\n{\"step\": 2, \"loss\": 1.5, \"lr\": 0.002}\n";
    std::fs::write(dir.join("metrics.jsonl"), metrics).unwrap();
    let round = |prompts, pairs, answers: &[(&str, bool, bool)]| OnlineRound {
        policy: evaluation(answers),
        filter: Summary { prompts, pairs, ..Summary::default() },
    };
    PipelineReport {
        title: "World demo".into(),
        judge_metrics: Some(dir.join("metrics.jsonl")),
        judge_before: Some(bench(4, 0.25, None)),
        judge_after: Some(bench(4, 0.75, Some(0.5))),
        filter: Some(FilterReport {
            summary: Summary { prompts: 5, pairs: 7, without_pair: 1, ties: 2, unparsable: 3, skipped: 4 },
            audit: Some(dir.join("audit.jsonl")),
        }),
        policy_before: Some(evaluation(&[
            ("image_understanding", false, true),
            ("image_understanding", false, false),
            ("video_understanding", true, false),
            ("video_understanding", false, true),
        ])),
        policy_after: Some(evaluation(&[
            ("image_understanding", true, true),
            ("image_understanding", true, true),
            ("video_understanding", true, true),
            ("video_understanding", false, true),
        ])),
        online_rounds: vec![
            round(3, 2, &[("image_understanding", false, true), ("image_understanding", false, false)]),
            round(6, 5, &[("image_understanding", true, true), ("image_understanding", false, true)]),
        ],
        stage_seconds: vec![("judge-train".into(), 12.3), ("filter".into(), 3.5)],
        notes: vec!["seed 7".into()],
    }
}

#[test]
fn the_report_states_the_numbers_and_writes_the_plots() {
    let dir = Dir::new("full");
    let out = dir.0.join("report");
    let path = write_report(&full_report(&dir.0), &out).unwrap();
    assert_eq!(path, out.join("report.md"));
    let md = std::fs::read_to_string(&path).unwrap();
    for line in [
        "# World demo",
        "| image_generation.pairs | 4 | 4 |",
        "| image_generation.tau | 0.250 | 0.750 |",
        "| image_understanding.accuracy | n/a | 0.500 |",
        "| prompts judged | 5 |",
        "| pairs written | 7 |",
        "| prompts without a pair | 1 |",
        "| tied pairwise judgments | 2 |",
        "| unparsable judgments | 3 |",
        "| invalid prompts skipped | 4 |",
        "| pairs per prompt | 1.400 |",
        "| pairwise | 3 |",
        "| pairwise, verdict first | 1 |",
        "| pairwise, verdict tie | 1 |",
        "| pointwise | 3 |",
        "| unparsable | 2 |",
        "| score: mean / min / max | 3.000 / 2.000 / 4.000 |",
        "| margin: mean / min / max | 0.750 / 0.000 / 1.500 |",
        "| all | 4 | 0.250 | 0.750 | 0.500 | 1.000 |",
        "| image_understanding | 2 | 0.000 | 1.000 | 0.500 | 1.000 |",
        "| video_understanding | 2 | 0.500 | 0.500 | 0.500 | 1.000 |",
        "| 1 | 0.000 | 0.500 | 3 | 2 | 0 | 0 |",
        "| 2 | 0.500 | 1.000 | 6 | 5 | 0 | 0 |",
        "| judge-train | 12.3 |",
        "| filter | 3.5 |",
        "| total | 15.8 |",
        "- seed 7",
        "![loss.png](judge-training/loss.png)",
        "![scores.png](scores.png)",
        "![policy-accuracy.png](policy-accuracy.png)",
        "![online-rounds.png](online-rounds.png)",
    ] {
        assert!(md.lines().any(|l| l == line), "`{line}` not in:\n{md}");
    }
    assert_eq!(
        dir.files("report"),
        ["judge-training", "margins.png", "online-rounds.png", "policy-accuracy.png", "report.md", "scores.png"]
    );
    assert_eq!(dir.files("report/judge-training"), ["loss.png", "lr.png"]);
    for png in ["margins.png", "online-rounds.png", "policy-accuracy.png", "scores.png", "judge-training/loss.png"] {
        let image = image::open(out.join(png)).unwrap();
        assert_eq!((image.width(), image.height()), (PLOT_WIDTH, PLOT_HEIGHT), "{png}");
    }
}

#[test]
fn an_empty_report_has_its_title_alone() {
    let dir = Dir::new("empty");
    let md = std::fs::read_to_string(write_report(&PipelineReport::default(), &dir.0.join("r")).unwrap()).unwrap();
    assert_eq!(md, "# Pipeline report\n\n");
    assert_eq!(dir.files("r"), ["report.md"]);
}

#[test]
fn a_missing_or_corrupt_audit_or_log_is_a_clear_error_that_writes_nothing() {
    let dir = Dir::new("bad");
    let out = dir.0.join("report");
    let mut report = full_report(&dir.0);
    std::fs::remove_file(dir.0.join("audit.jsonl")).unwrap();
    let err = write_report(&report, &out).unwrap_err().to_string();
    assert!(err.contains("audit file") && err.contains("does not exist"), "{err}");
    assert!(!out.exists());

    let corrupt = AUDIT.replacen("\"mode\":\"pointwise\"", "\"mode\":\"pointwise\",\"extra\":1", 1);
    std::fs::write(dir.0.join("audit.jsonl"), corrupt).unwrap();
    let err = write_report(&report, &out).unwrap_err().to_string();
    assert!(err.contains("audit.jsonl line 3") && err.contains("extra"), "{err}");
    std::fs::write(dir.0.join("audit.jsonl"), AUDIT.replace("\"mode\":\"pairwise\"", "\"mode\":\"both\"")).unwrap();
    let err = write_report(&report, &out).unwrap_err().to_string();
    assert!(err.contains("audit.jsonl line 1") && err.contains("\"both\""), "{err}");
    std::fs::write(dir.0.join("audit.jsonl"), "{\"id\": \n").unwrap();
    let err = write_report(&report, &out).unwrap_err().to_string();
    assert!(err.contains("audit.jsonl line 1"), "{err}");
    assert!(!out.exists());

    std::fs::write(dir.0.join("audit.jsonl"), AUDIT).unwrap();
    std::fs::write(dir.0.join("metrics.jsonl"), "{\"step\": 1, \"loss\": 2.0}\nnot json\n").unwrap();
    let err = write_report(&report, &out).unwrap_err().to_string();
    assert!(err.contains("metrics.jsonl"), "{err}");
    assert!(!out.exists());
    report.judge_metrics = None;
    write_report(&report, &out).unwrap();
}

#[test]
fn bar_charts_and_histograms_refuse_what_they_cannot_draw() {
    let categories = ["a".to_string(), "b".to_string()];
    let err = bar_chart("t", "y", &categories, &[("g".into(), vec![1.0])], 100, 80).unwrap_err().to_string();
    assert!(err.contains("group `g` has 1 values for 2 categories"), "{err}");
    assert!(bar_chart("t", "y", &[], &[], 100, 80).is_err());
    let err = histogram("h", "x", &[f64::NAN], 10, 100, 80).unwrap_err().to_string();
    assert!(err.contains("no finite values"), "{err}");
    let image = histogram("h", "x", &[1.0, 1.0, f64::NAN], 4, 320, 200).unwrap();
    assert_eq!(image.dimensions(), (320, 200));
}
