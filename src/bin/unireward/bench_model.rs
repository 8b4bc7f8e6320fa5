//! `unireward bench model`: the Qwen2 decoder at Qwen2-0.5B's shapes with random weights — forward (to the hidden
//! states and the fused causal-LM loss) and forward + loss + backward, into fresh gradients and into gradients kept
//! across steps — timed as the median of a few interleaved runs after a warm-up, with tokens per second, peak memory
//! and, on CUDA, model FLOP utilisation. `scripts/bench_torch_qwen2.py` runs the same work in PyTorch eager.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use unireward::model::qwen2::{MemoryReport, Qwen2Gradients, Qwen2Weights};
use unireward::model::{ForwardOptions, Qwen2Config, Qwen2Model};
use unireward::ops::fused_linear::{fused_linear_logprobs, FusedLinearConfig, LinearHead};
use unireward::runtime::host_cache;
use unireward::{DType, Device, Tensor};

use crate::peak_alloc::PeakMeter;
use crate::report;
use crate::synthetic;

/// H200 peaks (dense, no sparsity): bf16 tensor cores, and f32 without tensor cores.
const H200_BF16_FLOPS: f64 = 989e12;
const H200_F32_FLOPS: f64 = 67e12;

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

/// Waits for queued GPU work (ops return before their kernels finish); nothing on the CPU.
fn sync(device: Device) -> unireward::Result<()> {
    match device {
        Device::Cuda(ordinal) => unireward::runtime::cuda::backend(ordinal)?.synchronize(),
        Device::Cpu => Ok(()),
    }
}

/// Device memory in use (total − free) on a CUDA device, after waiting for queued work; 0 on the CPU.
fn device_used(device: Device) -> unireward::Result<usize> {
    match device {
        Device::Cuda(ordinal) => {
            let backend = unireward::runtime::cuda::backend(ordinal)?;
            backend.synchronize()?;
            let (free, total) = backend.context().mem_get_info()?;
            Ok(total - free)
        }
        Device::Cpu => Ok(0),
    }
}

/// One pass's measurements over the timed runs.
struct Pass {
    name: &'static str,
    times: Vec<Duration>,
    peak_heap: usize,
    /// Device memory in use beyond the weights, sampled when the pass holds the most (approximate).
    peak_device: usize,
    flops: f64,
    loss: f32,
}

impl Pass {
    fn median(&self) -> Duration {
        let mut t = self.times.clone();
        t.sort();
        t[t.len() / 2]
    }
}

struct Bench<'a> {
    model: &'a Qwen2Model,
    ids: Tensor,
    mask: Tensor,
    /// Next-token labels [N,T] (the last position of each sequence is ignored).
    labels: Tensor,
    opts: ForwardOptions,
    device: Device,
    /// Device memory in use once the model exists.
    base_device: usize,
    /// Whether to sample device memory (in the untimed warm-up runs only: sampling synchronises).
    sampling: Cell<bool>,
    /// Most device memory seen in use beyond `base_device` since the last reset.
    peak_device: Cell<usize>,
    /// The memory report of the last forward.
    memory: Cell<Option<MemoryReport>>,
}

impl<'m> Bench<'m> {
    fn sample_device(&self) -> unireward::Result<()> {
        if !self.sampling.get() {
            return Ok(());
        }
        let used = device_used(self.device)?.saturating_sub(self.base_device);
        self.peak_device.set(self.peak_device.get().max(used));
        Ok(())
    }

    /// Forward and the fused loss only (no gradient); returns the loss.
    fn forward(&self) -> unireward::Result<f32> {
        let pass = self.model.forward(&self.ids, &self.mask, self.opts)?;
        let head = LinearHead { hidden: pass.hidden(), weight: self.model.weights.head(), bias: None };
        let out = fused_linear_logprobs(head, &self.labels, None, &FusedLinearConfig::default())?;
        let total: f64 = out.logps.to_vec::<f32>()?.iter().map(|&l| f64::from(l)).sum();
        self.sample_device()?;
        let counted = self.ids.numel() - self.ids.shape()[0];
        self.memory.set(Some(self.model.memory_report(&pass)));
        Ok((-total / counted as f64) as f32)
    }

    /// Forward, loss and backward to every parameter's gradient; returns the loss.
    fn forward_backward(&self) -> unireward::Result<f32> {
        let pass = self.model.forward(&self.ids, &self.mask, self.opts)?;
        let loss = self.model.causal_lm_loss(&pass, &self.ids, &FusedLinearConfig::default())?;
        self.sample_device()?;
        let grads = self.model.backward(pass, loss.grads)?;
        self.sample_device()?;
        drop(grads);
        Ok(loss.loss)
    }

