//! The scalar reward-model trainer on LLaVA-OneVision (the tiny random checkpoint with a chat template of
//! `tests/common/llava.rs`, images drawn here): each reward equals `score.weight · h` in float64, h the LLaVA
//! model's own hidden state at the row's last token from a forward of that row alone; the Bradley–Terry loss equals
//! its float64 value and its gradients (head, projector, newline, vision tower, language model) central
//! differences; accumulated micro-batches equal one step on their concatenation; a toy whose preferences only the
//! image decides is learnt; and `RewardRun` / `unireward train-reward` train on pair and ranked-list files with
//! images (bad media reported by line, checkpoints with `score.weight` beside the LLaVA weights that reload and
//! resume bitwise).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use unireward::model::llava::{LlavaBatch, MediaInput};
use unireward::model::{ForwardOptions, LoadOptions, WeightStore};
use unireward::ops::preference::KwiseMethod;
use unireward::train::data::{
    collate_pairs, BadRecordPolicy, ConversationTokenizer, DataOptions, DataSource, PairDataset, SequenceBatch,
};
use unireward::train::model::TrainModel;
use unireward::train::optim::{AdamWConfig, ParamGroup, Schedule, ScheduleKind};
use unireward::train::reward::{
    init_score, load_score, RewardBatch, RewardData, RewardLoss, RewardOutcome, RewardRun, RewardTrainer,
    RewardTrainerConfig, SCORE_WEIGHT,
};
use unireward::train::run::TrainOptions;
use unireward::{DType, Device, Tensor};

mod common;
use common::llava::ChatCheckpoint;
use common::reference::{assert_close, values_f64};
use common::{copy_checkpoint_for_transformers, Scratch};

const VIDEO_FRAMES: usize = 4;
const HIDDEN: usize = 32;

/// A picture of colour `rgb`, `width`×`height`, with a texture (patches that differ, so that the tower's attention
/// has something to attend to), as `data/images/<name>.png`; its path relative to `data/`.
fn draw(checkpoint: &ChatCheckpoint, name: &str, rgb: [u8; 3], (width, height): (u32, u32)) -> String {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        let texture = |k: u32| ((x * (7 + k) + y * (13 + 3 * k) + x * y * 5) % 48) as u8;
        image::Rgb([0, 1, 2].map(|k| rgb[k as usize].saturating_add(texture(k))))
    });
    image.save(checkpoint.dir.join("data/images").join(format!("{name}.png"))).unwrap();
    format!("images/{name}.png")
}

/// `n` pictures, red ones (even `i`) and blue ones, of a few sizes (anyres grids of 1 to 3 tiles); `shade` moves
/// their colours (another set).
fn pictures(checkpoint: &ChatCheckpoint, prefix: &str, n: usize, shade: u8) -> Vec<(String, bool)> {
    let sizes = [(12, 12), (20, 12), (12, 30), (16, 16)];
    (0..n)
        .map(|i| {
            let red = i % 2 == 0;
            let v = shade.wrapping_add(9 * i as u8) % 40;
            let rgb = if red { [200 + v, 30 + v, 40] } else { [30, 40 + v, 200 + v] };
            (draw(checkpoint, &format!("{prefix}{i}"), rgb, sizes[i % sizes.len()]), red)
        })
        .collect()
}

/// A pair on `image`: "Yes." is chosen for a red picture, "No." for a blue one (a text-only model can order at most
/// half of a balanced set).
fn pair(image: &str, red: bool) -> serde_json::Value {
    let (chosen, rejected) = if red { ("Yes.", "No.") } else { ("No.", "Yes.") };
    serde_json::json!({"prompt": "<image>\nIs the picture red?", "chosen": chosen, "rejected": rejected,
        "image": image})
}

