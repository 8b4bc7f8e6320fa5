//! `SftRecordTrainer` (the trainer the C ABI and Python step on their own batches of records) against `SftRun` on
//! the same records in the same batches: bitwise the same losses, norms, learning rates and saved checkpoint; and
//! clear errors on bad input.

use std::sync::atomic::AtomicBool;

use unireward::train::run::{StepOptions, TrainOptions};
use unireward::train::sft::{SftOutcome, SftRecordTrainer, SftRun, SftStepMetrics};

mod common;
use common::Scratch;

/// `n` conversations, record `i` with an answer of `i + 1` words: strictly longer with `i`, so a run whose one
/// batch holds them all (grouped by length) orders them longest first, whatever its seed.
fn records(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let answer = vec!["yes"; i + 1].join(" ");
            format!(
                r#"{{"id": "r{i}", "conversations": [{{"from": "human", "value": "Is {i} good?"}}, {{"from": "gpt", "value": "{answer}"}}]}}"#
            )
        })
        .collect()
}

fn options(total_steps: usize) -> StepOptions {
    StepOptions { lr: 1e-3, weight_decay: 0.01, total_steps, ..StepOptions::default() }
}

/// `SftRun` for `steps` epochs of `lines` (written to the scratch's data file) in one batch of them all, with
/// [`options`]' learning rate and weight decay: the run, its outcome and its logged steps.
fn one_batch_run(scratch: &Scratch, lines: &[String], steps: usize) -> (SftRun, SftOutcome, Vec<SftStepMetrics>) {
    std::fs::write(scratch.path("data.jsonl"), lines.join("\n") + "\n").unwrap();
    let run = SftRun {
        model: scratch.path("model"),
        data: scratch.path("data.jsonl"),
        out: scratch.path("run"),
        train: TrainOptions {
            epochs: steps,
            lr: 1e-3,
            weight_decay: 0.01,
            batch_size: lines.len(),
            seed: 11,
            ..TrainOptions::default()
        },
        ..SftRun::default()
    };
    let mut logged: Vec<SftStepMetrics> = Vec::new();
    let outcome = run.run(&AtomicBool::new(false), |m, _| logged.push(m.clone())).unwrap();
    (run, outcome, logged)
}

#[test]
fn record_steps_equal_a_run_on_the_same_batches_bitwise() {
    let scratch = Scratch::new("sft-records");
    let (n, steps) = (4, 5);
    let lines = records(n);
    let (run, outcome, logged) = one_batch_run(&scratch, &lines, steps);
    assert_eq!(outcome.steps_done, steps as u64);

    let mut trainer = SftRecordTrainer::new(&scratch.path("model"), &options(steps)).unwrap();
    let batch: Vec<&str> = lines.iter().rev().map(String::as_str).collect();
    for want in &logged {
        let got = trainer.step(std::slice::from_ref(&batch)).unwrap();
        assert_eq!((got.step, got.tokens), (want.step, want.tokens));
        assert_eq!(got.loss.to_bits(), want.loss.to_bits(), "step {}: loss {} vs {}", got.step, got.loss, want.loss);
        assert_eq!(got.grad_norm.map(f64::to_bits), want.grad_norm.map(f64::to_bits), "step {}", got.step);
        assert_eq!(got.lr.to_bits(), want.lr.to_bits(), "step {}", got.step);
    }
    assert!(logged.last().unwrap().loss < logged[0].loss, "the loss should fall: {logged:?}");
    let saved = trainer.save(&scratch.path("records")).unwrap();
    assert_eq!(saved, scratch.path(&format!("records/checkpoint-{steps}")));
    for file in ["model.safetensors", "trainer_state/optimizer.safetensors", "config.json", "tokenizer.json"] {
        let read = |dir: &std::path::Path| std::fs::read(dir.join(file)).unwrap();
        assert!(read(&saved) == read(&outcome.checkpoint), "{file} differs from the run's");
    }

    // The run refuses to resume from it: it has no loader position.
    let mut resume = run.clone();
    resume.out = scratch.path("records");
    resume.train.resume = true;
    let err = resume.run(&AtomicBool::new(false), |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("no data-loader position"), "{err}");
}

