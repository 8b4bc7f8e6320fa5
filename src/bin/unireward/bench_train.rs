//! `unireward bench train`: whole SFT training steps through the trainer `train-judge` runs ([`SftTrainer::step`]:
//! forward, the next-token loss through the fused head, backward, clipping by global norm, AdamW), f32 on the CPU, on
//! a Qwen2 with random weights at Qwen2-0.5B's shapes or on a checkpoint (a LLaVA-OneVision one gets one image of
//! random pixels per row, in the anyres layout its training data gets). Steps are timed as in `bench model` (see
//! `bench_passes`), and the process's peak resident set during the steps is reported: a step's memory is mostly the
//! parameters, their gradients and the optimizer's state, which the heap figure of the table does not count once
//! the first step made them. `scripts/bench_torch_train_step.py` runs the same step in PyTorch eager.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use unireward::media::ImageProcessor;
use unireward::model::architecture::Architecture;
use unireward::model::llava::LlavaOnevisionModel;
use unireward::model::{ForwardOptions, Qwen2Model};
use unireward::train::data::{MediaKind, MediaLoader, MediaRef, SequenceBatch, DEFAULT_VIDEO_FRAMES, IGNORE_INDEX};
use unireward::train::model::{LlavaTrainModel, TrainModel};
use unireward::train::optim::{AdamWConfig, ParamGroup};
use unireward::train::run::frozen_fragments;
use unireward::train::sft::{SftConfig, SftTrainer};
use unireward::{DType, Device};

use crate::bench_passes::PassTimer;
use crate::report;
use crate::synthetic;

/// Text tokens before the image in a LLaVA row (the rest of `--t` follow it), as `scripts/bench_torch_llava.py`.
const PROMPT_TOKENS: usize = 32;

#[derive(clap::Args)]
pub struct TrainArgs {
    /// A checkpoint to train (`scripts/bench_torch_train_step.py --save DIR` writes a random LLaVA-OneVision-0.5B);
    /// default: a Qwen2 with random weights at Qwen2-0.5B's shapes.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Sequences per step.
    #[arg(long, default_value_t = 1)]
    n: usize,
    /// Text tokens per sequence (a LLaVA-OneVision row adds its image's placeholders).
    #[arg(long, default_value_t = 512)]
    t: usize,
    /// Decoder layers of the random Qwen2 (Qwen2-0.5B has 24).
    #[arg(long, default_value_t = 24)]
    layers: usize,
    /// Vocabulary of the random Qwen2 (Qwen2-0.5B's by default).
    #[arg(long, default_value_t = 151_936)]
    vocab: usize,
    /// A LLaVA-OneVision row's image, HEIGHTxWIDTH pixels.
    #[arg(long, default_value = "384x384", value_parser = parse_image_size)]
    image: (usize, usize),
    /// Parameters left untrained, as `train-judge --freeze` names them (repeatable; `vision`: the LLaVA tower).
    #[arg(long)]
    freeze: Vec<String>,
    /// Keep only each layer's input in the forward and recompute the layer in the backward (PyTorch's side:
    /// `--gradient-checkpointing`).
    #[arg(long)]
    recompute: bool,
    /// Timed steps after two untimed ones (the warm-up and the heap measurement).
    #[arg(long, default_value_t = 3)]
    iters: usize,
}

fn parse_image_size(s: &str) -> Result<(usize, usize), String> {
    let parsed = s.split_once(['x', 'X']).and_then(|(h, w)| Some((h.parse().ok()?, w.parse().ok()?)));
    match parsed {
        Some((h, w)) if h > 0 && w > 0 => Ok((h, w)),
        _ => Err(format!("`{s}` is not HEIGHTxWIDTH in pixels (e.g. 384x384)")),
    }
}

/// An image file of random pixels, removed when dropped.
struct ScratchImage(PathBuf);