fn write_lines(path: &Path, records: &[serde_json::Value]) {
    std::fs::write(path, records.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();
}

/// `records` through the data loader with the model's media loader, as pair batches of `sizes` pairs each.
fn batches(checkpoint: &ChatCheckpoint, records: &[serde_json::Value], sizes: &[usize]) -> Vec<RewardBatch> {
    let path = checkpoint.dir.join("data/batch.jsonl");
    write_lines(&path, records);
    let model = load(checkpoint);
    let tokenizer = ConversationTokenizer::from_checkpoint_dir(&checkpoint.model()).unwrap();
    let options = DataOptions { media_folder: checkpoint.dir.join("data"), ..DataOptions::default() };
    let sources = [DataSource::new(&path)];
    let (data, report) =
        PairDataset::load_pairs_with_media(&sources, &tokenizer, &options, model.media_loader()).unwrap();
    assert!(report.bad.is_empty(), "{:?}", report.bad);
    let mut examples = data.examples.iter();
    sizes
        .iter()
        .map(|&n| {
            let chunk: Vec<_> = examples.by_ref().take(n).collect();
            RewardBatch::pairs(collate_pairs(&chunk, tokenizer.pad_id()), None)
        })
        .collect()
}

fn load(checkpoint: &ChatCheckpoint) -> TrainModel {
    TrainModel::load(&checkpoint.model(), DType::F32, Device::Cpu, VIDEO_FRAMES).unwrap()
}

fn optimizer(lr: f64, steps: usize) -> AdamWConfig {
    AdamWConfig {
        lr,
        weight_decay: 0.0,
        max_grad_norm: Some(1.0),
        schedule: Schedule::with_warmup_ratio(ScheduleKind::Constant, steps, 0.0).unwrap(),
        ..AdamWConfig::default()
    }
}

fn trainer(model: TrainModel, score: &[f32], optimizer: AdamWConfig) -> RewardTrainer {
    trainer_with(model, score, optimizer, Vec::new())
}

fn trainer_with(model: TrainModel, score: &[f32], optimizer: AdamWConfig, groups: Vec<ParamGroup>) -> RewardTrainer {
    let score = Tensor::from_f32(score, &[1, score.len()], DType::F32, Device::Cpu).unwrap();
    let config = RewardTrainerConfig { optimizer, groups, ..RewardTrainerConfig::default() };
    RewardTrainer::new(model, score, config).unwrap()
}

/// Row `row` of `rows` alone (its real tokens, its media) through the LLaVA model's own forward: the final hidden
/// state of its last token, in f64.
fn last_hidden_alone(model: &TrainModel, rows: &SequenceBatch, row: usize) -> Vec<f64> {
    let TrainModel::Llava(llava) = model else { panic!("a LLaVA model") };
    let real = rows.mask[row * rows.len..(row + 1) * rows.len].iter().filter(|&&m| m != 0).count();
    let ids = Tensor::from_slice(&rows.ids[row * rows.len..][..real], &[1, real], Device::Cpu).unwrap();
    let mask = Tensor::from_slice(&vec![1i64; real], &[1, real], Device::Cpu).unwrap();
    let loaded = llava.media.load(&rows.media[row]).unwrap();
    let media: Vec<MediaInput<'_>> = loaded.iter().map(|m| m.input()).collect();
    let pass = llava.model.forward(&LlavaBatch { ids: &ids, mask: &mask, media: &media }, ForwardOptions::default());
    values_f64(pass.unwrap().lm.hidden())[(real - 1) * HIDDEN..].to_vec()
}

#[test]
fn rewards_loss_and_gradients_match_float64_and_finite_differences() {
    let checkpoint = ChatCheckpoint::new("reward-grads");
    let mut records: Vec<_> = pictures(&checkpoint, "g", 3, 5).iter().map(|(p, red)| pair(p, *red)).collect();
    // A row without media among rows with them.
    records.push(serde_json::json!({"prompt": "Is 2 red?", "chosen": "No idea.", "rejected": "Yes."}));
    let batch = batches(&checkpoint, &records, &[4]).remove(0);
    let score: Vec<f32> = init_score(HIDDEN, 0.5, 3, Device::Cpu).unwrap().to_vec().unwrap();
    let mut trainer = trainer(load(&checkpoint), &score, AdamWConfig::default());

    let rewards = trainer.rewards(&batch.rows).unwrap();
    let want: Vec<f64> = (0..batch.rows.rows)
        .map(|row| {
            let h = last_hidden_alone(trainer.model(), &batch.rows, row);
            h.iter().zip(&score).map(|(h, &s)| h * f64::from(s)).sum()
        })
        .collect();
    for (row, (&got, &want)) in rewards.iter().zip(&want).enumerate() {
        assert_close(&format!("row {row} reward"), f64::from(got), want, 1e-5, 1.0);
    }
    let g = batch.groups();
    let loss: f64 = (0..g).map(|i| (1.0 + (want[g + i] - want[i]).exp()).ln()).sum::<f64>() / g as f64;
    let metrics = trainer.backward(&batch).unwrap();
    assert_close("loss", metrics.loss, loss, 1e-5, 1.0);

    let grads: Vec<(String, Vec<f64>)> = trainer.gradients().into_iter().map(|(n, t)| (n, values_f64(t))).collect();
    let grad = |name: &str| &grads.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no `{name}`")).1;
    for name in [
        SCORE_WEIGHT,
        "multi_modal_projector.linear_1.weight",
        "multi_modal_projector.linear_2.bias",
        "image_newline",
        "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight",
        "vision_tower.vision_model.embeddings.patch_embedding.weight",
        "language_model.model.layers.1.self_attn.q_proj.weight",
        "language_model.model.layers.0.mlp.down_proj.weight",
    ] {
        let g = grad(name);
        // The largest entry (its sign and size are what the update follows) and one in the middle.
        let largest = (0..g.len()).fold(0, |b, i| if g[i].abs() > g[b].abs() { i } else { b });
        assert!(g[largest].abs() > 1e-4, "`{name}` gets no gradient: {}", g[largest]);
        for index in [largest, g.len() / 2] {
            let h = 1e-2;
            let fd = (loss_with(&checkpoint, &score, &batch, name, index, h)
                - loss_with(&checkpoint, &score, &batch, name, index, -h))
                / (2.0 * f64::from(h));
            let analytic = g[index];
            assert!(
                (fd - analytic).abs() <= 2e-3 * g[largest].abs().max(0.1) + 1e-2 * analytic.abs(),
                "`{name}`[{index}]: finite differences {fd}, analytic {analytic}"
            );
        }
    }
}

/// The batch's loss under a model whose parameter `name` (or the head) has `delta` added at `index`.
fn loss_with(
    checkpoint: &ChatCheckpoint,
    score: &[f32],
    batch: &RewardBatch,
    name: &str,
    index: usize,
    delta: f32,
) -> f64 {
    let mut model = load(checkpoint);
    let mut score = score.to_vec();
    if name == SCORE_WEIGHT {
        score[index] += delta;
    } else {
        let mut named = model.named_parameters_mut();
        let (_, t) = named.iter_mut().find(|(n, _)| n == name).unwrap();
        let mut values = t.to_vec::<f32>().unwrap();
        values[index] += delta;
        **t = Tensor::from_f32(&values, t.shape(), DType::F32, Device::Cpu).unwrap();
    }
    trainer(model, &score, AdamWConfig::default()).evaluate(std::slice::from_ref(batch)).unwrap().loss
}

#[test]
fn accumulated_micro_batches_equal_steps_on_their_concatenation() {
    let checkpoint = ChatCheckpoint::new("reward-accum");
    let records: Vec<_> = pictures(&checkpoint, "a", 5, 11).iter().map(|(p, red)| pair(p, *red)).collect();
    let micro = batches(&checkpoint, &records, &[2, 3]);
    let whole = batches(&checkpoint, &records, &[5]);
    let score: Vec<f32> = init_score(HIDDEN, 0.2, 9, Device::Cpu).unwrap().to_vec().unwrap();
    // The key projections' biases get no gradient but rounding noise, which AdamW's division by √v would turn into
    // steps of the learning rate's size: frozen, as in the LLaVA SFT reference.
    let frozen = || vec![ParamGroup::new("k_proj.bias", &["k_proj.bias"]).frozen()];
    let mut accumulated = trainer_with(load(&checkpoint), &score, optimizer(1e-3, 3), frozen());
    let mut concatenated = trainer_with(load(&checkpoint), &score, optimizer(1e-3, 3), frozen());
    // First the gradients themselves: the micro-batches' weighted by their pairs equal the concatenation's.
    let mut sum: Vec<(String, Vec<f64>)> = Vec::new();
    for batch in &micro {
        accumulated.backward(batch).unwrap();
        let share = batch.groups() as f64 / 5.0;
        for (k, (name, g)) in accumulated.gradients().into_iter().enumerate() {
            let g = values_f64(g);
            match sum.get_mut(k) {
                Some((_, total)) => total.iter_mut().zip(&g).for_each(|(t, g)| *t += share * g),
                None => sum.push((name, g.iter().map(|g| share * g).collect())),
            }
        }
    }
    concatenated.backward(&whole[0]).unwrap();
    let all: Vec<(String, Vec<f64>)> =
        concatenated.gradients().into_iter().map(|(name, g)| (name, values_f64(g))).collect();
    // The tower's key biases' gradients are zero but for rounding (softmax ignores what adds to every key alike;
    // the language model's are not, RoPE turns them by position).
    let zero = |name: &str| name.starts_with("vision_tower.") && name.ends_with("k_proj.bias");
    let (noise, sum): (Vec<_>, Vec<_>) = sum.into_iter().partition(|(name, _)| zero(name));
    let all: Vec<_> = all.into_iter().filter(|(name, _)| !zero(name)).collect();
    assert!(!noise.is_empty() && noise.iter().flat_map(|(_, g)| g).all(|g| g.abs() < 1e-7));
    // The tower's key weights' gradients come from differences between nearly equal keys: f32 keeps fewer of
    // their digits than of the rest (worst seen 1.7e-5 of the tensor's largest, where everything else is ≤ 1e-6).
    let worst = max_scaled(&sum, &all, 1e-6, 5e-5);
    eprintln!("worst difference of the gradients, relative to their tensor's largest: {worst:e}");

    for step in 0..3 {
        let (a, c) = (accumulated.step(&micro).unwrap(), concatenated.step(&whole).unwrap());
        assert_eq!((a.groups, a.tokens), (c.groups, c.tokens), "step {step}");
        assert_close(&format!("step {step} loss"), a.metrics.loss, c.metrics.loss, 1e-5, 1e-3);
        // The preference op's accuracy is an f32.
        assert_close(&format!("step {step} accuracy"), a.metrics.accuracy, c.metrics.accuracy, 1e-7, 1.0);
        assert_close(&format!("step {step} grad norm"), a.grad_norm.unwrap(), c.grad_norm.unwrap(), 1e-5, 1e-3);
    }
    // Relative to each tensor's largest entry: AdamW divides by √v, so an entry whose gradient is near `eps` moves
    // by a rounding-sensitive fraction of the learning rate.
    let worst = max_scaled_difference(&accumulated.named_parameters(), &concatenated.named_parameters(), 1e-5);
    eprintln!("worst difference of the parameters, relative to their tensor's largest: {worst:e}");
}

/// The largest `|a - b|` over every entry, relative to the largest `|b|` of its tensor, of tensors named alike,
/// asserted to be at most `tolerance`.
fn max_scaled_difference(a: &[(String, &Tensor)], b: &[(String, &Tensor)], tolerance: f64) -> f64 {
    let values = |all: &[(String, &Tensor)]| all.iter().map(|(n, t)| (n.clone(), values_f64(t))).collect::<Vec<_>>();
    max_scaled(&values(a), &values(b), 1e-6, tolerance)
}

/// [`max_scaled_difference`] of values, a tensor's largest taken as at least `floor`.
fn max_scaled(a: &[(String, Vec<f64>)], b: &[(String, Vec<f64>)], floor: f64, tolerance: f64) -> f64 {
    assert_eq!(a.len(), b.len());
    let mut worst: f64 = 0.0;
    for ((name, a), (other, b)) in a.iter().zip(b) {
        assert_eq!(name, other);
        let scale = b.iter().fold(floor, |m, v| m.max(v.abs()));
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let err = (x - y).abs() / scale;
            assert!(err <= tolerance, "`{name}`[{i}]: {x} vs {y} (its tensor's largest {scale:e})");
            worst = worst.max(err);
        }
    }
    worst
}

