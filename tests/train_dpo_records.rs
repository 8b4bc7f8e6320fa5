//! `DpoRecordTrainer` (the DPO trainer stepped on its caller's pair records) against `DpoRun` with the reference
//! on the fly, on the same pairs in the same batches: bitwise the same losses, metrics and saved checkpoint; a
//! reference-free loss loads no reference; bad input is a clear error.

use std::sync::atomic::AtomicBool;

use unireward::ops::preference::{DpoConfig, DpoLossType};
use unireward::train::dpo::{DpoRecordTrainer, DpoRun, DpoStepMetrics, ReferenceSource};
use unireward::train::run::{StepOptions, TrainOptions};

mod common;
use common::Scratch;

/// `n` pairs, pair `i` with a chosen answer of `i + 1` words: strictly longer with `i`, so a run whose one batch
/// holds them all (grouped by length) orders them longest first, whatever its seed.
fn pairs(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let chosen = vec!["yes"; i + 1].join(" ");
            format!(r#"{{"prompt": "Is {i} good?", "chosen": "{chosen}", "rejected": "No."}}"#)
        })
        .collect()
}

fn options(total_steps: usize) -> StepOptions {
    StepOptions { lr: 1e-3, total_steps, ..StepOptions::default() }
}

#[test]
fn record_steps_equal_a_run_with_the_reference_on_the_fly_bitwise() {
    let scratch = Scratch::new("dpo-records");
    let (n, steps) = (3, 4);
    let lines = pairs(n);
    std::fs::write(scratch.path("pairs.jsonl"), lines.join("\n") + "\n").unwrap();
    let loss = DpoConfig { beta: 0.5, label_smoothing: 0.1, ..DpoConfig::default() };
    let run = DpoRun {
        policy: scratch.path("model"),
        pairs: scratch.path("pairs.jsonl"),
        out: scratch.path("run"),
        reference_on_the_fly: true,
        loss,
        train: TrainOptions { epochs: steps, lr: 1e-3, batch_size: n, seed: 5, ..TrainOptions::default() },
        ..DpoRun::default()
    };
    let mut logged: Vec<DpoStepMetrics> = Vec::new();
    let outcome = run.run(&AtomicBool::new(false), |m, _| logged.push(m.clone())).unwrap();
    assert_eq!((outcome.steps_done, outcome.reference), (steps as u64, ReferenceSource::OnTheFly));

    let mut trainer = DpoRecordTrainer::new(&scratch.path("model"), None, loss, &options(steps)).unwrap();
    let batch: Vec<&str> = lines.iter().rev().map(String::as_str).collect();
    for want in &logged {
        let got = trainer.step(std::slice::from_ref(&batch)).unwrap();
        assert_eq!(got.loss.to_bits(), want.loss.to_bits(), "step {}: loss {} vs {}", got.step, got.loss, want.loss);
        assert_eq!(got.log_line(), want.log_line(), "step {}", got.step);
    }
    assert!(logged.last().unwrap().loss < logged[0].loss, "the loss should fall: {logged:?}");
    let saved = trainer.save(&scratch.path("records")).unwrap();
    for file in ["model.safetensors", "trainer_state/optimizer.safetensors", "config.json"] {
        let read = |dir: &std::path::Path| std::fs::read(dir.join(file)).unwrap();
        assert!(read(&saved) == read(&outcome.checkpoint), "{file} differs from the run's");
    }
}

#[test]
fn a_reference_free_loss_trains_without_a_reference() {
    let scratch = Scratch::new("dpo-records-simpo");
    let lines = pairs(2);
    let batch: Vec<&str> = lines.iter().map(String::as_str).collect();
    let loss = DpoConfig { loss_type: DpoLossType::Simpo, beta: 2.0, ..DpoConfig::default() };
    // A reference folder that does not hold a checkpoint: never loaded for SimPO.
    let mut trainer = DpoRecordTrainer::new(&scratch.path("model"), Some(&scratch.0), loss, &options(2)).unwrap();
    let first = trainer.step(std::slice::from_ref(&batch)).unwrap();
    assert!(first.loss.is_finite() && first.pairs == 2, "{first:?}");
}

