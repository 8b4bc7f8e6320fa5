//! The SFT trainer on LLaVA-OneVision batches with images and videos: 10 steps against PyTorch
//! (`tests/reference/train_sft_llava.py`: a float64 transformers model with its image processor + AdamW +
//! clip_grad_norm_ + the cosine warm-up schedule), the frozen vision tower left bit for bit, held-out metrics equal
//! to a recomputation from materialised logits, conversation files with images (placeholders expanded, bad media
//! reported with their lines) and `unireward train-judge` on a tiny chat-capable LLaVA checkpoint.

use std::process::Command;

use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
use unireward::model::llava::config::{LLAVA_IMAGE_PLACEHOLDER, LLAVA_VIDEO_PLACEHOLDER};
use unireward::model::llava::{LlavaBatch, MediaInput};
use unireward::model::{ForwardOptions, WeightStore};
use unireward::train::data::{
    collate_conversations, BadRecordPolicy, ConversationTokenizer, DataOptions, DataSource, PairDataset, Problem,
    SequenceBatch, SftDataset, IGNORE_INDEX,
};
use unireward::train::model::TrainModel;
use unireward::train::optim::{AdamWConfig, ParamGroup, Schedule, ScheduleKind};
use unireward::train::run::TrainOptions;
use unireward::train::sft::{latest_checkpoint, SftConfig, SftRun, SftTrainer};
use unireward::{DType, Device, Tensor};

mod common;
use common::llava::ChatCheckpoint;
use common::reference::{assert_close, fixture, ReferenceBatch};

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap()
}

#[derive(Deserialize)]
struct Config {
    lr: f64,
    betas: (f64, f64),
    eps: f64,
    weight_decay: f64,
    max_grad_norm: f64,
    warmup_ratio: f64,
    total_steps: usize,
    tasks: usize,
    frozen: String,
    video_frames: usize,
}

#[derive(Deserialize)]
struct Step {
    loss: f64,
    tokens: usize,
    grad_norm: f64,
    lr: f64,
    task_loss: Vec<Option<f64>>,
}

#[derive(Deserialize)]
struct Steps {
    config: Config,
    batches: Vec<Vec<ReferenceBatch>>,
    steps: Vec<Step>,
}

fn reference() -> Steps {
    serde_json::from_str(&std::fs::read_to_string(fixture("train_sft_llava/steps.json")).unwrap()).unwrap()
}

fn trainer(c: &Config, extra_groups: Vec<ParamGroup>) -> SftTrainer {
    let model = TrainModel::load(&fixture("llava/hf"), DType::F32, Device::Cpu, c.video_frames).unwrap();
    let optimizer = AdamWConfig {
        lr: c.lr,
        betas: c.betas,
        eps: c.eps,
        weight_decay: c.weight_decay,
        max_grad_norm: Some(c.max_grad_norm),
        schedule: Schedule::with_warmup_ratio(ScheduleKind::Cosine, c.total_steps, c.warmup_ratio).unwrap(),
        ..AdamWConfig::default()
    };
    let mut groups = extra_groups;
    groups.push(ParamGroup::new("frozen", &[&c.frozen]).frozen());
    SftTrainer::new(model, SftConfig { optimizer, groups, tasks: c.tasks, ..SftConfig::default() }).unwrap()
}

