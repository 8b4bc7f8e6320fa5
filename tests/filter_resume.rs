//! The filter's files on a scripted judge: a run stopped after any prompt, its files then given a half-written
//! tail (as a kill mid-write leaves them), and resumed, writes the bytes of an uninterrupted run; shards merged
//! equal the unsharded run; bad candidates, a judge that cannot do a task, existing outputs and corrupt or foreign
//! progress files are clear errors that leave what was written as it was.

mod filter_scripted;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use filter_scripted::{random_prompt, write_candidates, Scratch, ScriptedJudgments, ScriptedPrompt};
use rand::{Rng, SeedableRng};
use unireward::judge::Task;
use unireward::pipeline::filter::{
    merge_shards, read_candidates, run_filter, CandidateFile, FilterOptions, FilterOutcome, InvalidPolicy, Shard,
    ShardOutput, Strategy,
};
use unireward::Result;

fn prompts(seed: u64, n: usize) -> Vec<ScriptedPrompt> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tasks = [Task::ImageGeneration, Task::ImageUnderstanding];
    (0..n).map(|i| random_prompt(&mut rng, format!("p{i}"), tasks[i % 2])).collect()
}

fn options(scratch: &Scratch, name: &str, strategy: Strategy) -> FilterOptions {
    FilterOptions {
        strategy,
        shard: Shard::ALL,
        resume: false,
        invalid: InvalidPolicy::Refuse,
        pairs: scratch.path(&format!("{name}.jsonl")),
        audit: scratch.path(&format!("{name}.audit.jsonl")),
        judge: "scripted".into(),
    }
}

/// Runs the filter, stopping after `stop_after` prompts when given.
fn run(
    file: &CandidateFile,
    judge: &ScriptedJudgments,
    options: &FilterOptions,
    stop_after: Option<usize>,
) -> Result<FilterOutcome> {
    let stop = AtomicBool::new(stop_after == Some(0));
    run_filter(file, judge, options, &stop, |done, _, _| {
        if Some(done) == stop_after {
            stop.store(true, Ordering::SeqCst);
        }
    })
}

fn files(options: &FilterOptions) -> [Vec<u8>; 3] {
    let progress = PathBuf::from(format!("{}.progress", options.pairs.display()));
    [&options.pairs, &options.audit, &progress].map(|p| std::fs::read(p).unwrap())
}

fn append(path: &PathBuf, bytes: &[u8]) {
    std::fs::OpenOptions::new().append(true).open(path).unwrap().write_all(bytes).unwrap();
}

#[test]
fn a_run_stopped_anywhere_with_a_torn_tail_resumes_to_the_same_bytes() {
    let seed = rand::thread_rng().gen::<u64>();
    eprintln!("seed {seed}");
    let prompts = prompts(seed, 12);
    let scratch = Scratch::new("resume");
    let candidates = write_candidates(&prompts, &scratch.0, "candidates.jsonl");
    let file = read_candidates(&candidates, &scratch.0).unwrap();
    let judge = ScriptedJudgments::new(&prompts);
    for strategy in [Strategy::PairRankPointSift, Strategy::RoundRobin] {
        let straight = options(&scratch, &format!("{}-straight", strategy.name()), strategy);
        let outcome = run(&file, &judge, &straight, None).unwrap();
        assert!(!outcome.interrupted);
        let want = files(&straight);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for (attempt, stop_after) in [0, 1, rng.gen_range(2..11), 11].into_iter().enumerate() {
            let mut opts = options(&scratch, &format!("{}-{attempt}", strategy.name()), strategy);
            let first = run(&file, &judge, &opts, Some(stop_after)).unwrap();
            assert!(first.interrupted, "stopped after {stop_after}");
            // A kill while writing the next prompt: part of its audit and pair lines, part of a progress line.
            append(&opts.audit, b"{\"id\": \"p99\", \"index\": 99, \"mo");
            append(&opts.pairs, b"{\"id\": \"p9");
            append(&PathBuf::from(format!("{}.progress", opts.pairs.display())), b"{\"next\": 99, \"pairs_b");
            opts.resume = true;
            let resumed = run(&file, &judge, &opts, None).unwrap();
            assert_eq!(resumed.resumed_from, stop_after);
            assert_eq!(resumed.summary, outcome.summary);
            assert!(files(&opts) == want, "{strategy} stopped after {stop_after}: files differ");
            // Resuming a finished run changes nothing.
            run(&file, &judge, &opts, None).unwrap();
            assert!(files(&opts) == want);
        }
    }
}

#[test]
fn a_run_killed_before_its_header_was_whole_starts_over() {
    let prompts = prompts(3, 4);
    let scratch = Scratch::new("header");
    let file = read_candidates(&write_candidates(&prompts, &scratch.0, "c.jsonl"), &scratch.0).unwrap();
    let judge = ScriptedJudgments::new(&prompts);
    let straight = options(&scratch, "straight", Strategy::PairRank);
    run(&file, &judge, &straight, None).unwrap();
    let mut opts = options(&scratch, "torn", Strategy::PairRank);
    std::fs::write(&opts.pairs, b"").unwrap();
    std::fs::write(&opts.audit, b"").unwrap();
    std::fs::write(format!("{}.progress", opts.pairs.display()), b"{\"format\": \"unireward-fil").unwrap();
    opts.resume = true;
    run(&file, &judge, &opts, None).unwrap();
    assert!(files(&opts) == files(&straight));
}