#[test]
fn a_preference_only_the_image_decides_is_learnt() {
    let checkpoint = ChatCheckpoint::new("reward-toy");
    let train: Vec<_> = pictures(&checkpoint, "t", 8, 0).iter().map(|(p, red)| pair(p, *red)).collect();
    let held: Vec<_> = pictures(&checkpoint, "h", 4, 23).iter().map(|(p, red)| pair(p, *red)).collect();
    let train = batches(&checkpoint, &train, &[8]);
    let held_out = batches(&checkpoint, &held, &[4]);
    let steps = 40;
    let score: Vec<f32> = init_score(HIDDEN, 0.02, 1, Device::Cpu).unwrap().to_vec().unwrap();
    let mut trainer = trainer(load(&checkpoint), &score, optimizer(1e-2, steps));
    let (before, held_before) = (trainer.evaluate(&train).unwrap(), trainer.evaluate(&held_out).unwrap());
    for _ in 0..steps {
        trainer.step(&train).unwrap();
    }
    let (after, held_after) = (trainer.evaluate(&train).unwrap(), trainer.evaluate(&held_out).unwrap());
    eprintln!("train {before:?} → {after:?}\nheld-out {held_before:?} → {held_after:?}");
    assert_eq!(after.accuracy, 1.0, "{after:?}");
    assert!(after.loss < 0.2 * before.loss, "loss {} → {}", before.loss, after.loss);
    assert!(held_after.accuracy >= 0.75, "held-out {held_before:?} → {held_after:?}");
}