#[test]
fn ten_llava_sft_steps_with_images_and_videos_match_pytorch() {
    let Steps { config: c, batches, steps } = reference();
    let mut trainer = trainer(&c, Vec::new());
    for (k, (micro, want)) in batches.into_iter().zip(&steps).enumerate() {
        let micro: Vec<SequenceBatch> = micro.into_iter().map(|b| b.sequence_batch()).collect();
        let got = trainer.step(&micro).unwrap();
        assert_eq!(got.step, k as u64 + 1);
        assert_eq!(got.tokens, want.tokens, "step {k} tokens");
        assert_close(&format!("step {k} loss"), got.loss, want.loss, 1e-5, 1e-3);
        assert_close(&format!("step {k} grad norm"), got.grad_norm.unwrap(), want.grad_norm, 1e-5, 1e-3);
        assert_close(&format!("step {k} lr"), got.lr, want.lr, 1e-12, 1e-3);
        for (t, (g, w)) in got.task_loss.iter().zip(&want.task_loss).enumerate() {
            match (g, w) {
                (Some(g), Some(w)) => assert_close(&format!("step {k} task {t} loss"), *g, *w, 1e-5, 1e-3),
                (g, w) => assert_eq!(g.is_some(), w.is_some(), "step {k} task {t}: {g:?} vs {w:?}"),
            }
        }
    }
    let bytes = std::fs::read(fixture("train_sft_llava/final.safetensors")).unwrap();
    let expected = SafeTensors::deserialize(&bytes).unwrap();
    let model = trainer.into_model();
    let mut compared = 0;
    let mut worst: f64 = 0.0;
    for (name, got) in model.named_parameters() {
        let Ok(view) = expected.tensor(&name) else {
            assert!(name.contains(&c.frozen), "`{name}` is not in the reference");
            continue;
        };
        compared += 1;
        assert_eq!((view.dtype(), view.shape()), (Dtype::F32, got.shape()), "`{name}`");
        let want: Vec<f32> = view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        for (i, (g, w)) in values(got).iter().zip(&want).enumerate() {
            let (g, w) = (f64::from(*g), f64::from(*w));
            let err = (g - w).abs() / w.abs().max(1e-2);
            worst = worst.max(err);
            assert!(err <= 1e-5, "`{name}`[{i}]: got {g}, want {w}");
        }
    }
    assert_eq!(compared, expected.len(), "every reference parameter is one of the model's");
    eprintln!("worst relative error of the final parameters: {worst:e}");
}

#[test]
fn a_frozen_vision_tower_and_projector_stay_bit_identical() {
    let Steps { config: c, batches, .. } = reference();
    let frozen = ParamGroup::new("vision", &["vision_tower.", "multi_modal_projector."]).frozen();
    let mut trainer = trainer(&c, vec![frozen]);
    let is_vision = |name: &str| name.contains("vision_tower.") || name.contains("multi_modal_projector.");
    let snapshot = |t: &SftTrainer| -> Vec<(String, Vec<f32>)> {
        t.model().named_parameters().into_iter().map(|(n, p)| (n, values(p))).collect()
    };
    let before = snapshot(&trainer);
    for micro in batches.into_iter().take(3) {
        trainer.step(&micro.into_iter().map(|b| b.sequence_batch()).collect::<Vec<_>>()).unwrap();
    }
    let after = snapshot(&trainer);
    assert!(before.iter().any(|(n, _)| is_vision(n)));
    for ((name, b), (_, a)) in before.iter().zip(&after) {
        let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        if is_vision(name) {
            assert!(same, "frozen `{name}` changed");
        } else if !name.contains(&c.frozen) {
            assert!(!same, "trained `{name}` did not change");
        }
    }
}

/// Per row, the summed NLL, correct argmaxes and labelled next tokens from materialised logits, in f64.
fn recompute(model: &TrainModel, batch: &SequenceBatch, video_frames: usize) -> Vec<(f64, usize, usize)> {
    let TrainModel::Llava(llava) = model else { panic!("a LLaVA model") };
    let (model, media) = (&llava.model, &llava.media);
    assert_eq!(media.video_frames(), video_frames);
    let loaded: Vec<_> = batch.media.iter().flat_map(|refs| media.load(refs).unwrap()).collect();
    let inputs: Vec<MediaInput<'_>> = loaded.iter().map(|m| m.input()).collect();
    let shape = [batch.rows, batch.len];
    let ids = Tensor::from_slice(&batch.ids, &shape, Device::Cpu).unwrap();
    let mask = Tensor::from_slice(&batch.mask, &shape, Device::Cpu).unwrap();
    let pass =
        model.forward(&LlavaBatch { ids: &ids, mask: &mask, media: &inputs }, ForwardOptions::default()).unwrap();
    let logits = values(&model.logits(&pass).unwrap());
    let vocab = logits.len() / (batch.rows * batch.len);
    (0..batch.rows)
        .map(|row| {
            let mut sums = (0.0, 0, 0);
            for t in 0..batch.len - 1 {
                let label = batch.labels[row * batch.len + t + 1];
                if label == IGNORE_INDEX {
                    continue;
                }
                let at = &logits[(row * batch.len + t) * vocab..][..vocab];
                let max = at.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
                let lse = max + at.iter().map(|&x| (f64::from(x) - max).exp()).sum::<f64>().ln();
                let best = (0..vocab).fold(0, |b, v| if at[v] > at[b] { v } else { b });
                sums.0 += lse - f64::from(at[label as usize]);
                sums.1 += usize::from(best == label as usize);
                sums.2 += 1;
            }
            sums
        })
        .collect()
}