    /// The same into gradient buffers kept across steps (a training loop's: no fresh pages to fault in, and the
    /// LM head's gradient written straight into its buffer).
    fn forward_backward_into(&self, out: &mut Qwen2Gradients) -> unireward::Result<f32> {
        let pass = self.model.forward(&self.ids, &self.mask, self.opts)?;
        let loss = self.model.causal_lm_loss_into(&pass, &self.ids, &FusedLinearConfig::default(), out)?;
        self.sample_device()?;
        self.model.backward_into(pass, loss.grads, out)?;
        self.sample_device()?;
        Ok(loss.loss)
    }

    /// Runs each work once untimed (its warm-up, sampling device memory), once more for its heap peak from an
    /// empty host cache (what the work itself needs, not counting buffers other works left cached), then `iters`
    /// rounds that time each work in turn (synchronised, with the cache warm as in a training loop): interleaved,
    /// so that none gains from running first in a process whose memory the others have not shaped yet.
    fn measure(&self, works: &[Work<'_, 'm>], iters: usize) -> unireward::Result<Vec<Pass>> {
        let mut passes = Vec::with_capacity(works.len());
        for &(name, flops, f) in works {
            self.peak_device.set(0);
            self.sampling.set(true);
            f(self)?;
            self.sampling.set(false);
            let peak_device = self.peak_device.get();
            passes.push(Pass { name, times: Vec::new(), peak_heap: 0, peak_device, flops, loss: f32::NAN });
        }
        for (pass, &(_, _, f)) in passes.iter_mut().zip(works) {
            host_cache::release_cached_memory();
            let meter = PeakMeter::start();
            f(self)?;
            pass.peak_heap = meter.peak_extra();
        }
        for _ in 0..iters {
            for (pass, &(_, _, f)) in passes.iter_mut().zip(works) {
                let start = Instant::now();
                pass.loss = f(self)?;
                sync(self.device)?;
                pass.times.push(start.elapsed());
            }
        }
        Ok(passes)
    }
}

/// A pass to time: its name, its model FLOPs and the work (returning the loss).
type Work<'w, 'm> = (&'static str, f64, &'w dyn Fn(&Bench<'m>) -> unireward::Result<f32>);

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
        device,
        base_device: device_used(device)?,
        sampling: Cell::new(false),
        peak_device: Cell::new(0),
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

    // Model FLOPs: 2·P per token forward, 6·P forward + backward (P counts the tied embeddings once, as the LM
    // head); attention scores and weighted values add 4·L·T·H per token forward (the full T×T square, as PaLM
    // counts it), 12·L·T·H forward + backward.
    let tokens = (n * t) as f64;
    let attention = 4.0 * config.num_hidden_layers as f64 * tokens * t as f64 * config.hidden_size as f64;
    let fwd_flops = 2.0 * params as f64 * tokens + attention;
    let bwd_flops = 6.0 * params as f64 * tokens + 3.0 * attention;

    let into_kept = |b: &Bench<'_>| b.forward_backward_into(&mut kept.borrow_mut());
    let passes = bench.measure(
        &[
            ("forward + loss", fwd_flops, &Bench::forward),
            ("forward + loss + backward", bwd_flops, &Bench::forward_backward),
            ("  the same, kept gradients", bwd_flops, &into_kept),
        ],
        args.iters,
    )?;

    let cuda = matches!(device, Device::Cuda(_));
    print!("{:<26} {:>10} {:>10} {:>12} {:>9}", "pass", "median", "tokens/s", "peak heap", "loss");
    if cuda {
        print!(" {:>12} {:>10} {:>10} {:>10}", "device mem", "TFLOP/s", "MFU bf16", "MFU f32");
    }
    println!();
    for p in &passes {
        let secs = p.median().as_secs_f64();
        print!(
            "{:<26} {:>10} {:>10.0} {:>12} {:>9.4}",
            p.name,
            report::seconds(p.median()),
            tokens / secs,
            report::bytes(p.peak_heap),
            p.loss
        );
        if cuda {
            let achieved = p.flops / secs;
            print!(
                " {:>12} {:>10.1} {:>9.1}% {:>9.1}%",
                report::bytes(p.peak_device),
                achieved / 1e12,
                100.0 * achieved / H200_BF16_FLOPS,
                100.0 * achieved / H200_F32_FLOPS
            );
        } else {
            print!("   {:.1} GFLOP/s", p.flops / secs / 1e9);
        }
        println!();
    }
    if let Some(memory) = bench.memory.get() {
        let kept = if args.recompute { "layer inputs kept (recompute)" } else { "all activations kept" };
        println!("model memory_report ({kept}): {memory}");
    }
    if cuda {
        println!(
            "device mem: total − free (cuMemGetInfo) beyond the weights and inputs, sampled after the loss and \
             after the backward in the warm-up runs (approximate: misses peaks between samples, counts what the \
             driver's pool holds)\nMFU: model FLOPs (2·P·tokens forward, 6·P·tokens forward + backward, plus \
             attention 4·L·N·T²·H forward, 3× that with the backward) against H200 dense peaks: bf16 989 TFLOP/s, \
             f32 67 TFLOP/s"
        );
    }
    Ok(())
}