#[test]
fn bad_input_is_a_clear_error_and_changes_nothing() {
    let scratch = Scratch::new("dpo-records-bad");
    let model = scratch.path("model");
    let err = DpoRecordTrainer::new(&scratch.path("none"), None, DpoConfig::default(), &options(2)).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    let err = DpoRecordTrainer::new(&model, Some(&scratch.path("no-ref")), DpoConfig::default(), &options(2))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no-ref"), "{err}");
    let bad_beta = DpoConfig { beta: 0.0, ..DpoConfig::default() };
    let err = DpoRecordTrainer::new(&model, None, bad_beta, &options(2)).unwrap_err().to_string();
    assert!(err.contains("beta"), "{err}");

    let mut trainer = DpoRecordTrainer::new(&model, None, DpoConfig::default(), &options(1)).unwrap();
    let good = pairs(1);
    for (bad, want) in [
        ("[1, 2]", "`micro_batches[0][1]`: not a JSON object"),
        (r#"{"prompt": "Hi?", "chosen": "Yes."}"#, "`micro_batches[0][1]`"),
        (r#"{"prompt": "Hi?", "chosen": "Yes.", "rejected": " "}"#, "`rejected` is empty"),
    ] {
        let err = trainer.step(&[vec![good[0].as_str(), bad]]).unwrap_err().to_string();
        assert!(err.contains(want), "{bad}: {err}");
    }
    assert_eq!(trainer.trainer().optimizer().steps_done(), 0, "a refused step counted");
    trainer.step(&[vec![good[0].as_str()]]).unwrap();
    let err = trainer.step(&[vec![good[0].as_str()]]).unwrap_err().to_string();
    assert!(err.contains("`total_steps`"), "{err}");
}

/// BCO pair loss (its running mean is trainer state): two steps, `save`, a new trainer with `resume_from` that
/// checkpoint, two more steps — bitwise the four steps of an uninterrupted trainer, whose reference stays the policy
/// as the run started (not the checkpoint).
#[test]
fn a_saved_trainer_resumes_bitwise_with_its_reference_and_bco_mean() {
    let scratch = Scratch::new("dpo-records-resume");
    let lines = pairs(4);
    let batches: Vec<Vec<&str>> = (0..4).map(|k| vec![lines[k].as_str(), lines[(k + 2) % 4].as_str()]).collect();
    let loss = DpoConfig { loss_type: DpoLossType::BcoPair, beta: 0.5, ..DpoConfig::default() };
    let new = |options: &StepOptions| DpoRecordTrainer::new(&scratch.path("model"), None, loss, options).unwrap();
    let mut whole = new(&options(4));
    let want: Vec<_> = batches.iter().map(|b| whole.step(std::slice::from_ref(b)).unwrap()).collect();
    let mut first = new(&options(4));
    for b in &batches[..2] {
        first.step(std::slice::from_ref(b)).unwrap();
    }
    let saved = first.save(&scratch.path("first")).unwrap();
    drop(first);
    let mut second = new(&StepOptions { resume_from: Some(saved), ..options(4) });
    for (b, want) in batches[2..].iter().zip(&want[2..]) {
        let got = second.step(std::slice::from_ref(b)).unwrap();
        assert_eq!(got.loss.to_bits(), want.loss.to_bits(), "step {}: loss {} vs {}", got.step, got.loss, want.loss);
        assert_eq!(got.log_line(), want.log_line(), "step {}", got.step);
    }
    let (a, b) = (whole.save(&scratch.path("whole")).unwrap(), second.save(&scratch.path("second")).unwrap());
    for file in ["model.safetensors", "trainer_state/optimizer.safetensors", "trainer_state/state.json"] {
        assert!(std::fs::read(a.join(file)).unwrap() == std::fs::read(b.join(file)).unwrap(), "{file} differs");
    }
}
