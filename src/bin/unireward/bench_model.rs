//! `unireward bench model`: the Qwen2 decoder at Qwen2-0.5B's shapes with random weights — forward (to the hidden
//! states and the fused causal-LM loss) and forward + loss + backward, into fresh gradients and into gradients kept
//! across steps — timed as the median of a few interleaved runs after a warm-up, with tokens per second, peak memory
//! and, on CUDA, model FLOP utilisation. `scripts/bench_torch_qwen2.py` runs the same work in PyTorch eager.

use std::cell::{Cell, RefCell};
use std::time::Instant;

use unireward::model::qwen2::{MemoryReport, Qwen2Gradients, Qwen2Weights};
use unireward::model::{ForwardOptions, Qwen2Config, Qwen2Model};
use unireward::ops::fused_linear::{fused_linear_logprobs, FusedLinearConfig, LinearHead};
use unireward::{DType, Device, Tensor};

use crate::bench_passes::PassTimer;
use crate::report;
use crate::synthetic;

#[derive(clap::Args)]
pub struct ModelArgs {
    /// Sequences.
    #[arg(long, default_value_t = 1)]
    n: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    t: usize,
    /// Decoder layers (Qwen2-0.5B has 24).
    #[arg(long, default_value_t = 24)]
    layers: usize,
    /// Compute dtype: f32 or bf16 (f16 works too).
    #[arg(long, default_value = "f32", value_parser = crate::parse_float_dtype)]
    dtype: DType,
    /// Keep only each layer's input in the forward and recompute the layer in the backward.
    #[arg(long)]
    recompute: bool,
    /// Timed runs of each pass after one warm-up.
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = crate::parse_device)]
    device: Device,
}

/// Qwen2-0.5B's configuration with `layers` decoder layers.
pub(crate) fn qwen2_0_5b(layers: usize) -> Qwen2Config {
    Qwen2Config {
        vocab_size: 151_936,
        hidden_size: 896,
        intermediate_size: 4864,
        num_hidden_layers: layers,
        num_attention_heads: 14,
        num_key_value_heads: 2,
        max_position_embeddings: 32_768,
        rope_theta: 1e6,
        rms_norm_eps: 1e-6,
        tie_word_embeddings: true,
        torch_dtype: DType::BF16,
        eos_token_ids: vec![151_643],
    }
}

/// Random weights: projections and embeddings roughly normal with std 0.02 (a fresh seed per tensor), biases at
/// zero and norms at one, as transformers initialises a new model.
pub(crate) fn random_model(config: Qwen2Config, dtype: DType, device: Device) -> unireward::Result<Qwen2Model> {
    let mut seed = 0;
    let weights = Qwen2Weights::from_fn(&config, |name, shape| {
        seed += 1;
        if name.ends_with("norm.weight") {
            Tensor::from_f32(&vec![1.0; shape.iter().product()], shape, dtype, device)
        } else if name.ends_with(".bias") {
            Tensor::zeros(shape, dtype, device)
        } else {
            synthetic::tensor(seed, shape, 0.02, dtype, device)
        }
    })?;
    Qwen2Model::new(config, weights)
}

/// Model FLOPs of a forward and of a forward + backward over `n` sequences of `t` tokens: 2·P per token forward,
/// 6·P forward + backward (`params`, P, counts the tied embeddings once, as the LM head); attention scores and
/// weighted values add 4·L·T·H per token forward (the full T×T square, as PaLM counts it), 12·L·T·H forward +
/// backward.
pub(crate) fn model_flops(config: &Qwen2Config, params: usize, n: usize, t: usize) -> [f64; 2] {
    let tokens = (n * t) as f64;
    let attention = 4.0 * config.num_hidden_layers as f64 * tokens * t as f64 * config.hidden_size as f64;
    [2.0 * params as f64 * tokens + attention, 6.0 * params as f64 * tokens + 3.0 * attention]
}

struct Bench<'a> {
    model: &'a Qwen2Model,
    ids: Tensor,
    mask: Tensor,
    /// Next-token labels [N,T] (the last position of each sequence is ignored).
    labels: Tensor,
    opts: ForwardOptions,
    timer: PassTimer,
    /// The memory report of the last forward.
    memory: Cell<Option<MemoryReport>>,
}

