//! `DpoRun` on a checkpoint assembled from fixtures (the Qwen2 model `tests/fixtures/qwen2/chat_tied` with the
//! tokenizer and chat template of `tests/fixtures/qwen2/tokenizer`) and a generated pair file: the reference cache is
//! written once and reused, a cache of another pair file, reference or LD-DPO `ld_alpha` is refused with nothing
//! written, a run stopped mid-epoch resumes to bitwise-equal parameters, the on-the-fly reference trains the same
//! model (with and without LD-DPO), and bad input is refused before anything is written.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rand::Rng;
use unireward::model::Qwen2Model;
use unireward::ops::preference::DpoConfig;
use unireward::train::data::BadRecordPolicy;
use unireward::train::dpo::reference::CACHE_FILE;
use unireward::train::dpo::{DpoOutcome, DpoRun, ReferenceSource};
use unireward::train::run::TrainOptions;
use unireward::{DType, Device};

mod common;

use common::{pairs, Scratch};

/// The scratch checkpoint and 10 pairs, and a run over them into `out`.
fn scratch(name: &str) -> Scratch {
    let scratch = Scratch::new(&format!("dpo-run-{name}"));
    std::fs::write(scratch.path("pairs.jsonl"), pairs(10)).unwrap();
    scratch
}

fn dpo_run(scratch: &Scratch, out: &str) -> DpoRun {
    DpoRun {
        policy: scratch.path("model"),
        pairs: scratch.path("pairs.jsonl"),
        out: scratch.path(out),
        loss: DpoConfig { beta: 0.5, ..DpoConfig::default() },
        train: TrainOptions {
            epochs: 3,
            lr: 1e-3,
            batch_size: 2,
            grad_accum: 1,
            seed: 11,
            save_every: 0,
            ..TrainOptions::default()
        },
        ..DpoRun::default()
    }
}

fn train(run: &DpoRun) -> DpoOutcome {
    run.run(&AtomicBool::new(false), |_, _| {}).unwrap()
}

fn weights(outcome: &DpoOutcome) -> Vec<u8> {
    std::fs::read(outcome.checkpoint.join("model.safetensors")).unwrap()
}

/// Every file under `dir` with its bytes, sorted.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn the_reference_cache_is_reused_and_a_stale_one_refused() {
    let scratch = scratch("cache");
    let run = dpo_run(&scratch, "out");
    let first = train(&run);
    assert_eq!((first.reference, first.steps_done, first.total_steps), (ReferenceSource::Computed, 15, 15));
    assert!(scratch.path("out").join(CACHE_FILE).is_file());
    let again = train(&run);
    assert_eq!(again.reference, ReferenceSource::Cached);
    assert!(weights(&again) == weights(&first), "the cached reference trained another model");

    let before = snapshot(&scratch.path("out"));
    std::fs::write(scratch.path("pairs.jsonl"), pairs(10).replace("Best 3?", "Best 33?")).unwrap();
    let err = run.run(&AtomicBool::new(false), |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("computed from another pair file") && err.contains(CACHE_FILE), "{err}");
    std::fs::write(scratch.path("pairs.jsonl"), pairs(10)).unwrap();
    let other_reference = DpoRun { reference: Some(first.checkpoint.clone()), ..run.clone() };
    let err = other_reference.run(&AtomicBool::new(false), |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("computed from another reference checkpoint"), "{err}");
    let ld = DpoRun { loss: DpoConfig { ld_alpha: Some(0.5), ..run.loss }, ..run.clone() };
    let err = ld.run(&AtomicBool::new(false), |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("computed from another `ld_alpha`"), "{err}");
    assert!(snapshot(&scratch.path("out")) == before, "a refused run wrote into --out");
}