#[test]
fn evaluation_equals_a_recomputation_and_updates_nothing() {
    let Steps { config: c, batches, .. } = reference();
    let mut trainer = trainer(&c, Vec::new());
    let mut batches = batches.into_iter().map(|m| m.into_iter().map(|b| b.sequence_batch()).collect::<Vec<_>>());
    trainer.step(&batches.next().unwrap()).unwrap();
    let held_out: Vec<SequenceBatch> = batches.take(2).flatten().collect();
    let before: Vec<Vec<f32>> = trainer.model().named_parameters().iter().map(|(_, p)| values(p)).collect();
    let got = trainer.evaluate(&held_out).unwrap();
    let after: Vec<Vec<f32>> = trainer.model().named_parameters().iter().map(|(_, p)| values(p)).collect();
    assert_eq!(before, after, "evaluation changed a parameter");
    assert_eq!(trainer.optimizer().steps_done(), 1);

    let mut per_task = vec![(0.0, 0, 0); c.tasks];
    for batch in &held_out {
        for (row, (nll, correct, tokens)) in recompute(trainer.model(), batch, c.video_frames).into_iter().enumerate() {
            let task = &mut per_task[batch.tasks[row]];
            task.0 += nll;
            task.1 += correct;
            task.2 += tokens;
        }
    }
    let (nll, correct, tokens) = per_task.iter().fold((0.0, 0, 0), |a, t| (a.0 + t.0, a.1 + t.1, a.2 + t.2));
    assert_eq!(got.tokens, tokens);
    assert_close("eval loss", got.loss, nll / tokens as f64, 1e-6, 1e-3);
    assert_eq!(got.accuracy, correct as f64 / tokens as f64);
    for (t, &(nll, correct, tokens)) in per_task.iter().enumerate() {
        assert_eq!(got.task_tokens[t], tokens);
        match (got.task_loss[t], got.task_accuracy[t]) {
            (Some(loss), Some(accuracy)) => {
                assert_close(&format!("task {t} loss"), loss, nll / tokens as f64, 1e-6, 1e-3);
                assert_eq!(accuracy, correct as f64 / tokens as f64);
            }
            other => assert!(tokens == 0 && other == (None, None), "task {t}: {other:?}"),
        }
    }
    // The training loss of the same batch before any update is its evaluation loss.
    let Steps { config: c, batches, .. } = reference();
    let mut fresh = trainer_with_no_update(&c);
    let first: Vec<SequenceBatch> =
        batches.into_iter().next().unwrap().into_iter().map(|b| b.sequence_batch()).collect();
    let eval = fresh.evaluate(&first).unwrap();
    let step = fresh.step(&first).unwrap();
    assert_close("eval loss vs step loss", eval.loss, step.loss, 1e-5, 1e-3);
}

fn trainer_with_no_update(c: &Config) -> SftTrainer {
    trainer(c, Vec::new())
}