impl Bench<'_> {
    /// Forward and the fused loss only (no gradient); returns the loss.
    fn forward(&self) -> unireward::Result<f32> {
        let pass = self.model.forward(&self.ids, &self.mask, self.opts)?;
        let head = LinearHead { hidden: pass.hidden(), weight: self.model.weights.head(), bias: None };
        let out = fused_linear_logprobs(head, &self.labels, None, &FusedLinearConfig::default())?;
        let total: f64 = out.logps.to_vec::<f32>()?.iter().map(|&l| f64::from(l)).sum();
        self.timer.sample_device()?;
        let counted = self.ids.numel() - self.ids.shape()[0];
        self.memory.set(Some(self.model.memory_report(&pass)));
        Ok((-total / counted as f64) as f32)
    }

    /// Forward, loss and backward to every parameter's gradient; returns the loss.
    fn forward_backward(&self) -> unireward::Result<f32> {
        let pass = self.model.forward(&self.ids, &self.mask, self.opts)?;
        let loss = self.model.causal_lm_loss(&pass, &self.ids, &FusedLinearConfig::default())?;
        self.timer.sample_device()?;
        let grads = self.model.backward(pass, loss.grads)?;
        self.timer.sample_device()?;
        drop(grads);
        Ok(loss.loss)
    }

    /// The same into gradient buffers kept across steps (a training loop's: no fresh pages to fault in, and the
    /// LM head's gradient written straight into its buffer).
    fn forward_backward_into(&self, out: &mut Qwen2Gradients) -> unireward::Result<f32> {
        let pass = self.model.forward(&self.ids, &self.mask, self.opts)?;
        let loss = self.model.causal_lm_loss_into(&pass, &self.ids, &FusedLinearConfig::default(), out)?;
        self.timer.sample_device()?;
        self.model.backward_into(pass, loss.grads, out)?;
        self.timer.sample_device()?;
        Ok(loss.loss)
    }
}

pub fn run(args: &ModelArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.iters > 0, "--iters must be at least 1");
    anyhow::ensure!(args.t >= 2, "--t must be at least 2 (the loss predicts the next token)");
    let (n, t, device) = (args.n, args.t, args.device);
    let config = qwen2_0_5b(args.layers);
    let build = Instant::now();
    let model = random_model(config.clone(), args.dtype, device)?;
    let params = model.weights.numel();
    let built_in = build.elapsed();

    let ids = synthetic::labels(7, n, t, 0, config.vocab_size, device)?;
    let host_ids = ids.to_vec::<i64>()?;
    let labels: Vec<i64> = (0..n * t).map(|i| if (i + 1) % t == 0 { -100 } else { host_ids[i + 1] }).collect();
    // Gradient buffers kept across steps, made before the baselines so that no figure counts them.
    let kept = RefCell::new(Qwen2Gradients {
        weights: model.weights.zeros_like()?,
        inputs_embeds: Tensor::zeros(&[n, t, config.hidden_size], args.dtype, device)?,
    });
    let bench = Bench {
        model: &model,
        labels: Tensor::from_slice(&labels, &[n, t], device)?,
        mask: Tensor::from_slice(&vec![1i64; n * t], &[n, t], device)?,
        ids,
        opts: ForwardOptions { recompute: args.recompute },
        timer: PassTimer::new(device)?,
        memory: Cell::new(None),
    };

    println!(
        "Qwen2-0.5B shapes (hidden {}, {} layers, {}/{} heads, intermediate {}, vocab {}, tied), random weights: \
         {:.1}M parameters, {} on {device:?}; N = {n}, T = {t}{}; median of {} interleaved runs after a warm-up",
        config.hidden_size,
        config.num_hidden_layers,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.intermediate_size,
        config.vocab_size,
        params as f64 / 1e6,
        args.dtype,
        if args.recompute { ", recompute" } else { "" },
        args.iters,
    );
    println!("built in {}", report::seconds(built_in));

    let passes = bench.timer.measure_training(
        &|| bench.forward(),
        &|| bench.forward_backward(),
        &|| bench.forward_backward_into(&mut kept.borrow_mut()),
        model_flops(&config, params, n, t),
        args.iters,
    )?;
    bench.timer.print(&passes, n * t);
    println!(
        "model FLOPs: 2·P·tokens forward, 6·P·tokens forward + backward, plus attention 4·L·N·T²·H forward, 3× that \
         with the backward"
    );
    if let Some(memory) = bench.memory.get() {
        let kept = if args.recompute { "layer inputs kept (recompute)" } else { "all activations kept" };
        println!("model memory_report ({kept}): {memory}");
    }
    Ok(())
}