#[test]
fn a_run_stopped_mid_epoch_resumes_to_bitwise_equal_parameters() {
    let scratch = scratch("resume");
    let straight = train(&dpo_run(&scratch, "straight"));
    // 5 batches an epoch, 15 steps: most stops fall inside an epoch.
    let stop_at = rand::thread_rng().gen_range(1..15u64);
    let run = DpoRun {
        train: TrainOptions { save_every: 4, ..dpo_run(&scratch, "stopped").train },
        ..dpo_run(&scratch, "stopped")
    };
    let stop = AtomicBool::new(false);
    let stopped = run
        .run(&stop, |m, _| {
            if m.step == stop_at {
                stop.store(true, Ordering::SeqCst);
            }
        })
        .unwrap();
    assert!(stopped.interrupted && stopped.steps_done == stop_at, "{stopped:?}");
    assert!(stopped.checkpoint.ends_with(format!("checkpoint-{stop_at}")));
    let resumed = DpoRun { train: TrainOptions { resume: true, ..run.train.clone() }, ..run.clone() };
    let mut first_step = None;
    let done = resumed
        .run(&AtomicBool::new(false), |m, _| {
            first_step.get_or_insert(m.step);
        })
        .unwrap();
    assert_eq!((first_step, done.reference), (Some(stop_at + 1), ReferenceSource::Cached));
    assert!(weights(&done) == weights(&straight), "resumed after step {stop_at}: weights differ");
}

#[test]
fn the_on_the_fly_reference_trains_the_same_model() {
    for ld_alpha in [None, Some(0.5)] {
        on_the_fly_reference_trains_the_same_model(ld_alpha);
    }
}

fn on_the_fly_reference_trains_the_same_model(ld_alpha: Option<f32>) {
    let scratch = scratch(&format!("on-the-fly-{ld_alpha:?}"));
    let with_loss = |run: DpoRun| DpoRun { loss: DpoConfig { ld_alpha, ..run.loss }, ..run };
    let cached = train(&with_loss(dpo_run(&scratch, "cached")));
    let run = with_loss(DpoRun { reference_on_the_fly: true, ..dpo_run(&scratch, "fly") });
    let fly = train(&run);
    assert_eq!(fly.reference, ReferenceSource::OnTheFly);
    assert!(!scratch.path("fly").join(CACHE_FILE).exists());
    let load = |o: &DpoOutcome| Qwen2Model::load(&o.checkpoint, DType::F32, Device::Cpu).unwrap();
    let (a, b) = (load(&cached), load(&fly));
    // The reference ran in other batches (other padding): equal up to f32 rounding, not bitwise.
    for ((name, x), (_, y)) in a.weights.named().into_iter().zip(b.weights.named()) {
        let (x, y) = (x.to_vec::<f32>().unwrap(), y.to_vec::<f32>().unwrap());
        for (i, (p, q)) in x.iter().zip(&y).enumerate() {
            assert!((p - q).abs() <= 1e-5 * p.abs().max(1e-2), "`{name}`[{i}]: {p} vs {q}");
        }
    }
}

#[test]
fn bad_input_is_refused_before_anything_is_written() {
    let scratch = scratch("errors");
    let refused = |run: &DpoRun| {
        let err = run.run(&AtomicBool::new(false), |_, _| {}).expect_err("must be refused").to_string();
        assert!(!run.out.exists(), "{} was written for: {err}", run.out.display());
        err
    };
    let mut run = dpo_run(&scratch, "out");
    run.loss.beta = 0.0;
    assert!(refused(&run).contains("`--beta` must be finite and > 0, got 0"));
    run.loss.beta = -1.0;
    assert!(refused(&run).contains("`--beta`"));
    run = dpo_run(&scratch, "out");
    run.train.grad_accum = 0;
    assert!(refused(&run).contains("`--grad-accum` must be at least 1"));

    std::fs::write(scratch.path("pairs.jsonl"), "{\"prompt\": \"Q\", \"chosen\": \"A\"}\n{\"prompt\": \"Q\"}\n")
        .unwrap();
    let err = refused(&dpo_run(&scratch, "out"));
    assert!(
        err.contains("no usable pair (2 records, 2 left out; first:") && err.contains("line 1: no `rejected`"),
        "{err}"
    );
    std::fs::write(scratch.path("pairs.jsonl"), r#"{"prompt": "Q", "chosen": " ", "rejected": "B"}"#).unwrap();
    assert!(refused(&dpo_run(&scratch, "out")).contains("`chosen` is empty"));
    std::fs::write(scratch.path("pairs.jsonl"), pairs(4) + r#"{"prompt": "Q", "chosen": "A", "rejected": ""}"#)
        .unwrap();
    let mut run = dpo_run(&scratch, "out");
    run.train.bad_records = BadRecordPolicy::Refuse;
    let err = refused(&run);
    assert!(err.contains("line 5: `rejected` is empty"), "{err}");
    std::fs::write(scratch.path("pairs.jsonl"), "").unwrap();
    assert!(refused(&dpo_run(&scratch, "out")).contains("no usable pair (0 records"));
}
