//! `RewardRun` on a checkpoint assembled from fixtures (`tests/common`) and generated pair and ranked-list files: a
//! run stopped mid-epoch resumes to bitwise-equal weights, the held-out file is evaluated when due, the checkpoint
//! reloads (and, with `UNIREWARD_REWARD_CHECKPOINT_OUT`, is written out for `tests/reference/train_reward.py
//! --check-checkpoint` to load in transformers), K-wise trains on rankings, and bad input is refused before anything
//! is written.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use rand::Rng;
use unireward::model::{LoadOptions, Qwen2Model};
use unireward::ops::preference::KwiseMethod;
use unireward::train::data::{collate_pairs, ConversationTokenizer, DataOptions, DataSource, PairDataset};
use unireward::train::reward::{
    load_score, RewardData, RewardLoss, RewardOutcome, RewardRun, RewardStepMetrics, RewardTrainer, RewardTrainerConfig,
};
use unireward::train::run::TrainOptions;
use unireward::{DType, Device};

mod common;

use common::{copy_checkpoint_for_transformers, pairs, Scratch};

/// `n` ranked lists of 3 responses.
fn rankings(n: usize) -> String {
    (0..n)
        .map(|i| {
            let best = format!("{}.", i % 3);
            format!(r#"{{"prompt": "Rank {i}?", "responses": ["{best}", "Maybe 7.", "No idea."]}}"#) + "\n"
        })
        .collect()
}

fn scratch(name: &str) -> Scratch {
    let scratch = Scratch::new(&format!("reward-run-{name}"));
    std::fs::write(scratch.path("pairs.jsonl"), pairs(10)).unwrap();
    std::fs::write(scratch.path("held_out.jsonl"), pairs(14).lines().skip(10).collect::<Vec<_>>().join("\n")).unwrap();
    std::fs::write(scratch.path("rankings.jsonl"), rankings(6)).unwrap();
    scratch
}

fn reward_run(scratch: &Scratch, out: &str) -> RewardRun {
    RewardRun {
        model: scratch.path("model"),
        data: RewardData::Pairs(scratch.path("pairs.jsonl")),
        out: scratch.path(out),
        train: TrainOptions { epochs: 3, lr: 1e-3, batch_size: 2, seed: 11, ..TrainOptions::default() },
        ..RewardRun::default()
    }
}

fn train(run: &RewardRun) -> (RewardOutcome, Vec<RewardStepMetrics>) {
    let mut steps = Vec::new();
    let outcome = run.run(&AtomicBool::new(false), |m, _| steps.push(m.clone())).unwrap();
    (outcome, steps)
}

fn weights(outcome: &RewardOutcome) -> Vec<u8> {
    std::fs::read(outcome.checkpoint.join("model.safetensors")).unwrap()
}

#[test]
fn a_run_stopped_mid_epoch_resumes_to_bitwise_equal_weights() {
    let scratch = scratch("resume");
    let (straight, _) = train(&reward_run(&scratch, "straight"));
    assert_eq!((straight.steps_done, straight.total_steps), (15, 15));
    // 5 batches an epoch, 15 steps: most stops fall inside an epoch.
    let stop_at = rand::thread_rng().gen_range(1..15u64);
    let run = RewardRun {
        train: TrainOptions { save_every: 4, ..reward_run(&scratch, "stopped").train },
        ..reward_run(&scratch, "stopped")
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
    let resumed = RewardRun { train: TrainOptions { resume: true, ..run.train.clone() }, ..run.clone() };
    let (done, steps) = train(&resumed);
    assert_eq!(steps.first().map(|m| m.step), Some(stop_at + 1));
    assert!(weights(&done) == weights(&straight), "resumed after step {stop_at}: weights differ");
}

#[test]
fn the_held_out_file_is_evaluated_when_due_and_the_checkpoint_reloads() {
    let scratch = scratch("eval");
    let run = RewardRun { eval: Some(scratch.path("held_out.jsonl")), eval_every: 4, ..reward_run(&scratch, "out") };
    let (outcome, steps) = train(&run);
    let evaluated: Vec<u64> = steps.iter().filter(|m| m.eval.is_some()).map(|m| m.step).collect();
    assert_eq!(evaluated, [4, 8, 12, 15]);
    let last = steps.last().unwrap().eval.unwrap();
    assert!(last.loss.is_finite() && (0.0..=1.0).contains(&last.accuracy), "{last:?}");
    assert!(steps.iter().all(|m| m.metrics.loss.is_finite() && m.groups == 2));

    // The checkpoint: a Qwen2ForSequenceClassification config, the decoder and the head; its rewards on the
    // held-out pairs are the trained model's final evaluation.
    let dir = &outcome.checkpoint;
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "Qwen2ForSequenceClassification");
    assert_eq!(config["id2label"].as_object().unwrap().len(), 1);
    let tokenizer = ConversationTokenizer::from_checkpoint_dir(dir).unwrap();
    assert_eq!(config["pad_token_id"], tokenizer.pad_id());
    let options = LoadOptions { lenient: true, ..LoadOptions::default() };
    let (model, report) = Qwen2Model::load_with(dir, DType::F32, Device::Cpu, &options).unwrap();
    assert_eq!(report.ignored, ["score.weight"]);
    let score = load_score(dir, model.config.hidden_size, Device::Cpu).unwrap().expect("the head is saved");
    let trainer = RewardTrainer::new(model, score, RewardTrainerConfig::default()).unwrap();
    let (held_out, _) = PairDataset::load_pairs(
        &[DataSource::new(scratch.path("held_out.jsonl"))],
        &tokenizer,
        &DataOptions::default(),
    )
    .unwrap();
    let examples: Vec<_> = held_out.examples.iter().collect();
    let rows = collate_pairs(&examples, tokenizer.pad_id());
    let batches: Vec<_> =
        held_out.examples.chunks(2).map(|c| collate_pairs(&c.iter().collect::<Vec<_>>(), tokenizer.pad_id())).collect();
    let batches: Vec<_> =
        batches.into_iter().map(|rows| unireward::train::reward::RewardBatch::pairs(rows, None)).collect();
    let reloaded = trainer.evaluate(&batches).unwrap();
    assert!((reloaded.loss - last.loss).abs() <= 1e-6, "{reloaded:?} vs {last:?}");
    assert_eq!(reloaded.accuracy, last.accuracy);
    let rewards = trainer.rewards(&rows).unwrap();
    if let Ok(root) = std::env::var("UNIREWARD_REWARD_CHECKPOINT_OUT") {
        write_for_transformers(Path::new(&root), dir, &rows, &rewards);
    }
}

/// The checkpoint and the padded batch with unireward's rewards, for `train_reward.py --check-checkpoint`.
fn write_for_transformers(
    root: &Path,
    checkpoint: &Path,
    rows: &unireward::train::data::SequenceBatch,
    rewards: &[f32],
) {
    copy_checkpoint_for_transformers(checkpoint, root);
    let expected = serde_json::json!({
        "rows": rows.rows, "len": rows.len, "ids": rows.ids, "mask": rows.mask, "rewards": rewards,
    });
    std::fs::write(root.join("expected.json"), expected.to_string()).unwrap();
}

#[test]
fn kwise_trains_on_ranked_lists_and_a_pair_file_too() {
    let scratch = scratch("kwise");
    for method in [KwiseMethod::PlackettLuce, KwiseMethod::AllPairs] {
        let run = RewardRun {
            data: RewardData::Rankings(scratch.path("rankings.jsonl")),
            loss: RewardLoss::Kwise(method),
            ..reward_run(&scratch, "rankings")
        };
        let (outcome, steps) = train(&run);
        assert_eq!(outcome.total_steps, 9);
        assert!(steps.iter().all(|m| m.metrics.loss.is_finite() && m.groups == 2), "{method:?}");
    }
    // Plackett–Luce on pairs is Bradley–Terry: the same trained weights.
    let bt = train(&reward_run(&scratch, "bt")).0;
    let kwise = RewardRun { loss: RewardLoss::Kwise(KwiseMethod::PlackettLuce), ..reward_run(&scratch, "pl") };
    let pl = train(&kwise).0;
    let load =
        |o: &RewardOutcome| load_score(&o.checkpoint, 16, Device::Cpu).unwrap().unwrap().to_vec::<f32>().unwrap();
    for (a, b) in load(&bt).iter().zip(load(&pl)) {
        assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "{a} vs {b}");
    }
}