#[test]
fn shards_merged_equal_the_unsharded_run() {
    let seed = rand::thread_rng().gen::<u64>();
    eprintln!("seed {seed}");
    let mut prompts = prompts(seed, 11);
    let scratch = Scratch::new("shards");
    let mut candidates = write_candidates(&prompts, &scratch.0, "c.jsonl");
    // One invalid line (a single candidate), skipped by every run.
    let mut text = std::fs::read_to_string(&candidates).unwrap();
    text.insert_str(0, "{\"id\": \"one\", \"task\": \"image_generation\", \"context\": {\"caption\": \"c\"}, \"candidates\": [\"p0_0.png\"]}\n");
    std::fs::write(&candidates, text).unwrap();
    candidates = candidates.canonicalize().unwrap();
    let file = read_candidates(&candidates, &scratch.0).unwrap();
    assert_eq!(file.invalid.len(), 1);
    prompts.truncate(11);
    let judge = ScriptedJudgments::new(&prompts);
    let mut straight = options(&scratch, "straight", Strategy::PairRankPointSift);
    straight.invalid = InvalidPolicy::Skip;
    let whole = run(&file, &judge, &straight, None).unwrap();
    assert_eq!(whole.summary.skipped, 1);
    for n in [2, 3, 5] {
        let mut shards = Vec::new();
        // Shards given out of order: the merge sorts them by their own headers.
        for i in (0..n).rev() {
            let mut opts = options(&scratch, &format!("n{n}-{i}"), Strategy::PairRankPointSift);
            opts.invalid = InvalidPolicy::Skip;
            opts.shard = Shard { index: i, count: n };
            run(&file, &judge, &opts, None).unwrap();
            shards.push(ShardOutput { pairs: opts.pairs, audit: opts.audit });
        }
        let (pairs, audit) =
            (scratch.path(&format!("merged{n}.jsonl")), scratch.path(&format!("merged{n}.audit.jsonl")));
        let summary = merge_shards(&shards, &pairs, &audit).unwrap();
        assert_eq!(summary, whole.summary);
        assert!(std::fs::read(&pairs).unwrap() == std::fs::read(&straight.pairs).unwrap(), "{n} shards: pairs differ");
        assert!(std::fs::read(&audit).unwrap() == std::fs::read(&straight.audit).unwrap(), "{n} shards: audit differs");
        // Missing a shard, or merging into existing files, is refused.
        let err =
            merge_shards(&shards[1..], &scratch.path("x.jsonl"), &scratch.path("x.audit")).unwrap_err().to_string();
        assert!(err.contains("shards were given"), "{err}");
        let err = merge_shards(&shards, &pairs, &scratch.path("y.audit")).unwrap_err().to_string();
        assert!(err.contains("exists"), "{err}");
    }
    // A shard of another run (another strategy) is refused.
    let mut foreign = options(&scratch, "foreign", Strategy::PairRank);
    foreign.invalid = InvalidPolicy::Skip;
    foreign.shard = Shard { index: 1, count: 2 };
    run(&file, &judge, &foreign, None).unwrap();
    let ours = options(&scratch, "n2-0", Strategy::PairRankPointSift);
    let mixed = [
        ShardOutput { pairs: ours.pairs, audit: ours.audit },
        ShardOutput { pairs: foreign.pairs, audit: foreign.audit },
    ];
    let err = merge_shards(&mixed, &scratch.path("m.jsonl"), &scratch.path("m.audit")).unwrap_err().to_string();
    assert!(err.contains("another run"), "{err}");
    // An unfinished shard is refused.
    let mut opts = options(&scratch, "unfinished", Strategy::PairRankPointSift);
    opts.invalid = InvalidPolicy::Skip;
    opts.shard = Shard { index: 0, count: 2 };
    run(&file, &judge, &opts, Some(1)).unwrap();
    let mut other = options(&scratch, "other-half", Strategy::PairRankPointSift);
    other.invalid = InvalidPolicy::Skip;
    other.shard = Shard { index: 1, count: 2 };
    run(&file, &judge, &other, None).unwrap();
    let shards =
        [ShardOutput { pairs: opts.pairs, audit: opts.audit }, ShardOutput { pairs: other.pairs, audit: other.audit }];
    let err = merge_shards(&shards, &scratch.path("z.jsonl"), &scratch.path("z.audit")).unwrap_err().to_string();
    assert!(err.contains("unfinished"), "{err}");
}