impl ScratchImage {
    fn write((height, width): (usize, usize)) -> anyhow::Result<ScratchImage> {
        let path = std::env::temp_dir().join(format!("unireward-bench-train-{}.png", std::process::id()));
        let pixels: Vec<u8> =
            synthetic::values(11, height * width * 3, 1.0).iter().map(|v| ((v + 3.0) * 42.5) as u8).collect();
        let (w, h) = (u32::try_from(width)?, u32::try_from(height)?);
        image::save_buffer(&path, &pixels, w, h, image::ExtendedColorType::Rgb8)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(ScratchImage(path))
    }
}

impl Drop for ScratchImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The checkpoint in `dir` in f32 on the CPU; a LLaVA-OneVision one without `preprocessor_config.json` (as
/// transformers' `save_pretrained` writes a model) gets transformers' default image processor.
fn load(dir: &Path) -> anyhow::Result<TrainModel> {
    Ok(match Architecture::of_checkpoint(dir)? {
        Architecture::Qwen2 => TrainModel::from(Qwen2Model::load(dir, DType::F32, Device::Cpu)?),
        Architecture::LlavaOnevision => {
            let model = LlavaOnevisionModel::load(dir, DType::F32, Device::Cpu)?;
            let processor = ImageProcessor::for_checkpoint_or_defaults(dir)?;
            let media = MediaLoader::new(processor, &model, DEFAULT_VIDEO_FRAMES)?;
            TrainModel::Llava(Box::new(LlavaTrainModel { model, media }))
        }
    })
}

/// `n` rows of `t` random text tokens, every one labelled; with `image`, each row holds that image's placeholders
/// after its first [`PROMPT_TOKENS`] tokens (unlabelled, as the data pipeline leaves them).
fn batch(model: &TrainModel, n: usize, t: usize, image: Option<&Path>) -> anyhow::Result<SequenceBatch> {
    let vocab = model.language_model().config.vocab_size;
    let (media, placeholder) = match (model.media_loader(), image) {
        (Some(loader), Some(path)) => {
            let media = vec![MediaRef { kind: MediaKind::Image, path: path.to_path_buf() }];
            let rows = loader.placeholder_counts(&loader.load(&media)?)?[0];
            (media, Some((loader.placeholders().image, rows)))
        }
        _ => (Vec::new(), None),
    };
    // Ordinary tokens: below the placeholder ids, which sit among the special tokens at the vocabulary's end.
    let words_below = placeholder.map_or(vocab, |(id, _)| vocab.min(id as usize));
    let words = synthetic::labels(7, n, t, 0, words_below, Device::Cpu)?.to_vec::<i64>()?;
    let (mut ids, mut labels) = (Vec::new(), Vec::new());
    for row in words.chunks(t) {
        let prompt = if placeholder.is_some() { PROMPT_TOKENS.min(t) } else { 0 };
        let (id, count) = placeholder.unwrap_or((0, 0));
        ids.extend(row[..prompt].iter().chain(&vec![id; count]).chain(&row[prompt..]));
        labels.extend(row[..prompt].iter().chain(&vec![IGNORE_INDEX; count]).chain(&row[prompt..]));
    }
    let len = ids.len() / n;
    Ok(SequenceBatch { rows: n, len, mask: vec![1; ids.len()], ids, labels, tasks: vec![0; n], media: vec![media; n] })
}

/// The process's resident-set field `field` of /proc/self/status (VmRSS, VmHWM), in bytes.
fn status_bytes(field: &str) -> anyhow::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':'));
    let kib: usize = line.and_then(|l| l.split_whitespace().next()?.parse().ok()).context(format!("no {field}"))?;
    Ok(kib * 1024)
}

/// Resets the peak resident set (VmHWM) to the current one (Linux ≥ 4.0; `false` where refused).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