#[test]
fn bad_input_is_refused_before_anything_is_written() {
    let scratch = scratch("errors");
    let refused = |run: &RewardRun| {
        let err = run.run(&AtomicBool::new(false), |_, _| {}).expect_err("must be refused").to_string();
        assert!(!run.out.exists(), "{} was written for: {err}", run.out.display());
        err
    };
    let mut run = reward_run(&scratch, "out");
    run.loss = RewardLoss::BradleyTerry { center_rewards_coefficient: Some(f32::NAN) };
    assert!(refused(&run).contains("`--center-rewards-coefficient`"));
    run = RewardRun { eval_every: 2, ..reward_run(&scratch, "out") };
    assert!(refused(&run).contains("`--eval-every` needs a held-out file"));
    run = reward_run(&scratch, "out");
    run.train.batch_size = 0;
    assert!(refused(&run).contains("`--batch-size` must be at least 1"));

    let bt_on_lists =
        RewardRun { data: RewardData::Rankings(scratch.path("rankings.jsonl")), ..reward_run(&scratch, "out") };
    assert!(refused(&bt_on_lists).contains("Bradley–Terry trains on pairs, use `--loss kwise`"));
    std::fs::write(scratch.path("mixed.jsonl"), rankings(2) + r#"{"prompt": "P", "responses": ["a", "b"]}"#).unwrap();
    let mixed = RewardRun {
        data: RewardData::Rankings(scratch.path("mixed.jsonl")),
        loss: RewardLoss::Kwise(KwiseMethod::PlackettLuce),
        ..reward_run(&scratch, "out")
    };
    assert!(refused(&mixed).contains("line 3 of"), "every record ranks as many");
    std::fs::write(scratch.path("one.jsonl"), r#"{"prompt": "P", "responses": ["a"]}"#).unwrap();
    let one = RewardRun { data: RewardData::Rankings(scratch.path("one.jsonl")), ..mixed.clone() };
    let err = refused(&one);
    assert!(err.contains("no usable record") && err.contains("`responses` lists 1 responses"), "{err}");

    std::fs::write(scratch.path("margins.jsonl"), r#"{"prompt": "P", "chosen": "a", "rejected": "b", "margin": 1}"#)
        .unwrap();
    let margins = RewardRun {
        data: RewardData::Pairs(scratch.path("margins.jsonl")),
        loss: RewardLoss::Kwise(KwiseMethod::PlackettLuce),
        ..reward_run(&scratch, "out")
    };
    assert!(refused(&margins).contains("gives margins"));
    std::fs::write(scratch.path("margins.jsonl"), r#"{"prompt": "P", "chosen": "a", "rejected": "b", "margin": "x"}"#)
        .unwrap();
    let err = refused(&RewardRun { loss: RewardLoss::default(), ..margins.clone() });
    assert!(err.contains("`margin` is a string instead of a number"), "{err}");

    let held_out = RewardRun { eval: Some(scratch.path("rankings.jsonl")), ..reward_run(&scratch, "out") };
    let err = refused(&held_out);
    assert!(err.contains("no usable record") && err.contains("no `chosen`"), "{err}");
}
