//! `RewardRecordTrainer` (the reward trainer the C ABI and Python step on their own batches of records) against
//! `RewardRun` on the same records in the same batches: bitwise the same metrics, norms, learning rates and saved
//! checkpoint, for pairs (Bradley–Terry with margins) and ranked lists (Plackett–Luce); a resumed trainer continues
//! bitwise; and clear errors on bad input, with nothing updated.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use unireward::ops::preference::KwiseMethod;
use unireward::train::reward::{RewardData, RewardLoss, RewardRecordTrainer, RewardRun, RewardStepMetrics};
use unireward::train::run::{StepOptions, TrainOptions};

mod common;
use common::Scratch;

/// `n` pairs, record `i` with a chosen answer of `i + 1` words and a margin: strictly longer with `i`, so a run whose
/// one batch holds them all (grouped by length) orders them longest first, whatever its seed.
fn pair_records(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let chosen = vec!["yes"; i + 1].join(" ");
            let margin = 0.25 * i as f64;
            format!(r#"{{"prompt": "Is {i} good?", "chosen": "{chosen}", "rejected": "no", "margin": {margin}}}"#)
        })
        .collect()
}

/// `n` ranked lists of 3 responses, strictly longer with `i` as [`pair_records`].
fn ranking_records(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let best = vec!["yes"; i + 1].join(" ");
            format!(r#"{{"prompt": "Rank {i}?", "responses": ["{best}", "maybe", "no"]}}"#)
        })
        .collect()
}

fn options(total_steps: usize) -> StepOptions {
    StepOptions { lr: 1e-3, weight_decay: 0.01, total_steps, ..StepOptions::default() }
}

fn assert_same_steps(got: &RewardStepMetrics, want: &RewardStepMetrics) {
    assert_eq!((got.step, got.groups, got.tokens), (want.step, want.groups, want.tokens));
    let bits = |m: &RewardStepMetrics| {
        let x = m.metrics;
        [x.loss, x.accuracy, x.rewards_chosen, x.rewards_rejected, x.margin, m.lr].map(f64::to_bits)
    };
    assert_eq!(bits(got), bits(want), "step {}: {got:?} vs {want:?}", got.step);
    assert_eq!(got.grad_norm.map(f64::to_bits), want.grad_norm.map(f64::to_bits), "step {}", got.step);
}

/// A run of `steps` epochs of one batch holding all of `lines` in `data`'s format, then the record trainer on the
/// same batch (longest first) for as many steps: bitwise the same, and the same checkpoint files.
fn records_equal_the_run(name: &str, lines: &[String], data: fn(std::path::PathBuf) -> RewardData, loss: RewardLoss) {
    let scratch = Scratch::new(name);
    let steps = 4;
    std::fs::write(scratch.path("data.jsonl"), lines.join("\n") + "\n").unwrap();
    let run = RewardRun {
        model: scratch.path("model"),
        data: data(scratch.path("data.jsonl")),
        out: scratch.path("run"),
        loss,
        train: TrainOptions {
            epochs: steps,
            lr: 1e-3,
            weight_decay: 0.01,
            batch_size: lines.len(),
            ..TrainOptions::default()
        },
        ..RewardRun::default()
    };
    let mut logged: Vec<RewardStepMetrics> = Vec::new();
    let outcome = run.run(&AtomicBool::new(false), |m, _| logged.push(m.clone())).unwrap();
    assert_eq!(outcome.steps_done, steps as u64);

    let mut trainer = RewardRecordTrainer::new(&scratch.path("model"), loss, &options(steps)).unwrap();
    let batch: Vec<&str> = lines.iter().rev().map(String::as_str).collect();
    for want in &logged {
        assert_same_steps(&trainer.step(std::slice::from_ref(&batch)).unwrap(), want);
    }
    assert!(logged.last().unwrap().metrics.loss < logged[0].metrics.loss, "the loss should fall: {logged:?}");
    let saved = trainer.save(&scratch.path("records")).unwrap();
    assert_eq!(saved, scratch.path(&format!("records/checkpoint-{steps}")));
    for file in ["model.safetensors", "trainer_state/optimizer.safetensors", "config.json", "tokenizer.json"] {
        let read = |dir: &Path| std::fs::read(dir.join(file)).unwrap();
        assert!(read(&saved) == read(&outcome.checkpoint), "{file} differs from the run's");
    }
}

#[test]
fn pair_steps_equal_a_bradley_terry_run_on_the_same_batches_bitwise() {
    let loss = RewardLoss::BradleyTerry { center_rewards_coefficient: Some(0.01) };
    records_equal_the_run("reward-records-pairs", &pair_records(4), RewardData::Pairs, loss);
}