#[test]
fn accumulation_over_micro_batches_is_one_step_on_their_concatenation() {
    let scratch = Scratch::new("sft-records-accum");
    let lines = records(4);
    let all: Vec<&str> = lines.iter().map(String::as_str).collect();
    let mut whole = SftRecordTrainer::new(&scratch.path("model"), &options(2)).unwrap();
    let mut parts = SftRecordTrainer::new(&scratch.path("model"), &options(2)).unwrap();
    for _ in 0..2 {
        let a = whole.step(std::slice::from_ref(&all)).unwrap();
        let b = parts.step(&[all[..1].to_vec(), all[1..].to_vec()]).unwrap();
        assert_eq!(a.tokens, b.tokens);
        assert!((a.loss - b.loss).abs() <= 1e-5 * a.loss, "{} vs {}", a.loss, b.loss);
    }
}

#[test]
fn bad_input_is_a_clear_error_and_changes_nothing() {
    let scratch = Scratch::new("sft-records-bad");
    let missing = SftRecordTrainer::new(&scratch.path("no-such-model"), &options(3)).unwrap_err().to_string();
    assert!(missing.contains("no-such-model") && missing.contains("does not exist"), "{missing}");
    let no_steps = SftRecordTrainer::new(&scratch.path("model"), &options(0)).unwrap_err().to_string();
    assert!(no_steps.contains("`total_steps`"), "{no_steps}");
    let bad_lr = StepOptions { lr: -1.0, ..options(3) };
    let err = SftRecordTrainer::new(&scratch.path("model"), &bad_lr).unwrap_err().to_string();
    assert!(err.contains("lr"), "{err}");

    let mut trainer = SftRecordTrainer::new(&scratch.path("model"), &options(1)).unwrap();
    let good = records(2);
    let cases = [
        ("{not json", "`micro_batches[0][1]`: not a JSON object"),
        (r#"{"conversations": [{"from": "human", "value": "Hi?"}]}"#, "`micro_batches[0][1]`: no assistant"),
        (r#"{"conversations": "hello"}"#, "`conversations` is a string"),
        (
            r#"{"image": "cat.png", "conversations": [{"from": "human", "value": "<image> ok?"}, {"from": "gpt", "value": "Yes."}]}"#,
            "cat.png",
        ),
    ];
    for (bad, want) in cases {
        let err = trainer.step(&[vec![good[0].as_str(), bad]]).unwrap_err().to_string();
        assert!(err.contains(want), "{bad}: {err}");
    }
    let long = format!(
        r#"{{"conversations": [{{"from": "human", "value": "{}"}}, {{"from": "gpt", "value": "a"}}]}}"#,
        "word ".repeat(3000)
    );
    let err = trainer.step(&[vec![long.as_str()]]).unwrap_err().to_string();
    assert!(err.contains("more than the maximum length"), "{err}");
    let err = trainer.step(&[vec![]]).unwrap_err().to_string();
    assert!(err.contains("`micro_batches[0]` holds no record"), "{err}");
    assert_eq!(trainer.trainer().optimizer().steps_done(), 0, "a refused step counted");

    trainer.step(&[vec![good[0].as_str()]]).unwrap();
    let err = trainer.step(&[vec![good[0].as_str()]]).unwrap_err().to_string();
    assert!(err.contains("`total_steps`"), "{err}");
}

/// Two steps, `save`, a new trainer with `resume_from` that checkpoint, two more steps: bitwise the four steps of an
/// uninterrupted trainer (metrics, weights and optimizer state); a resume with other options is refused.
#[test]
fn a_saved_trainer_resumes_bitwise() {
    let scratch = Scratch::new("sft-records-resume");
    let lines = records(4);
    let batches: Vec<Vec<&str>> = (0..4).map(|k| vec![lines[k].as_str(), lines[(k + 1) % 4].as_str()]).collect();
    let mut whole = SftRecordTrainer::new(&scratch.path("model"), &options(4)).unwrap();
    let want: Vec<_> = batches.iter().map(|b| whole.step(std::slice::from_ref(b)).unwrap()).collect();
    let mut first = SftRecordTrainer::new(&scratch.path("model"), &options(4)).unwrap();
    for b in &batches[..2] {
        first.step(std::slice::from_ref(b)).unwrap();
    }
    let saved = first.save(&scratch.path("first")).unwrap();
    drop(first);
    let resumed = StepOptions { resume_from: Some(saved.clone()), ..options(4) };
    let mut second = SftRecordTrainer::new(&scratch.path("model"), &resumed).unwrap();
    assert_eq!(second.trainer().optimizer().steps_done(), 2);
    for (b, want) in batches[2..].iter().zip(&want[2..]) {
        let got = second.step(std::slice::from_ref(b)).unwrap();
        assert_eq!(
            (got.step, got.loss.to_bits(), got.lr.to_bits()),
            (want.step, want.loss.to_bits(), want.lr.to_bits())
        );
        assert_eq!(got.grad_norm.map(f64::to_bits), want.grad_norm.map(f64::to_bits), "step {}", got.step);
    }
    let (a, b) = (whole.save(&scratch.path("whole")).unwrap(), second.save(&scratch.path("second")).unwrap());
    for file in ["model.safetensors", "trainer_state/optimizer.safetensors"] {
        assert!(std::fs::read(a.join(file)).unwrap() == std::fs::read(b.join(file)).unwrap(), "{file} differs");
    }

    let other_length = StepOptions { resume_from: Some(saved), ..options(5) };
    let err = SftRecordTrainer::new(&scratch.path("model"), &other_length).unwrap_err().to_string();
    assert!(err.contains("4 steps") && err.contains("this one has 5"), "{err}");
    let missing = StepOptions { resume_from: Some(scratch.path("no-such-checkpoint")), ..options(4) };
    let err = SftRecordTrainer::new(&scratch.path("model"), &missing).unwrap_err().to_string();
    assert!(err.contains("`resume_from`") && err.contains("no-such-checkpoint"), "{err}");
    let not_a_checkpoint = StepOptions { resume_from: Some(scratch.path("model")), ..options(4) };
    let err = SftRecordTrainer::new(&scratch.path("model"), &not_a_checkpoint).unwrap_err().to_string();
    assert!(err.contains("trainer_state"), "{err}");
}

/// [`records`] with a `task` field: even records of task `a`, odd ones of task `b`.
fn tasked_records(n: usize) -> Vec<String> {
    records(n)
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.replacen('{', &format!(r#"{{"task": "{}", "#, ["a", "b"][i % 2]), 1))
        .collect()
}

#[test]
fn per_task_losses_equal_a_run_on_the_same_batches_bitwise() {
    let scratch = Scratch::new("sft-records-tasks");
    let (lines, steps) = (tasked_records(4), 3);
    let (_, _, logged) = one_batch_run(&scratch, &lines, steps);

    // A step on a's records alone: b's loss is absent, and the tokens are a's.
    let mut only_a = SftRecordTrainer::new(&scratch.path("model"), &options(1)).unwrap();
    only_a.set_tasks(&["a", "b"]).unwrap();
    let got = only_a.step(&[vec![lines[0].as_str(), lines[2].as_str()]]).unwrap();
    assert!(got.task_loss[0].is_some() && got.task_loss[1].is_none(), "{:?}", got.task_loss);
    let a_tokens = got.tokens as f64;

    // The run numbers its tasks in the order the file names them (a, b); the trainer in the order given (b, a).
    let mut trainer = SftRecordTrainer::new(&scratch.path("model"), &options(steps)).unwrap();
    trainer.set_tasks(&["b", "a"]).unwrap();
    assert_eq!(trainer.tasks(), ["b", "a"]);
    assert!(trainer.last_task_loss().is_empty());
    let batch: Vec<&str> = lines.iter().rev().map(String::as_str).collect();
    for want in &logged {
        let got = trainer.step(std::slice::from_ref(&batch)).unwrap();
        assert_eq!(got.loss.to_bits(), want.loss.to_bits(), "step {}", got.step);
        let bits = |l: &[Option<f64>]| l.iter().map(|l| l.map(f64::to_bits)).collect::<Vec<_>>();
        assert_eq!(bits(&got.task_loss), bits(&[want.task_loss[1], want.task_loss[0]]), "step {}", got.step);
        assert_eq!(trainer.last_task_loss(), got.task_loss.as_slice());
        // Each task's mean over its tokens, weighted by them, is the step's mean.
        let b_tokens = got.tokens as f64 - a_tokens;
        let [b, a] = [0, 1].map(|k| got.task_loss[k].unwrap());
        let mean = (a * a_tokens + b * b_tokens) / (a_tokens + b_tokens);
        assert!((mean - got.loss).abs() <= 1e-12 * got.loss, "{mean} vs {}", got.loss);
    }
}

#[test]
fn tasks_are_checked_and_without_a_list_every_record_is_one_task() {
    let scratch = Scratch::new("sft-records-task-errors");
    let lines = tasked_records(3);
    let untasked = records(1);
    let mut trainer = SftRecordTrainer::new(&scratch.path("model"), &options(2)).unwrap();
    for (tasks, want) in [
        (&[][..], "the task list is empty"),
        (&["a", ""][..], "`tasks[1]` is empty"),
        (&["a", "b", "a"][..], "`tasks[2]` (\"a\") is named twice"),
    ] {
        let err = trainer.set_tasks(tasks).unwrap_err().to_string();
        assert!(err.contains(want), "{tasks:?}: {err}");
        assert!(trainer.tasks().is_empty(), "a refused list was kept");
    }
    // No list: records of two tasks (and of none) are one task.
    let got = trainer.step(&[vec![lines[0].as_str(), lines[1].as_str(), untasked[0].as_str()]]).unwrap();
    assert_eq!(got.task_loss.len(), 1);
    assert_eq!(got.task_loss[0].map(f64::to_bits), Some(got.loss.to_bits()));

    trainer.set_tasks(&["a"]).unwrap();
    let err = trainer.step(&[vec![lines[0].as_str()], vec![lines[2].as_str(), lines[1].as_str()]]).unwrap_err();
    assert!(
        err.to_string().contains("`micro_batches[1][1]` is of task \"b\", not one of the trainer's tasks [\"a\"]"),
        "{err}"
    );
    let err = trainer.step(&[vec![lines[0].as_str(), untasked[0].as_str()]]).unwrap_err().to_string();
    assert!(err.contains("`micro_batches[0][1]` has no `task` field"), "{err}");
    assert_eq!(trainer.trainer().optimizer().steps_done(), 1, "a refused step counted");
}

/// A record within `--max-len` but longer than the model's positions (the fixture takes 64 tokens) is a bad record
/// like any too-long one: the run skips and reports it by line, the stepped trainer refuses it by name, before
/// anything runs — not a shape error in the middle of a run.
#[test]
fn a_record_longer_than_the_model_takes_is_a_bad_record() {
    let scratch = Scratch::new("sft-records-positions");
    let long = format!(
        r#"{{"conversations": [{{"from": "human", "value": "{}?"}}, {{"from": "gpt", "value": "yes"}}]}}"#,
        "good ".repeat(80)
    );
    let mut lines = records(3);
    lines.insert(1, long.clone());
    std::fs::write(scratch.path("data.jsonl"), lines.join("\n") + "\n").unwrap();
    let run = SftRun {
        model: scratch.path("model"),
        data: scratch.path("data.jsonl"),
        out: scratch.path("run"),
        train: TrainOptions { epochs: 1, lr: 1e-3, batch_size: 4, ..TrainOptions::default() },
        ..SftRun::default()
    };
    let outcome = run.run(&AtomicBool::new(false), |_, _| {}).unwrap();
    assert_eq!((outcome.data.kept(), outcome.data.bad.len()), (3, 1), "{:?}", outcome.data);
    let bad = outcome.data.bad[0].to_string();
    assert!(bad.contains("line 2") && bad.contains("more than the maximum length 64"), "{bad}");

    let mut trainer = SftRecordTrainer::new(&scratch.path("model"), &options(1)).unwrap();
    let err = trainer.step(&[vec![lines[0].as_str(), long.as_str()]]).unwrap_err().to_string();
    assert!(err.contains("`micro_batches[0][1]`") && err.contains("more than the maximum length 64"), "{err}");
    assert_eq!(trainer.trainer().optimizer().steps_done(), 0);
}