/// A pair file with images (`good` of them, then a missing and an unreadable picture at lines 3 and 5) and a
/// ranked-list file in `data/`.
fn files(checkpoint: &ChatCheckpoint, good: usize) -> (PathBuf, PathBuf) {
    let mut records: Vec<_> = pictures(checkpoint, "f", good, 3).iter().map(|(p, red)| pair(p, *red)).collect();
    records.insert(2, pair("images/missing.png", true));
    records.insert(4, pair("images/corrupt.png", false));
    let pairs = checkpoint.dir.join("data/pairs.jsonl");
    write_lines(&pairs, &records);
    let rankings: Vec<_> = pictures(checkpoint, "r", 4, 17)
        .iter()
        .map(|(p, red)| {
            let responses = if *red { ["Yes.", "Maybe.", "No."] } else { ["No.", "Maybe.", "Yes."] };
            serde_json::json!({"prompt": "<image>\nIs the picture red?", "responses": responses, "image": p})
        })
        .collect();
    let ranked = checkpoint.dir.join("data/rankings.jsonl");
    write_lines(&ranked, &rankings);
    (pairs, ranked)
}

fn run(checkpoint: &ChatCheckpoint, data: RewardData, out: &str) -> RewardRun {
    RewardRun {
        model: checkpoint.model(),
        data,
        out: checkpoint.dir.join(out),
        train: TrainOptions { epochs: 2, lr: 1e-3, batch_size: 2, seed: 4, ..TrainOptions::default() },
        video_frames: VIDEO_FRAMES,
        ..RewardRun::default()
    }
}