#[test]
fn bad_candidates_are_listed_by_line_and_nothing_is_written() {
    let scratch = Scratch::new("bad");
    let prompts = prompts(5, 2);
    let good = write_candidates(&prompts, &scratch.0, "good.jsonl");
    let good_text = std::fs::read_to_string(&good).unwrap();
    let lines = [
        r#"{"id": "few", "task": "image_generation", "context": {"caption": "c"}, "candidates": ["p0_0.png"]}"#,
        r#"{"id": "gone", "task": "image_generation", "context": {"caption": "c"}, "candidates": ["p0_0.png", "missing.png"]}"#,
        r#"{"id": "what", "task": "audio_generation", "context": {"caption": "c"}, "candidates": ["a", "b"]}"#,
        r#"{"id": "noq", "task": "image_understanding", "context": {"image": "p1.png"}, "candidates": ["a", "b"]}"#,
        r#"{"id": "p0", "task": "image_generation", "context": {"caption": "c"}, "candidates": ["p0_0.png", "p0_1.png"]}"#,
        r#"not json"#,
    ];
    let path = scratch.path("bad.jsonl");
    std::fs::write(&path, format!("{good_text}{}\n", lines.join("\n"))).unwrap();
    let file = read_candidates(&path, &scratch.0).unwrap();
    let reasons: Vec<(usize, &str)> = file.invalid.iter().map(|p| (p.line, p.reason.as_str())).collect();
    let expect = [
        (3, "between 2 and"),
        (4, "missing.png does not exist"),
        (5, "unknown task `audio_generation`"),
        (6, "`context.question` is missing"),
        (7, "repeats line 1"),
        (8, "expected ident"),
    ];
    assert_eq!(reasons.len(), expect.len(), "{reasons:?}");
    for ((line, reason), (want_line, want)) in reasons.iter().zip(expect) {
        assert_eq!(*line, want_line);
        assert!(reason.contains(want), "line {line}: {reason}");
    }
    let judge = ScriptedJudgments::new(&prompts);
    let opts = options(&scratch, "bad-out", Strategy::PairRankPointSift);
    let err = run(&file, &judge, &opts, None).unwrap_err().to_string();
    assert!(
        err.contains("6 invalid prompts") && err.contains("bad.jsonl line 4") && err.contains("--skip-invalid"),
        "{err}"
    );
    assert!(!opts.pairs.exists() && !opts.audit.exists());
    let mut skip = opts.clone();
    skip.invalid = InvalidPolicy::Skip;
    let outcome = run(&file, &judge, &skip, None).unwrap();
    assert_eq!((outcome.summary.prompts, outcome.summary.skipped), (2, 6));

    // A judge that cannot do a task refuses its prompts up front.
    let mut refusing = ScriptedJudgments::new(&prompts);
    refusing.refuses = vec![Task::ImageUnderstanding];
    let file = read_candidates(&good, &scratch.0).unwrap();
    let opts = options(&scratch, "refused", Strategy::PairRankPointSift);
    let err = run(&file, &refusing, &opts, None).unwrap_err().to_string();
    assert!(err.contains("line 2: this judge cannot do image_understanding"), "{err}");
    assert!(!opts.pairs.exists());
}

#[test]
fn existing_outputs_and_corrupt_or_foreign_progress_files_are_refused_unchanged() {
    let scratch = Scratch::new("corrupt");
    let prompts = prompts(9, 6);
    let file = read_candidates(&write_candidates(&prompts, &scratch.0, "c.jsonl"), &scratch.0).unwrap();
    let judge = ScriptedJudgments::new(&prompts);
    let mut opts = options(&scratch, "out", Strategy::PairRankPointSift);
    run(&file, &judge, &opts, Some(3)).unwrap();
    let before = files(&opts);
    let err = run(&file, &judge, &opts, None).unwrap_err().to_string();
    assert!(err.contains("exists: pass --resume"), "{err}");
    assert!(files(&opts) == before);

    opts.resume = true;
    let mut other = opts.clone();
    other.strategy = Strategy::PairRank;
    let err = run(&file, &judge, &other, None).unwrap_err().to_string();
    assert!(err.contains("belongs to another run"), "{err}");
    assert!(files(&opts) == before);

    let progress = PathBuf::from(format!("{}.progress", opts.pairs.display()));
    let mut text = std::fs::read_to_string(&progress).unwrap();
    text.insert_str(text.find('\n').unwrap() + 1, "{\"next\": \"two\"}\n");
    std::fs::write(&progress, &text).unwrap();
    let err = run(&file, &judge, &opts, None).unwrap_err().to_string();
    assert!(err.contains("corrupt filter progress file") && err.contains("line 2"), "{err}");
    assert!(std::fs::read(&opts.pairs).unwrap() == before[0]);

    // A pairs file shorter than its progress record says.
    std::fs::write(&progress, &before[2]).unwrap();
    let short = &before[0][..before[0].len().saturating_sub(1)];
    std::fs::write(&opts.pairs, short).unwrap();
    if !before[0].is_empty() {
        let err = run(&file, &judge, &opts, None).unwrap_err().to_string();
        assert!(err.contains("fewer") || err.contains("records"), "{err}");
    }
}
