//! The embedded demo: the smoke configuration through the command line (every stage, the summary, a second run
//! that keeps everything), `--kernels`, and the checks against plain recomputations.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use unireward::pipeline::demo::{pair_truth, random_pairs, DemoChecks, PairTruth};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("unireward-demo-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn demo(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_unireward")).arg("demo").args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[test]
fn the_smoke_demo_runs_every_stage_writes_its_summary_and_a_second_run_keeps_it() {
    let dir = temp_dir("smoke");
    let out = dir.join("out");
    let (ok, text) = demo(&["--smoke", "--out", out.to_str().unwrap()]);
    assert!(ok, "{text}");
    for stage in ["judge-train", "judge-eval", "policy-sft", "policy-eval-before", "sample", "filter", "dpo"] {
        assert!(out.join("run").join(stage).join("record.json").is_file(), "{stage}: {text}");
    }
    for file in ["demo.md", "pipeline.toml", "run/report/report.md", "run/policy-eval-after/evaluation.json"] {
        assert!(out.join(file).is_file(), "{file}: {text}");
    }
    let summary = std::fs::read_to_string(out.join("demo.md")).unwrap();
    for task in ["image_generation", "image_understanding", "video_generation", "video_understanding"] {
        assert!(out.join("single-task").join(task).join("summary.json").is_file(), "{task}");
        assert!(summary.contains(&format!("| {task} |")), "{summary}");
    }
    assert!(text.contains(&summary), "the summary is printed: {text}");
    assert!(summary.contains("contexts mismatched"), "{summary}");
    assert!(summary.contains("| all, DPO on random pairs instead (control) |"), "{summary}");

    // The control judgments: the held-out ones, each with the next judgment's context (caption, or media asked
    // about) within its task, candidates and labels kept.
    let lines = |name: &str| -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(out.join("world").join(name)).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let (held_out, mismatched) = (lines("judge-held-out.jsonl"), lines("judge-held-out-mismatched.jsonl"));
    assert_eq!(held_out.len(), mismatched.len());
    for (i, (line, control)) in held_out.iter().zip(&mismatched).enumerate() {
        let field = if line.get("caption").is_some() { "caption" } else { "media" };
        let same_task: Vec<usize> = (0..held_out.len()).filter(|&j| held_out[j]["task"] == line["task"]).collect();
        let k = same_task.iter().position(|&j| j == i).unwrap();
        let next = &held_out[same_task[(k + 1) % same_task.len()]];
        let mut expected = line.clone();
        expected[field] = next[field].clone();
        assert_eq!(control, &expected, "line {i}");
        assert!(same_task.len() < 2 || control[field] != line[field], "line {i} kept its own context");
    }

    // A second run redraws the same world, finds every stage up to date and writes the same summary.
    let (ok, again) = demo(&["--smoke", "--out", out.to_str().unwrap()]);
    assert!(ok, "{again}");
    assert!(again.contains("up to date, kept") && !again.contains(": running"), "{again}");
    assert_eq!(std::fs::read_to_string(out.join("demo.md")).unwrap(), summary);

    // The config the demo ran is the pipeline command's: it reruns nothing either.
    let output = Command::new(env!("CARGO_BIN_EXE_unireward"))
        .args(["pipeline", "--config", out.join("pipeline.toml").to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && !text.contains(": running"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_kernel_demo_stays_reachable_and_its_flags_need_it() {
    let (ok, text) = demo(&["--kernels", "--vocab", "512", "--prompt-tokens", "4", "--completion-tokens", "8"]);
    assert!(ok && text.contains("agreement"), "{text}");
    let (ok, text) = demo(&["--vocab", "512"]);
    assert!(!ok && text.contains("--kernels"), "{text}");
}

/// The filter's pairs against the truth, recomputed plainly: per task and over all, a pair counting when exactly
/// one of its answers is the true one (compared trimmed, lower-cased, without final punctuation).
#[test]
fn pair_truth_counts_what_a_plain_recount_counts() {
    let dir = temp_dir("truth");
    let answers: BTreeMap<String, String> = [("a", "3"), ("b", "Yes"), ("c", "left"), ("d", "red")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let pairs = [
        ("a", "image_understanding", "3", "4"),
        ("a", "image_understanding", "2", "3."),
        ("b", "image_understanding", "yes!", "no"),
        ("b", "image_understanding", "no", "maybe"),
        ("c", "video_understanding", " Left ", "up"),
        ("c", "video_understanding", "left", "left"),
        ("d", "image-understanding", "blue", "red"),
    ];
    let lines: String = pairs
        .iter()
        .map(|(id, task, chosen, rejected)| {
            format!(
                "{}\n",
                serde_json::json!({"id": id, "task": task, "chosen": chosen, "rejected": rejected, "index": 0})
            )
        })
        .collect();
    let path = dir.join("pairs.jsonl");
    std::fs::write(&path, &lines).unwrap();
    let truth = pair_truth(&path, &answers).unwrap();

    let norm = |s: &str| s.trim().trim_end_matches(['.', '!', '?', ',', ';', ':']).trim_end().to_lowercase();
    let mut expected: BTreeMap<String, PairTruth> = BTreeMap::new();
    for (id, task, chosen, rejected) in pairs {
        let answer = norm(&answers[id]);
        let (c, r) = (norm(chosen) == answer, norm(rejected) == answer);
        for key in [task.replace('-', "_"), "all".to_string()] {
            let t = expected.entry(key).or_default();
            t.pairs += 1;
            t.decisive += usize::from(c != r);
            t.chosen_true += usize::from(c && !r);
        }
    }
    assert_eq!(truth, expected);
    assert_eq!(truth["all"], PairTruth { pairs: 7, decisive: 5, chosen_true: 3 });
    assert_eq!(truth["all"].agreement(), Some(0.6));

    std::fs::write(
        &path,
        format!(
            "{lines}{}\n",
            serde_json::json!({"id": "z", "task": "image_understanding", "chosen": "1", "rejected": "2"})
        ),
    )
    .unwrap();
    let err = pair_truth(&path, &answers).unwrap_err().to_string();
    assert!(err.contains("line 8") && err.contains("\"z\""), "{err}");
    std::fs::write(&path, "{not json\n").unwrap();
    assert!(pair_truth(&path, &answers).unwrap_err().to_string().contains("line 1"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_checks_name_each_claim_that_fails_and_a_nan_never_passes() {
    let holding = DemoChecks {
        judge_image_understanding: 0.8,
        pairs: PairTruth { pairs: 100, decisive: 40, chosen_true: 30 },
        policy_before: 0.25,
        policy_after: 0.35,
    };
    assert!(holding.failures().is_empty());
    let failing = DemoChecks {
        judge_image_understanding: f64::NAN,
        pairs: PairTruth { pairs: 100, decisive: 10, chosen_true: 10 },
        policy_before: 0.3,
        policy_after: 0.3,
    };
    let failures = failing.failures();
    assert_eq!(failures.len(), 3, "{failures:?}");
    assert!(failures[0].contains("NaN") && failures[1].contains("10 of 10") && failures[2].contains("not up"));
    let chance = DemoChecks { pairs: PairTruth { pairs: 100, decisive: 40, chosen_true: 20 }, ..holding.clone() };
    assert_eq!(chance.failures().len(), 1);
}

/// The control's pairs: the judge's pairs with chosen and rejected two different candidates of the same prompt, in
/// both orders over many pairs, the same for the same seed; a prompt without candidates is an error naming it.
#[test]
fn random_pairs_keep_the_prompts_and_draw_two_different_candidates() {
    let dir = temp_dir("random-pairs");
    let (candidates, pairs) = (dir.join("candidates.jsonl"), dir.join("pairs.jsonl"));
    let mut candidate_lines = String::new();
    let mut pair_lines = String::new();
    for p in 0..200 {
        let answers: Vec<String> = (0..4).map(|k| format!("answer {p}.{k}")).collect();
        candidate_lines += &format!("{}\n", serde_json::json!({"id": format!("p{p}"), "candidates": answers}));
        let pair = serde_json::json!({"id": format!("p{p}"), "task": "image_understanding", "prompt": "q",
            "chosen": answers[0], "rejected": answers[1], "image": ["media/x.png"]});
        pair_lines += &format!("{pair}\n");
    }
    std::fs::write(&candidates, candidate_lines).unwrap();
    std::fs::write(&pairs, &pair_lines).unwrap();
    let drawn = random_pairs(&pairs, &candidates, 5).unwrap();
    assert_eq!(drawn, random_pairs(&pairs, &candidates, 5).unwrap());
    assert_ne!(drawn, random_pairs(&pairs, &candidates, 6).unwrap());
    let mut ordered = 0;
    for (line, original) in drawn.lines().zip(pair_lines.lines()) {
        let (mut got, mut want): (serde_json::Value, serde_json::Value) =
            (serde_json::from_str(line).unwrap(), serde_json::from_str(original).unwrap());
        let index = |v: &serde_json::Value| -> usize {
            let text = v.as_str().unwrap();
            assert!(text.starts_with(&format!("answer {}.", &want["id"].as_str().unwrap()[1..])), "{text}");
            text.rsplit('.').next().unwrap().parse().unwrap()
        };
        let (chosen, rejected) = (index(&got["chosen"]), index(&got["rejected"]));
        assert_ne!(chosen, rejected);
        ordered += usize::from(chosen < rejected);
        for key in ["chosen", "rejected"] {
            got[key] = serde_json::Value::Null;
            want[key] = serde_json::Value::Null;
        }
        assert_eq!(got, want, "only chosen and rejected change");
    }
    assert!((60..140).contains(&ordered), "both orders: {ordered} of 200 with the lower index chosen");
    std::fs::write(&candidates, "{\"id\": \"other\", \"candidates\": [\"a\", \"b\"]}\n").unwrap();
    let err = random_pairs(&pairs, &candidates, 5).unwrap_err().to_string();
    assert!(err.contains("no two candidates for prompt \"p0\""), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