fn weights(outcome: &RewardOutcome) -> Vec<u8> {
    std::fs::read(outcome.checkpoint.join("model.safetensors")).unwrap()
}

#[test]
fn a_run_on_images_reports_bad_media_by_line_saves_the_head_beside_the_llava_weights_and_resumes_bitwise() {
    let checkpoint = ChatCheckpoint::new("reward-run");
    let (pairs, rankings) = files(&checkpoint, 6);
    let never = AtomicBool::new(false);
    let straight = run(&checkpoint, RewardData::Pairs(pairs.clone()), "straight").run(&never, |_, _| {}).unwrap();
    let bad: Vec<(usize, &str)> = straight.data.bad.iter().map(|b| (b.line, b.problem.kind())).collect();
    assert_eq!(bad, [(3, "missing media"), (5, "unreadable media")]);
    assert_eq!((straight.steps_done, straight.total_steps), (6, 6));

    // Stopped mid-epoch, resumed: bitwise the same weights and head.
    let stop = AtomicBool::new(false);
    let halves = run(&checkpoint, RewardData::Pairs(pairs.clone()), "halves");
    let first = halves.run(&stop, |m, _| stop.store(m.step == 2, Ordering::SeqCst)).unwrap();
    assert_eq!((first.steps_done, first.interrupted), (2, true));
    let resumed = RewardRun { train: TrainOptions { resume: true, ..halves.train.clone() }, ..halves.clone() };
    let resumed = resumed.run(&never, |_, _| {}).unwrap();
    assert_eq!(resumed.steps_done, 6);
    assert!(weights(&straight) == weights(&resumed), "the resumed run's weights differ");

    // The checkpoint: the source's tensors and `score.weight`, the source's config (no transformers class for a
    // LLaVA sequence classifier), reloaded by our loader with the head.
    let dir = &straight.checkpoint;
    let (saved, source) = (WeightStore::open(dir).unwrap(), WeightStore::open(&checkpoint.model()).unwrap());
    let mut names = saved.names();
    names.sort_unstable();
    let mut want = source.names();
    want.push(SCORE_WEIGHT);
    want.sort_unstable();
    assert_eq!(names, want);
    let config = |d: &Path| std::fs::read_to_string(d.join("config.json")).unwrap();
    assert_eq!(config(dir), config(&checkpoint.model()));
    assert!(TrainModel::load(dir, DType::F32, Device::Cpu, VIDEO_FRAMES).is_err(), "a strict load refuses the head");
    let lenient = LoadOptions { lenient: true, ..LoadOptions::default() };
    let model = TrainModel::load_with(dir, DType::F32, Device::Cpu, VIDEO_FRAMES, &lenient).unwrap();
    let score = load_score(dir, HIDDEN, Device::Cpu).unwrap().expect("the head is saved");
    let initial = init_score(HIDDEN, 0.02, 4, Device::Cpu).unwrap();
    assert_ne!(score.to_vec::<f32>().unwrap(), initial.to_vec::<f32>().unwrap(), "the head was trained");
    let reloaded = RewardTrainer::new(model, score, RewardTrainerConfig::default()).unwrap();
    let records: Vec<_> = pictures(&checkpoint, "f", 2, 3).iter().map(|(p, red)| pair(p, *red)).collect();
    let batch = batches(&checkpoint, &records, &[2]).remove(0);
    let metrics = reloaded.evaluate(std::slice::from_ref(&batch)).unwrap();
    assert!(metrics.loss.is_finite());
    if let Ok(root) = std::env::var("UNIREWARD_REWARD_CHECKPOINT_OUT") {
        write_for_transformers(Path::new(&root), dir, &reloaded, &batch.rows);
    }

    // Refusing bad records names the first one's line; K-wise trains on ranked lists with images.
    let mut refuse = run(&checkpoint, RewardData::Pairs(pairs), "refused");
    refuse.train.bad_records = BadRecordPolicy::Refuse;
    let err = refuse.run(&never, |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("line 3"), "{err}");
    let kwise = RewardRun {
        loss: RewardLoss::Kwise(KwiseMethod::PlackettLuce),
        ..run(&checkpoint, RewardData::Rankings(rankings), "kwise")
    };
    let mut losses = Vec::new();
    let outcome = kwise.run(&never, |m, _| losses.push(m.metrics.loss)).unwrap();
    assert_eq!((outcome.steps_done, losses.len()), (4, 4));
    assert!(losses.iter().all(|l| l.is_finite() && *l > 0.0), "{losses:?}");
}

