//! `unireward bench llava`: the whole reward model — SigLIP tower, projector, anyres packing and the Qwen2 language
//! model — on one batch of a LLaVA-OneVision checkpoint: forward to the causal-LM loss, and forward + loss +
//! backward to every parameter, into fresh gradients and into gradients kept across steps, timed as the median of
//! interleaved runs after a warm-up (see `bench_passes`). `scripts/bench_torch_llava.py --save DIR` writes a
//! random checkpoint at LLaVA-OneVision-0.5B's shapes with such a batch and times transformers on the same: the two
//! losses printed must agree.

use std::cell::RefCell;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use unireward::model::llava::{LlavaBatch, LlavaGradients, LlavaOnevisionModel, MediaInput};
use unireward::model::ForwardOptions;
use unireward::ops::fused_linear::{fused_linear_logprobs, FusedLinearConfig, LinearHead};
use unireward::{DType, Device, Tensor};

use crate::bench_passes::PassTimer;
use crate::report;

/// The batch file `scripts/bench_torch_llava.py` writes beside the checkpoint.
const INPUTS_FILE: &str = "bench_inputs.safetensors";

#[derive(clap::Args)]
pub struct LlavaArgs {
    /// A LLaVA-OneVision checkpoint directory, in either layout.
    #[arg(long)]
    model: PathBuf,
    /// The batch: a safetensors file with `input_ids` [1, T] (one placeholder per packed feature row),
    /// `pixel_values` [tiles, 3, S, S] of one image and `image_size` [2] (its height and width before
    /// preprocessing); default: the model directory's bench_inputs.safetensors.
    #[arg(long)]
    inputs: Option<PathBuf>,
    /// Compute dtype: f32 or bf16 (f16 works too).
    #[arg(long, default_value = "f32", value_parser = crate::parse_float_dtype)]
    dtype: DType,
    /// Keep only each layer's input in the forward and recompute the layer in the backward.
    #[arg(long)]
    recompute: bool,
    /// Timed runs of each pass after one warm-up.
    #[arg(long, default_value_t = 2)]
    iters: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = crate::parse_device)]
    device: Device,
}

/// One image's batch, as read from the inputs file.
struct Inputs {
    ids: Tensor,
    mask: Tensor,
    pixel_values: Tensor,
    /// (height, width) before preprocessing.
    size: (usize, usize),
}

/// `name` of a safetensors file as a CPU tensor: I64 as i64, F32 as f32.
fn read_tensor(file: &safetensors::SafeTensors<'_>, name: &str) -> anyhow::Result<Tensor> {
    let view = file.tensor(name).with_context(|| format!("no tensor `{name}`"))?;
    let (shape, data) = (view.shape(), view.data());
    Ok(match view.dtype() {
        safetensors::Dtype::I64 => {
            let values: Vec<i64> = data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
            Tensor::from_slice(&values, shape, Device::Cpu)?
        }
        safetensors::Dtype::F32 => {
            let values: Vec<f32> = data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            Tensor::from_slice(&values, shape, Device::Cpu)?
        }
        other => anyhow::bail!("`{name}` is {other:?}; expected I64 ids and sizes, F32 pixels"),
    })
}

fn read_inputs(path: &std::path::Path, dtype: DType, device: Device) -> anyhow::Result<Inputs> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file = safetensors::SafeTensors::deserialize(&bytes).with_context(|| format!("{}", path.display()))?;
    let ids = read_tensor(&file, "input_ids")?;
    let ids_shape = ids.shape().to_vec();
    anyhow::ensure!(ids_shape.len() == 2 && ids_shape[0] == 1, "`input_ids` must be [1, T], not {ids_shape:?}");
    let mask = Tensor::from_slice(&vec![1i64; ids.numel()], &ids_shape, device)?;
    let pixel_values = read_tensor(&file, "pixel_values")?.to_dtype(dtype)?.to_device(device)?;
    let size = read_tensor(&file, "image_size")?.to_dtype(DType::I64)?.to_vec::<i64>()?;
    let positive = |v: i64| usize::try_from(v).ok().filter(|&v| v > 0);
    let &[height, width] = size.as_slice() else {
        anyhow::bail!("`image_size` must hold a height and a width, not {size:?}");
    };
    let (Some(height), Some(width)) = (positive(height), positive(width)) else {
        anyhow::bail!("`image_size` must hold a positive height and width, not {size:?}");
    };
    Ok(Inputs { ids: ids.to_device(device)?, mask, pixel_values, size: (height, width) })
}

/// Model FLOPs of a forward and of a forward + backward over `t` tokens with one image in `tiles` tiles: 2·P per
/// token (or patch) forward, 6·P forward + backward, for the language model over T tokens and the tower over the
/// tiles' patches, plus attention's 4·L·T²·H forward (3× with the backward) in each.
pub(crate) fn model_flops(model: &LlavaOnevisionModel, t: usize, tiles: usize) -> [f64; 2] {
    let (text, tower) = (&model.config.text, &model.vision_tower.config);
    let lm_params = model.language_model.weights.numel();
    let vision_params: usize = model.vision_tower.weights.named().iter().map(|(_, w)| w.numel()).sum();
    let patches = tower.num_patches();
    let lm_attention = 4.0 * (text.num_hidden_layers * t * t * text.hidden_size) as f64;
    let tower_layers = model.vision_tower.weights.layers.len();
    let tower_attention = 4.0 * (tiles * tower_layers * patches * patches * tower.hidden_size) as f64;
    let matmuls = lm_params as f64 * t as f64 + vision_params as f64 * (tiles * patches) as f64;
    [2.0 * matmuls + lm_attention + tower_attention, 6.0 * matmuls + 3.0 * (lm_attention + tower_attention)]
}

