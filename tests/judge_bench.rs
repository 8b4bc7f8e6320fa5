//! `unireward::judge::bench` from Rust: a run stopped by its flag after a random number of batches reports the
//! batches it finished, resuming it with the same options gives the file and the metrics of an uninterrupted run,
//! the summary is the metrics of the results, and options that cannot run are refused before anything is written;
//! a reasoned run judges each pair as `Judge::reasoned_both_orders` does.

mod judge_checkpoint;

use std::sync::atomic::{AtomicBool, Ordering};

use judge_checkpoint::{image, judge_dir};
use rand::Rng;
use unireward::judge::bench::{evaluate_bench, read_bench_file, summarize, BenchOptions};
use unireward::judge::bench::{parse_label, verdict_name};
use unireward::judge::{GenerationConfig, Judge};
use unireward::{DType, Device};

#[test]
fn a_stopped_run_resumes_into_the_uninterrupted_one() {
    let dir = judge_dir("bench-stop");
    let (a, b) = (image("two_images_0.png"), image("anyres_0.png"));
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let lines: Vec<String> = (0..7)
        .map(|i| match i % 2 {
            0 => format!(r#"{{"task": "image-generation", "caption": "red {i}", "candidates": ["{a}", "{b}"], "label": "A"}}"#),
            _ => format!(
                r#"{{"task": "image-understanding", "question": "q{i}", "media": "{b}", "candidates": ["x", "y {i}"], "label": "B", "subset": "rlaif-v"}}"#
            ),
        })
        .collect();
    std::fs::write(dir.0.join("bench.jsonl"), lines.join("\n")).unwrap();
    let pairs = read_bench_file(&dir.0.join("bench.jsonl"), &dir.0).unwrap();
    assert_eq!(pairs.len(), 7);
    let judge = Judge::load(&dir.0, DType::F32, Device::Cpu).unwrap();
    let never = AtomicBool::new(false);
    let options = |out: &str, resume| BenchOptions { batch: 2, out: Some(dir.0.join(out)), resume, reasoned: None };

    let straight = evaluate_bench(&judge, &pairs, &options("straight.jsonl", false), &never, |_, _| {}).unwrap();
    assert!(!straight.interrupted);
    assert_eq!(straight.results.len(), 7);
    assert_eq!(straight.summary, summarize(&straight.results).unwrap());
    assert_eq!(straight.summary.get("image_generation.pairs"), Some(4.0));
    let in_memory =
        evaluate_bench(&judge, &pairs, &BenchOptions { out: None, ..options("", false) }, &never, |_, _| {});
    assert_eq!(in_memory.unwrap(), straight);

    let batches = rand::thread_rng().gen_range(1..4);
    let stop = AtomicBool::new(false);
    let mut seen = Vec::new();
    let stopped = evaluate_bench(&judge, &pairs, &options("stopped.jsonl", false), &stop, |done, total| {
        seen.push((done, total));
        if seen.len() == batches {
            stop.store(true, Ordering::SeqCst);
        }
    })
    .unwrap();
    assert!(stopped.interrupted);
    assert_eq!(stopped.results, straight.results[..2 * batches]);
    assert_eq!(seen, (1..=batches).map(|b| (2 * b, 7)).collect::<Vec<_>>());
    let resumed = evaluate_bench(&judge, &pairs, &options("stopped.jsonl", true), &never, |_, _| {}).unwrap();
    assert_eq!(resumed, straight);
    let read = |f: &str| std::fs::read(dir.0.join(f)).unwrap();
    assert!(read("stopped.jsonl") == read("straight.jsonl"), "stopped after {batches} batches: files differ");

    for (bad, needle) in [
        (BenchOptions { batch: 0, ..options("none.jsonl", false) }, "--batch"),
        (BenchOptions { out: None, ..options("", true) }, "--out"),
        (options("none.jsonl", true), "does not exist"),
        (options("straight.jsonl", false), "pass --resume"),
    ] {
        let err = evaluate_bench(&judge, &pairs, &bad, &never, |_, _| {}).unwrap_err().to_string();
        assert!(err.contains(needle), "{needle}: {err}");
    }
    assert!(!dir.0.join("none.jsonl").exists());
    let err = evaluate_bench(&judge, &[], &options("none.jsonl", false), &never, |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("no pairs"), "{err}");
}

#[test]
fn a_reasoned_run_judges_each_pair_reasoned_from_both_orders() {
    let dir = judge_dir("bench-reasoned");
    let (a, b) = (image("two_images_0.png"), image("anyres_0.png"));
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let lines = [
        format!(r#"{{"task": "image-generation", "caption": "red", "candidates": ["{a}", "{b}"], "label": "A"}}"#),
        format!(
            r#"{{"task": "image-understanding", "question": "q", "media": "{b}", "candidates": ["x", "y"], "label": "B"}}"#
        ),
        format!(
            r#"{{"task": "image-understanding", "question": "r", "media": "{a}", "candidates": ["z", "x y"], "label": "A"}}"#
        ),
    ];
    std::fs::write(dir.0.join("bench.jsonl"), lines.join("\n")).unwrap();
    let pairs = read_bench_file(&dir.0.join("bench.jsonl"), &dir.0).unwrap();
    let judge = Judge::load(&dir.0, DType::F32, Device::Cpu).unwrap();
    let never = AtomicBool::new(false);
    let cfg = GenerationConfig { max_new_tokens: 4, ..Default::default() };
    let options = |out: &str, resume, reasoned: Option<GenerationConfig>| BenchOptions {
        batch: 2,
        out: Some(dir.0.join(out)),
        resume,
        reasoned,
    };

    let reasoned =
        evaluate_bench(&judge, &pairs, &options("reasoned.jsonl", false, Some(cfg.clone())), &never, |_, _| {})
            .unwrap();
    assert_eq!(reasoned.results.len(), 3);
    for (pair, result) in pairs.iter().zip(&reasoned.results) {
        let expected = judge.reasoned_both_orders(&pair.request, &cfg).unwrap();
        let verdict = expected.pair.unwrap();
        assert_eq!(result.probs, verdict.debiased.map(f64::from));
        assert_eq!(parse_label(&result.verdict).unwrap(), verdict.verdict);
        assert_eq!(result.label, verdict_name(pair.truth));
        assert_eq!(result.reasoned_max_new_tokens, Some(4));
    }
    assert_eq!(reasoned.summary, summarize(&reasoned.results).unwrap());
    let one_pass = evaluate_bench(&judge, &pairs, &options("one-pass.jsonl", false, None), &never, |_, _| {}).unwrap();
    assert!(one_pass.results.iter().all(|r| r.reasoned_max_new_tokens.is_none()));

    // A run resumes only as it was judged: another mode, or another generation length, is refused by name.
    for (file, other, needle) in [
        ("one-pass.jsonl", Some(cfg.clone()), "was judged one-pass, this run reasoned (--max-new-tokens 4)"),
        ("reasoned.jsonl", None, "was judged reasoned (--max-new-tokens 4), this run one-pass"),
        (
            "reasoned.jsonl",
            Some(GenerationConfig { max_new_tokens: 9, ..cfg.clone() }),
            "this run reasoned (--max-new-tokens 9)",
        ),
    ] {
        let before = std::fs::read(dir.0.join(file)).unwrap();
        let err = evaluate_bench(&judge, &pairs, &options(file, true, other), &never, |_, _| {}).unwrap_err();
        assert!(err.to_string().contains(needle), "{needle}: {err}");
        assert_eq!(std::fs::read(dir.0.join(file)).unwrap(), before, "{file}: nothing written");
    }
}