/// The checkpoint in `dir` and, per row of `rows`, its real ids, its image's pixels as the trainer gives them to
/// the model, and its reward, for `tests/reference/train_reward_llava.py ROOT`.
fn write_for_transformers(root: &Path, dir: &Path, trainer: &RewardTrainer, rows: &SequenceBatch) {
    copy_checkpoint_for_transformers(dir, root);
    let TrainModel::Llava(llava) = trainer.model() else { panic!("a LLaVA model") };
    let rewards = trainer.rewards(rows).unwrap();
    let expected: Vec<serde_json::Value> = (0..rows.rows)
        .map(|row| {
            let real = rows.mask[row * rows.len..(row + 1) * rows.len].iter().filter(|&&m| m != 0).count();
            let [image] = <[_; 1]>::try_from(llava.media.load(&rows.media[row]).unwrap()).unwrap();
            serde_json::json!({
                "ids": &rows.ids[row * rows.len..][..real], "pixel_values": image.pixels.to_vec::<f32>().unwrap(),
                "pixel_shape": image.pixels.shape(), "image_size": [image.size.0, image.size.1],
                "reward": rewards[row],
            })
        })
        .collect();
    std::fs::write(root.join("expected.json"), serde_json::Value::from(expected).to_string()).unwrap();
}