struct Bench<'a> {
    model: &'a LlavaOnevisionModel,
    inputs: &'a Inputs,
    /// Next-token labels [1, T] for the forward-only pass: −100 at the placeholders and the last position.
    labels: Tensor,
    opts: ForwardOptions,
    timer: PassTimer,
}

impl Bench<'_> {
    fn forward_pass(&self) -> unireward::Result<unireward::model::llava::LlavaPass> {
        let media = [MediaInput::Image { pixel_values: &self.inputs.pixel_values, size: self.inputs.size }];
        let batch = LlavaBatch { ids: &self.inputs.ids, mask: &self.inputs.mask, media: &media };
        self.model.forward(&batch, self.opts)
    }

    /// Forward and the fused loss only (no gradient); returns the loss.
    fn forward(&self) -> unireward::Result<f32> {
        let pass = self.forward_pass()?;
        let lm = &self.model.language_model;
        let head = LinearHead { hidden: pass.lm.hidden(), weight: lm.weights.head(), bias: None };
        let out = fused_linear_logprobs(head, &self.labels, None, &FusedLinearConfig::default())?;
        self.timer.sample_device()?;
        let total: f64 = out.logps.to_vec::<f32>()?.iter().map(|&l| f64::from(l)).sum();
        let counted: f64 = out.token_counts.to_vec::<f32>()?.iter().map(|&c| f64::from(c)).sum();
        Ok((-total / counted) as f32)
    }

    /// Forward, loss and backward to every parameter's gradient, into `out`; returns the loss.
    fn forward_backward_into(&self, out: &mut LlavaGradients) -> unireward::Result<f32> {
        let pass = self.forward_pass()?;
        let loss = self.model.causal_lm_loss_into(&pass, &FusedLinearConfig::default(), out)?;
        self.timer.sample_device()?;
        self.model.backward_into(pass, loss.grads, out)?;
        self.timer.sample_device()?;
        Ok(loss.loss)
    }

    /// The same into fresh gradient buffers.
    fn forward_backward(&self) -> unireward::Result<f32> {
        let mut out = self.model.zero_gradients()?;
        self.forward_backward_into(&mut out)
    }
}

/// Next-token labels of `ids`: the following id, −100 where that is a placeholder and at the last position.
fn next_token_labels(ids: &[i64], placeholders: [i64; 2]) -> Vec<i64> {
    let mut labels: Vec<i64> = ids[1..].iter().map(|&id| if placeholders.contains(&id) { -100 } else { id }).collect();
    labels.push(-100);
    labels
}

pub fn run(args: &LlavaArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.iters > 0, "--iters must be at least 1");
    let device = args.device;
    let build = Instant::now();
    let model = LlavaOnevisionModel::load(&args.model, args.dtype, device)?;
    let built_in = build.elapsed();
    let inputs_path = args.inputs.clone().unwrap_or_else(|| args.model.join(INPUTS_FILE));
    let inputs = read_inputs(&inputs_path, args.dtype, device)?;
    let t = inputs.ids.shape()[1];
    anyhow::ensure!(t >= 2, "`input_ids` must hold at least 2 tokens (the loss predicts the next token)");
    let placeholders = model.placeholders();
    let host_ids = inputs.ids.to_dtype(DType::I64)?.to_vec::<i64>()?;
    let labels = next_token_labels(&host_ids, [placeholders.image, placeholders.video]);
    let image_tokens = host_ids.iter().filter(|&&id| id == placeholders.image).count();

    // Gradient buffers kept across steps, made before the baselines so that no figure counts them.
    let kept = RefCell::new(model.zero_gradients()?);
    let bench = Bench {
        model: &model,
        inputs: &inputs,
        labels: Tensor::from_slice(&labels, &[1, t], device)?,
        opts: ForwardOptions { recompute: args.recompute },
        timer: PassTimer::new(device)?,
    };

    let text = &model.config.text;
    let tower = &model.vision_tower.config;
    let lm_params = model.language_model.weights.numel();
    let vision_params: usize = model.vision_tower.weights.named().iter().map(|(_, w)| w.numel()).sum();
    let tiles = inputs.pixel_values.shape()[0];
    println!(
        "LLaVA-OneVision from {}: language model hidden {}, {} layers, vocab {}, {:.1}M parameters; vision tower \
         hidden {}, {} layers, {:.1}M parameters; {} on {device:?}; one {}×{} image in {tiles} tiles of {}², {} \
         image tokens, T = {t}{}; median of {} interleaved runs after a warm-up",
        args.model.display(),
        text.hidden_size,
        text.num_hidden_layers,
        text.vocab_size,
        lm_params as f64 / 1e6,
        tower.hidden_size,
        model.vision_tower.weights.layers.len(),
        vision_params as f64 / 1e6,
        args.dtype,
        inputs.size.0,
        inputs.size.1,
        tower.image_size,
        image_tokens,
        if args.recompute { ", recompute" } else { "" },
        args.iters,
    );
    println!("loaded in {}", report::seconds(built_in));

    let passes = bench.timer.measure_training(
        &|| bench.forward(),
        &|| bench.forward_backward(),
        &|| bench.forward_backward_into(&mut kept.borrow_mut()),
        model_flops(&model, t, tiles),
        args.iters,
    )?;
    bench.timer.print(&passes, t);
    println!(
        "model FLOPs: 2·P forward and 6·P forward + backward per token (language model) and per patch (tower), plus \
         attention 4·L·T²·H forward, 3× that with the backward"
    );
    Ok(())
}