pub fn run(args: &TrainArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.iters > 0, "--iters must be at least 1");
    anyhow::ensure!(args.n > 0, "--n must be at least 1");
    anyhow::ensure!(args.t >= 2, "--t must be at least 2 (the loss predicts the next token)");
    anyhow::ensure!(args.vocab >= 2, "--vocab must be at least 2");
    let build = Instant::now();
    let model = match &args.model {
        Some(dir) => load(dir)?,
        None => {
            let config = crate::bench_model::qwen2_0_5b(args.layers);
            let config = unireward::model::Qwen2Config { vocab_size: args.vocab, ..config };
            TrainModel::from(crate::bench_model::random_model(config, DType::F32, Device::Cpu)?)
        }
    };
    let built_in = build.elapsed();
    let image = model.media_loader().is_some().then(|| ScratchImage::write(args.image)).transpose()?;
    let batch = batch(&model, args.n, args.t, image.as_ref().map(|i| i.0.as_path()))?;
    let frozen = frozen_fragments(&args.freeze);
    let frozen: Vec<&str> = frozen.iter().map(String::as_str).collect();
    let config = SftConfig {
        optimizer: AdamWConfig { lr: 1e-5, weight_decay: 0.01, max_grad_norm: Some(1.0), ..AdamWConfig::default() },
        groups: if frozen.is_empty() { Vec::new() } else { vec![ParamGroup::new("frozen", &frozen).frozen()] },
        forward: ForwardOptions { recompute: args.recompute },
        tasks: 1,
        ..SftConfig::default()
    };
    let params: usize = model.named_parameters().iter().map(|(_, p)| p.numel()).sum();
    let flops = match &model {
        TrainModel::Qwen2(qwen2) => crate::bench_model::model_flops(&qwen2.config, params, args.n, batch.len),
        TrainModel::Llava(llava) => {
            let tiles = llava.media.load(&batch.media[0])?[0].pixels.shape()[0];
            let [fwd, fwd_bwd] = crate::bench_llava::model_flops(&llava.model, batch.len, tiles);
            [fwd * args.n as f64, fwd_bwd * args.n as f64]
        }
    };
    let trainer = RefCell::new(SftTrainer::new(model, config)?);
    let trainable = trainer.borrow().optimizer().trainable_numel();

    let description = match &args.model {
        Some(dir) => format!("{:?} from {}", trainer.borrow().model().architecture(), dir.display()),
        None => format!("Qwen2-0.5B shapes with {} layers and vocabulary {}, random weights", args.layers, args.vocab),
    };
    let image_note = match args.image {
        (h, w) if image.is_some() => format!(", one {h}×{w} image per row, anyres"),
        _ => String::new(),
    };
    println!(
        "SFT training step (forward, fused-head loss, backward, clip to norm 1, AdamW): {description}; {:.1}M \
         parameters, {:.1}M trained{}; f32 on the CPU; N = {}, T = {} ({} text tokens{image_note}){}; median of \
         {} steps after two untimed ones",
        params as f64 / 1e6,
        trainable as f64 / 1e6,
        if args.freeze.is_empty() { String::new() } else { format!(" (frozen: {})", args.freeze.join(", ")) },
        args.n,
        batch.len,
        args.t,
        if args.recompute { ", recompute" } else { "" },
        args.iters,
    );
    println!("built in {}", report::seconds(built_in));

    let rss_before = status_bytes("VmRSS")?;
    let exact_peak = reset_peak_rss();
    let timer = PassTimer::new(Device::Cpu)?;
    let step = || trainer.borrow_mut().step(std::slice::from_ref(&batch)).map(|m| m.loss as f32);
    let passes = timer.measure(&[("training step", flops[1], &step)], args.iters)?;
    timer.print(&passes, args.n * batch.len);
    println!(
        "peak resident set during the steps: {} (resident before the first step: {}; parameters {}, their \
         gradient buffers {}, AdamW's moments {}){}",
        report::bytes(status_bytes("VmHWM")?),
        report::bytes(rss_before),
        report::bytes(params * 4),
        report::bytes(params * 4),
        report::bytes(2 * trainable * 4),
        if exact_peak { "" } else { " (peak not reset: it includes building the model)" }
    );
    println!(
        "GFLOP/s: model FLOPs of a forward + backward (6·P per token plus attention, as bench model and bench llava \
         count them), the optimizer not counted"
    );
    Ok(())
}