#[test]
fn a_text_only_model_refuses_pairs_with_images_by_line() {
    let scratch = Scratch::new("reward-text-media");
    // The Qwen2 model with a tokenizer that has `<image>`, so the records tokenize and the model refuses them.
    let checkpoint = ChatCheckpoint::new("reward-text-media");
    std::fs::copy(checkpoint.model().join("tokenizer.json"), scratch.path("model/tokenizer.json")).unwrap();
    let path = scratch.path("pairs.jsonl");
    std::fs::copy(common::reference::fixture("llava/images/anyres_0.png"), scratch.path("a.png")).unwrap();
    write_lines(&path, &[serde_json::json!({"prompt": "Which?", "chosen": "a", "rejected": "b"}), pair("a.png", true)]);
    let run = RewardRun { model: scratch.path("model"), data: RewardData::Pairs(path), ..RewardRun::default() };
    let err = run.run(&AtomicBool::new(false), |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("line 2") && err.contains("text-only Qwen2"), "{err}");
}

#[test]
fn train_reward_trains_a_llava_checkpoint_from_the_command_line() {
    let checkpoint = ChatCheckpoint::new("reward-cli");
    let (pairs, _) = files(&checkpoint, 4);
    let out = checkpoint.dir.join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_unireward"))
        .args(["train-reward", "--model", checkpoint.model().to_str().unwrap(), "--pairs", pairs.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap(), "--batch-size", "2", "--lr", "1e-3", "--video-frames", "4"])
        .args(["--eval", pairs.to_str().unwrap(), "--freeze", "vision"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "train-reward failed: {stderr}");
    assert!(stderr.contains("skipped 2 bad record") && stderr.contains("line 3"), "{stderr}");
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(last["step"], 2, "{log}");
    assert!(last["eval/accuracy"].as_f64().is_some(), "{log}");
    let trained = WeightStore::open(&out.join("checkpoint-2")).unwrap();
    assert_eq!(trained.shape(SCORE_WEIGHT), Some(&[1, HIDDEN][..]));
}