#[test]
fn conversations_with_images_are_expanded_and_bad_media_reported_by_line() {
    let checkpoint = ChatCheckpoint::new("sft-data");
    let records: &[(&[&str], &str, &str, &str)] = &[
        (&["anyres_0.png"], "<image>\nIs it good?", "Yes.", "image"),
        (&["missing.png"], "<image>\nIs it good?", "No.", "image"),
        (&["two_images_0.png", "two_images_1.png"], "<image> or <image>: which one?", "The first.", "pair"),
        (&["corrupt.png"], "<image>\nIs it good?", "No.", "image"),
        (&[], "Which is better, 1 or 2?", "2 is better.", "text"),
    ];
    let path = checkpoint.data("train.jsonl", records);
    let model = TrainModel::load(&checkpoint.model(), DType::F32, Device::Cpu, 4).unwrap();
    let loader = model.media_loader().unwrap();
    let tokenizer = ConversationTokenizer::from_checkpoint_dir(&checkpoint.model()).unwrap();
    let options = DataOptions { media_folder: checkpoint.dir.join("data"), ..DataOptions::default() };
    let sources = [DataSource::new(&path)];
    let (data, report) =
        SftDataset::load_conversations_with_media(&sources, &tokenizer, &options, Some(loader)).unwrap();
    let bad: Vec<(usize, &str)> = report.bad.iter().map(|b| (b.line, b.problem.kind())).collect();
    assert_eq!(bad, [(2, "missing media"), (4, "unreadable media")]);
    assert!(matches!(&report.bad[1].problem, Problem::UnreadableMedia { path, .. } if path.ends_with("corrupt.png")));
    assert!(report.bad[1].to_string().contains("line 4"), "{}", report.bad[1]);
    assert_eq!(data.examples.iter().map(|e| e.line).collect::<Vec<_>>(), [1, 3, 5]);

    // Each placeholder became as many placeholder ids as the model's packed rows for the image, unlabelled.
    let placeholders = loader.placeholders();
    let (plain, _) = SftDataset::load_conversations(&sources, &tokenizer, &options).unwrap();
    for (example, line) in data.examples.iter().zip([1, 3, 5]) {
        let unexpanded = plain.examples.iter().find(|e| e.line == line).unwrap();
        let loaded = loader.load(&example.media).unwrap();
        let counts = loader.placeholder_counts(&loaded).unwrap();
        let inputs: Vec<MediaInput<'_>> = loaded.iter().map(|m| m.input()).collect();
        let TrainModel::Llava(llava) = &model else { unreachable!() };
        assert_eq!(counts, llava.model.placeholder_counts(&inputs).unwrap());
        let expanded = example.ids.iter().filter(|&&id| id == placeholders.image).count();
        assert_eq!(expanded, counts.iter().sum::<usize>(), "line {line}");
        assert_eq!(example.ids.len(), unexpanded.ids.len() + expanded - example.media.len(), "line {line}");
        for (&id, &label) in example.ids.iter().zip(&example.labels) {
            if id == placeholders.image {
                assert_eq!(label, IGNORE_INDEX);
            }
        }
        let labelled = |labels: &[i64]| labels.iter().filter(|&&l| l != IGNORE_INDEX).count();
        assert_eq!(labelled(&example.labels), labelled(&unexpanded.labels), "line {line}");
    }
    assert!(data.examples[0].ids.len() > 40, "the anyres image expands to its tiles' rows");

    // Refused under the refusing policy, naming the file and line.
    let refuse = DataOptions { bad_records: BadRecordPolicy::Refuse, ..options.clone() };
    let err = SftDataset::load_conversations_with_media(&sources, &tokenizer, &refuse, Some(loader)).unwrap_err();
    assert!(err.to_string().contains("line 2"), "{err}");
}