#[test]
fn ranking_steps_equal_a_plackett_luce_run_on_the_same_batches_bitwise() {
    let loss = RewardLoss::Kwise(KwiseMethod::PlackettLuce);
    records_equal_the_run("reward-records-rankings", &ranking_records(3), RewardData::Rankings, loss);
}

#[test]
fn a_saved_trainer_resumes_bitwise_and_micro_batches_accumulate() {
    let scratch = Scratch::new("reward-records-resume");
    let lines = pair_records(4);
    let micro: Vec<Vec<&str>> = lines.chunks(2).map(|c| c.iter().map(String::as_str).collect()).collect();
    let loss = RewardLoss::default();
    let mut straight = RewardRecordTrainer::new(&scratch.path("model"), loss, &options(4)).unwrap();
    let mut first = RewardRecordTrainer::new(&scratch.path("model"), loss, &options(4)).unwrap();
    for _ in 0..2 {
        let (a, b) = (straight.step(&micro).unwrap(), first.step(&micro).unwrap());
        assert_same_steps(&a, &b);
        assert_eq!(a.groups, 4, "two micro-batches of two pairs");
    }
    let saved = first.save(&scratch.path("first")).unwrap();
    let resumed_options = StepOptions { resume_from: Some(saved), ..options(4) };
    let mut resumed = RewardRecordTrainer::new(&scratch.path("model"), loss, &resumed_options).unwrap();
    for _ in 0..2 {
        assert_same_steps(&resumed.step(&micro).unwrap(), &straight.step(&micro).unwrap());
    }
    let (a, b) = (resumed.save(&scratch.path("resumed")).unwrap(), straight.save(&scratch.path("straight")).unwrap());
    let read = |dir: &Path| std::fs::read(dir.join("model.safetensors")).unwrap();
    assert!(read(&a) == read(&b), "resumed weights differ");
    let err = resumed.step(&micro).unwrap_err().to_string();
    assert!(err.contains("4 steps are done"), "{err}");
}

#[test]
fn bad_records_are_named_and_nothing_is_updated() {
    let scratch = Scratch::new("reward-records-bad");
    let model = scratch.path("model");
    let pairs = pair_records(2);
    let rankings = ranking_records(2);
    let mut trainer = RewardRecordTrainer::new(&model, RewardLoss::default(), &options(3)).unwrap();
    let before = std::fs::read(trainer.save(&scratch.path("before")).unwrap().join("model.safetensors")).unwrap();
    let refused = |trainer: &mut RewardRecordTrainer, micro: &[Vec<&str>], fragment: &str| {
        let err = trainer.step(micro).unwrap_err().to_string();
        assert!(err.contains(fragment), "`{err}` does not mention `{fragment}`");
    };
    refused(&mut trainer, &[vec![pairs[0].as_str(), "not json"]], "micro_batches[0][1]");
    refused(&mut trainer, &[vec![pairs[0].as_str()], vec![rankings[0].as_str()]], "micro_batches[1][0]");
    refused(&mut trainer, &[vec![pairs[0].as_str()], vec![]], "`micro_batches[1]` holds no record");
    // A prompt with an image, for a text-only checkpoint.
    image::RgbImage::new(4, 4).save(scratch.path("x.png")).unwrap();
    let with_image = format!(
        r#"{{"prompt": "<image>What is it?", "chosen": "a cat", "rejected": "a dog", "image": "{}"}}"#,
        scratch.path("x.png").display()
    );
    refused(&mut trainer, &[vec![with_image.as_str()]], "`micro_batches[0][0]` has images or videos but the model is");
    let after = std::fs::read(trainer.save(&scratch.path("after")).unwrap().join("model.safetensors")).unwrap();
    assert!(before == after, "a refused step changed the weights");
    assert_eq!(trainer.trainer().optimizer().steps_done(), 0);

    // K-wise: every micro-batch of a step ranks as many responses.
    let mut kwise =
        RewardRecordTrainer::new(&model, RewardLoss::Kwise(KwiseMethod::PlackettLuce), &options(3)).unwrap();
    let four = r#"{"prompt": "Rank?", "responses": ["a", "b", "c", "d"]}"#;
    refused(&mut kwise, &[vec![rankings[0].as_str()], vec![four]], "ranks 4 responses a record");
    refused(&mut kwise, &[vec![rankings[0].as_str(), four]], "every record of a step ranks as many");
    kwise.step(&[vec![rankings[0].as_str(), rankings[1].as_str()]]).unwrap();

    let missing = RewardRecordTrainer::new(&scratch.path("nowhere"), RewardLoss::default(), &options(3));
    assert!(missing.unwrap_err().to_string().contains("does not exist"));
    let zero = RewardRecordTrainer::new(&model, RewardLoss::default(), &options(0));
    assert!(zero.unwrap_err().to_string().contains("`total_steps`"));
}