#[test]
fn train_judge_trains_a_llava_checkpoint_on_images_with_evaluation() {
    let checkpoint = ChatCheckpoint::new("sft-cli");
    let mut records: Vec<(&[&str], &str, &str, &str)> = Vec::new();
    let images: [&[&str]; 3] = [&["anyres_0.png"], &["downsampled_0.png"], &["two_images_0.png", "two_images_1.png"]];
    for i in 0..6 {
        let question = if i % 3 == 2 { "<image> or <image>?" } else { "<image>\nIs it good?" };
        records.push((images[i % 3], question, if i % 2 == 0 { "Yes." } else { "No." }, "image"));
    }
    records.push((&["corrupt.png"], "<image>\nIs it good?", "No.", "image"));
    let data = checkpoint.data("train.jsonl", &records);
    let eval = checkpoint.data("eval.jsonl", &records[..3]);
    let out = checkpoint.dir.join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_unireward"))
        .args(["train-judge", "--model", checkpoint.model().to_str().unwrap(), "--data", data.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap(), "--eval", eval.to_str().unwrap(), "--eval-every", "2"])
        .args(["--batch-size", "2", "--epochs", "2", "--lr", "1e-3", "--freeze", "vision", "--video-frames", "4"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "train-judge failed: {stderr}");
    assert!(stderr.contains("skipped 1 bad record"), "{stderr}");
    assert!(stderr.contains("line 7"), "{stderr}");
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let steps = lines.iter().filter(|l| l.get("loss").is_some()).count();
    assert_eq!(steps, 6, "{log}");
    let evals: Vec<&serde_json::Value> = lines.iter().filter(|l| l.get("eval/loss").is_some()).collect();
    assert_eq!(evals.iter().map(|l| l["step"].as_u64().unwrap()).collect::<Vec<_>>(), [2, 4, 6], "{log}");
    for e in &evals {
        assert!(e["eval/loss"].as_f64().unwrap().is_finite());
        let accuracy = e["eval/accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&accuracy));
        assert!(e["eval/task_loss"][0].as_f64().is_some(), "{e}");
    }
    assert!(out.join("loss.png").is_file(), "the metrics (held-out ones included) are plotted");
    // The checkpoint is in the input layout, the frozen tower as it was.
    let (_, last) = latest_checkpoint(&out).unwrap();
    let trained = WeightStore::open(&last).unwrap();
    let source = WeightStore::open(&checkpoint.model()).unwrap();
    let mut names = trained.names();
    names.sort_unstable();
    let mut source_names = source.names();
    source_names.sort_unstable();
    assert_eq!(names, source_names);
    let (mut frozen, mut changed) = (0, 0);
    for name in names {
        let shape = source.shape(name).unwrap().to_vec();
        let (a, b) = (values(&trained.get(name, &shape).unwrap()), values(&source.get(name, &shape).unwrap()));
        if name.starts_with("vision_tower.") {
            assert_eq!(a, b, "frozen `{name}` changed");
            frozen += 1;
        } else {
            changed += usize::from(a != b);
        }
    }
    assert!(frozen > 0 && changed > 0, "{frozen} frozen tensors, {changed} trained ones changed");
}

#[test]
fn pair_prompts_with_images_are_expanded() {
    let checkpoint = ChatCheckpoint::new("sft-pairs");
    let pair = |image: &str| {
        serde_json::json!({"prompt": "<image>\nWhich answer is right?", "chosen": "The first.",
            "rejected": "The second.", "image": format!("images/{image}")})
    };
    let path = checkpoint.dir.join("data/pairs.jsonl");
    std::fs::write(&path, format!("{}\n{}\n", pair("anyres_0.png"), pair("corrupt.png"))).unwrap();
    let model = TrainModel::load(&checkpoint.model(), DType::F32, Device::Cpu, 4).unwrap();
    let loader = model.media_loader().unwrap();
    let tokenizer = ConversationTokenizer::from_checkpoint_dir(&checkpoint.model()).unwrap();
    let options = DataOptions { media_folder: checkpoint.dir.join("data"), ..DataOptions::default() };
    let sources = [DataSource::new(&path)];
    let (pairs, report) = PairDataset::load_pairs_with_media(&sources, &tokenizer, &options, Some(loader)).unwrap();
    assert_eq!(report.bad.iter().map(|b| (b.line, b.problem.kind())).collect::<Vec<_>>(), [(2, "unreadable media")]);
    let (plain, _) = PairDataset::load_pairs(&sources, &tokenizer, &options).unwrap();
    let (got, want) = (&pairs.examples[0], &plain.examples[0]);
    let count = loader.placeholder_counts(&loader.load(&got.media).unwrap()).unwrap()[0];
    let image = loader.placeholders().image;
    assert_eq!(got.prompt.iter().filter(|&&id| id == image).count(), count);
    assert_eq!(got.prompt.len(), want.prompt.len() + count - 1);
    assert_eq!((&got.chosen, &got.rejected), (&want.chosen, &want.rejected));
}

/// Six records over the fixture's images (one image, a downsampled one, two images), answered yes or no.
fn six_image_records() -> Vec<(&'static [&'static str], &'static str, &'static str, &'static str)> {
    let images: [&[&str]; 3] = [&["anyres_0.png"], &["downsampled_0.png"], &["two_images_0.png", "two_images_1.png"]];
    (0..6)
        .map(|i| {
            let question = if i % 3 == 2 { "<image> or <image>?" } else { "<image>\nIs it good?" };
            (images[i % 3], question, if i % 2 == 0 { "Yes." } else { "No." }, "image")
        })
        .collect()
}

#[test]
fn a_stopped_llava_run_resumes_to_bitwise_equal_parameters() {
    let checkpoint = ChatCheckpoint::new("sft-resume");
    let data = checkpoint.data("train.jsonl", &six_image_records());
    let run = |out: &str| SftRun {
        model: checkpoint.model(),
        data: data.clone(),
        out: checkpoint.dir.join(out),
        train: TrainOptions { epochs: 2, lr: 1e-3, batch_size: 2, seed: 5, ..TrainOptions::default() },
        video_frames: 4,
        ..SftRun::default()
    };
    let never = std::sync::atomic::AtomicBool::new(false);
    let whole = run("whole").run(&never, |_, _| {}).unwrap();
    assert_eq!((whole.steps_done, whole.interrupted), (6, false));

    let stop = std::sync::atomic::AtomicBool::new(false);
    let first = run("halves").run(&stop, |m, _| stop.store(m.step == 4, std::sync::atomic::Ordering::SeqCst)).unwrap();
    assert_eq!((first.steps_done, first.interrupted), (4, true));
    let mut again = run("halves");
    again.train.resume = true;
    let resumed = again.run(&never, |_, _| {}).unwrap();
    assert_eq!(resumed.steps_done, 6);
    let weights =
        |o: &unireward::train::sft::SftOutcome| std::fs::read(o.checkpoint.join("model.safetensors")).unwrap();
    assert!(weights(&whole) == weights(&resumed), "the resumed run's parameters differ");
    assert!(weights(&whole) != std::fs::read(checkpoint.model().join("model.safetensors")).unwrap());
}

/// A step's micro-batches trained side by side (`data_parallel`, on a pool of two threads) give the sequential
/// run's parameters, optimizer state and losses to the bit: two at once, and three in waves of two and one. Out of
/// range, it is an error naming the flag.
#[test]
fn micro_batches_trained_side_by_side_match_the_sequential_run_bitwise() {
    let checkpoint = ChatCheckpoint::new("sft-data-parallel");
    let data = checkpoint.data("train.jsonl", &six_image_records());
    let run = |out: &str, data_parallel: usize| SftRun {
        model: checkpoint.model(),
        data: data.clone(),
        out: checkpoint.dir.join(out),
        train: TrainOptions { epochs: 2, lr: 1e-3, batch_size: 1, grad_accum: 3, seed: 7, ..TrainOptions::default() },
        video_frames: 4,
        data_parallel,
        ..SftRun::default()
    };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let never = std::sync::atomic::AtomicBool::new(false);
    let train = |out: &str, data_parallel: usize| {
        let mut losses = Vec::new();
        let outcome = pool.install(|| run(out, data_parallel).run(&never, |m, _| losses.push(m.clone()))).unwrap();
        let read = |name: &str| std::fs::read(outcome.checkpoint.join(name)).unwrap();
        (read("model.safetensors"), read("trainer_state/optimizer.safetensors"), losses)
    };
    let sequential = train("sequential", 1);
    assert_eq!(sequential.2.len(), 4);
    for data_parallel in [2, 3] {
        let side_by_side = train(&format!("side-by-side-{data_parallel}"), data_parallel);
        assert!(side_by_side.0 == sequential.0, "{data_parallel} at once: the parameters differ");
        assert!(side_by_side.1 == sequential.1, "{data_parallel} at once: the optimizer state differs");
        assert_eq!(side_by_side.2, sequential.2, "{data_parallel} at once");
    }
    for bad in [0, 4] {
        let e = run("bad", bad).run(&never, |_, _| {}).unwrap_err().to_string();
        assert!(e.contains("`--data-parallel` must be between 1 and `--grad-accum` (3)"), "{e}");
    }
}

/// A `llava_qwen` checkpoint (UnifiedReward's released layout: no `<image>` token, placeholders outside the
/// vocabulary) trains on conversations with images and videos exactly as its Hugging Face twin: the same sequences
/// but for the placeholder ids, then the same loss, gradient norm and trained parameters.
#[test]
fn a_llava_qwen_checkpoint_trains_on_media_as_its_hugging_face_twin() {
    let (hf, original) = (ChatCheckpoint::new("twin-hf"), ChatCheckpoint::llava_qwen("twin-llava-qwen"));
    let records = [
        serde_json::json!({"image": "images/anyres_0.png", "task": "image",
            "conversations": [{"from": "human", "value": "<image>\nIs it good?"}, {"from": "gpt", "value": "Yes."}]}),
        serde_json::json!({"image": ["images/two_images_0.png", "images/two_images_1.png"], "task": "pair",
            "conversations": [{"from": "human", "value": "<image> or <image>: which?"},
                              {"from": "gpt", "value": "The first."}]}),
        // LLaVA-NeXT writes a video's placeholder as `<image>`.
        serde_json::json!({"video": "video", "task": "video",
            "conversations": [{"from": "human", "value": "<image>\nWhat moves?"}, {"from": "gpt", "value": "A dot."}]}),
        serde_json::json!({"task": "text",
            "conversations": [{"from": "human", "value": "1 or 2?"}, {"from": "gpt", "value": "2."}]}),
    ];
    let lines: String = records.iter().map(|r| format!("{r}\n")).collect();
    let load = |checkpoint: &ChatCheckpoint| {
        let path = checkpoint.dir.join("data/train.jsonl");
        std::fs::write(&path, &lines).unwrap();
        let model = TrainModel::load(&checkpoint.model(), DType::F32, Device::Cpu, 3).unwrap();
        let tokenizer = ConversationTokenizer::from_checkpoint_dir(&checkpoint.model()).unwrap();
        let options = DataOptions { media_folder: checkpoint.dir.join("data"), ..DataOptions::default() };
        let (data, report) = SftDataset::load_conversations_with_media(
            &[DataSource::new(&path)],
            &tokenizer,
            &options,
            model.media_loader(),
        )
        .unwrap();
        assert!(report.bad.is_empty(), "{:?}", report.bad);
        let batch = collate_conversations(&data.examples.iter().collect::<Vec<_>>(), tokenizer.pad_id());
        (model, batch)
    };
    let ((hf_model, hf_batch), (original_model, original_batch)) = (load(&hf), load(&original));
    let placeholders = |model: &TrainModel| model.media_loader().unwrap().placeholders();
    let (hf_ids, original_ids) = (placeholders(&hf_model), placeholders(&original_model));
    assert_eq!((original_ids.image, original_ids.video), (LLAVA_IMAGE_PLACEHOLDER, LLAVA_VIDEO_PLACEHOLDER));
    let as_original = |id: i64| match id {
        id if id == hf_ids.image => original_ids.image,
        id if id == hf_ids.video => original_ids.video,
        id => id,
    };
    assert_eq!(hf_batch.ids.iter().map(|&id| as_original(id)).collect::<Vec<_>>(), original_batch.ids);
    assert_eq!((&hf_batch.labels, &hf_batch.mask), (&original_batch.labels, &original_batch.mask));
    for (id, what) in [(original_ids.image, "image"), (original_ids.video, "video")] {
        assert!(original_batch.ids.contains(&id), "the batch has {what} placeholders");
    }
    // A pair's prompt too.
    let pair = serde_json::json!({"prompt": "<image>\nIs it good?", "chosen": "Yes.", "rejected": "No.",
        "image": "images/downsampled_0.png"})
    .to_string();
    let prompt = |checkpoint: &ChatCheckpoint, model: &TrainModel| {
        let tokenizer = ConversationTokenizer::from_checkpoint_dir(&checkpoint.model()).unwrap();
        let options = DataOptions { media_folder: checkpoint.dir.join("data"), ..DataOptions::default() };
        let data =
            PairDataset::from_pair_records(&[&pair], "pairs", "image", &tokenizer, &options, model.media_loader());
        data.unwrap().examples.remove(0).prompt
    };
    let (hf_prompt, original_prompt) = (prompt(&hf, &hf_model), prompt(&original, &original_model));
    assert!(original_prompt.contains(&original_ids.image));
    assert_eq!(hf_prompt.into_iter().map(as_original).collect::<Vec<_>>(), original_prompt);

    let optimizer = AdamWConfig { lr: 1e-2, max_grad_norm: Some(1.0), ..AdamWConfig::default() };
    let train = |model: TrainModel, batch: &SequenceBatch| {
        let config = SftConfig { optimizer: optimizer.clone(), tasks: 4, ..SftConfig::default() };
        let mut trainer = SftTrainer::new(model, config).unwrap();
        let metrics = trainer.step(std::slice::from_ref(batch)).unwrap();
        let params: Vec<Vec<f32>> = trainer.model().named_parameters().iter().map(|(_, t)| values(t)).collect();
        (metrics, params)
    };
    let ((hf_metrics, hf_params), (original_metrics, original_params)) =
        (train(hf_model, &hf_batch), train(original_model, &original_batch));
    assert!(hf_metrics.loss.is_finite() && hf_metrics.tokens > 0);
    assert_eq!(hf_metrics.loss.to_bits(), original_metrics.loss.to_bits());
    assert_eq!(hf_metrics.grad_norm.map(f64::to_bits), original_metrics.grad_norm.map(f64::to_bits));
    let sorted = |mut p: Vec<Vec<f32>>| {
        p.sort_by(|a, b| a.len().cmp(&b.len()).then(a.partial_cmp(b).unwrap()));
        p
    };
    assert_eq!(sorted(hf_params), sorted(original_params));
}
