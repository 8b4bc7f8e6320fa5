//! `unireward demo --kernels`: one DPO step's numerical core on a synthetic batch with a Qwen2-sized vocabulary.
//!
//! The policy's logits for P chosen and P rejected completions are reduced to per-sequence log-probabilities by the
//! fused kernel, the sigmoid DPO loss (or any TRL loss type) is taken against precomputed reference log-probs, and
//! the gradient flows back into the logits in place. The same step then runs the naive way (materialised
//! log-softmax and gradient, as eager PyTorch does for TRL) on the same inputs, for time, memory and agreement.

use std::time::Instant;

use anyhow::Context;
use unireward::ops::logprobs::{
    naive_sequence_logprobs, naive_sequence_logprobs_backward, sequence_logprobs, sequence_logprobs_backward_in_place,
    LogProbsConfig, SequenceLogProbs,
};
use unireward::ops::preference::{dpo_loss, DpoConfig, DpoLossType, DpoOutput, PreferenceLogps};
use unireward::{DType, Device, Tensor};

use crate::peak_alloc::PeakMeter;
use crate::report::{self, Measured};
use crate::synthetic;

#[derive(clap::Args)]
pub struct KernelArgs {
    /// Preference pairs (each a chosen and a rejected completion).
    #[arg(long, requires = "kernels", default_value_t = 2)]
    pairs: usize,
    /// Prompt tokens per sequence (ignored by the loss).
    #[arg(long, requires = "kernels", default_value_t = 64)]
    prompt_tokens: usize,
    /// Completion tokens per sequence.
    #[arg(long, requires = "kernels", default_value_t = 192)]
    completion_tokens: usize,
    /// Vocabulary size (Qwen2's by default).
    #[arg(long, requires = "kernels", default_value_t = 151_936)]
    vocab: usize,
    /// TRL loss type: sigmoid, hinge, ipo, robust, bco_pair, exo_pair, nca_pair, sppo_hard, apo_zero, apo_down, ...
    #[arg(long, requires = "kernels", default_value = "sigmoid")]
    loss_type: String,
    #[arg(long, requires = "kernels", default_value_t = 0.1)]
    beta: f32,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = crate::parse_device)]
    device: Device,
    /// Logits dtype: f32, bf16 or f16.
    #[arg(long, requires = "kernels", default_value = "f32", value_parser = crate::parse_float_dtype)]
    dtype: DType,
}

const SEED: u64 = 2503_05236;

/// The policy's logits [2P, T, V] (chosen rows first, as TRL concatenates them) and their labels.
fn batch(args: &KernelArgs, device: Device) -> anyhow::Result<(Tensor, Tensor)> {
    let (n, t) = (2 * args.pairs, args.prompt_tokens + args.completion_tokens);
    let logits = synthetic::tensor(SEED, &[n, t, args.vocab], 2.0, args.dtype, device)?;
    let labels = synthetic::labels(SEED + 1, n, t, args.prompt_tokens, args.vocab, device)?;
    Ok((logits, labels))
}

/// The DPO loss of per-sequence log-probs against precomputed reference log-probs; returns the loss output and the
/// gradient with respect to all 2P log-probs.
fn dpo_step(
    out: &SequenceLogProbs,
    reference: &[f32],
    cfg: &DpoConfig,
    device: Device,
) -> anyhow::Result<(DpoOutput, Tensor)> {
    let logps = out.logps.to_vec::<f32>()?;
    let counts = out.token_counts.to_vec::<f32>()?.iter().map(|&c| c as i64).collect::<Vec<_>>();
    let p = logps.len() / 2;
    let part = |v: &[f32]| Tensor::from_slice(v, &[p], device);
    let part_i = |v: &[i64]| Tensor::from_slice(v, &[p], device);
    let (chosen, rejected) = (part(&logps[..p])?, part(&logps[p..])?);
    let (ref_chosen, ref_rejected) = (part(&reference[..p])?, part(&reference[p..])?);
    let (len_chosen, len_rejected) = (part_i(&counts[..p])?, part_i(&counts[p..])?);
    let mut inputs = PreferenceLogps::new(&chosen, &rejected).with_lengths(&len_chosen, &len_rejected);
    if !cfg.reference_free {
        inputs = inputs.with_reference(&ref_chosen, &ref_rejected);
    }
    let loss = dpo_loss(&inputs, cfg)?;
    let mut grad = loss.grad_policy_chosen.to_dtype(DType::F32)?.to_vec::<f32>()?;
    grad.extend(loss.grad_policy_rejected.to_dtype(DType::F32)?.to_vec::<f32>()?);
    let grad = Tensor::from_slice(&grad, &[2 * p], device)?;
    Ok((loss, grad))
}

pub fn run(args: &KernelArgs) -> anyhow::Result<()> {
    let loss_type = DpoLossType::from_trl_name(&args.loss_type)?;
    let cfg = DpoConfig { loss_type, beta: args.beta, ..Default::default() };
    let (n, t, v) = (2 * args.pairs, args.prompt_tokens + args.completion_tokens, args.vocab);
    let logits_bytes = n * t * v * args.dtype.size_in_bytes();
    println!("unireward demo --kernels: one DPO step's loss and gradient, fused against naive");
    println!(
        "batch: {} pairs, {} prompt + {} completion tokens, vocabulary {v}, {} logits on {} ({})",
        args.pairs,
        args.prompt_tokens,
        args.completion_tokens,
        args.dtype,
        args.device,
        report::bytes(logits_bytes)
    );
    println!("loss: {} (β = {})\n", loss_type.trl_name(), args.beta);

    // Precomputed reference log-probs: the policy's own, shifted by a synthetic offset per sequence.
    let log_cfg = LogProbsConfig::default();
    let (mut logits, labels) = batch(args, args.device).context("building the synthetic batch")?;
    let offsets = synthetic::values(SEED + 2, n, 3.0);

    let meter = PeakMeter::start();
    let start = Instant::now();
    let out = sequence_logprobs(&logits, &labels, None, &log_cfg)?;
    let reference: Vec<f32> = out.logps.to_vec::<f32>()?.iter().zip(&offsets).map(|(l, o)| l + o).collect();
    let (loss, grad_logps) = dpo_step(&out, &reference, &cfg, args.device)?;
    sequence_logprobs_backward_in_place(&mut logits, &labels, None, &out, &grad_logps, &log_cfg)?;
    if let Device::Cuda(ordinal) = args.device {
        unireward::runtime::cuda::backend(ordinal)?.synchronize()?;
    }
    let fused = Measured { name: "fused (in place)", time: start.elapsed(), peak_bytes: meter.peak_extra() };

    let m = &loss.metrics;
    println!("loss                {:>12.6}", loss.loss);
    for (name, value) in [
        ("rewards/chosen", m.rewards_chosen),
        ("rewards/rejected", m.rewards_rejected),
        ("rewards/accuracies", m.rewards_accuracies),
        ("rewards/margins", m.rewards_margins),
        ("logps/chosen", m.logps_chosen),
        ("logps/rejected", m.logps_rejected),
    ] {
        println!("{name:<20}{value:>12.6}");
    }
    println!("{:<20}{:>12.6}", "entropy (mean)", mean(&out.entropy.to_vec::<f32>()?));
    println!("{:<20}{:>12.6}\n", "logits (mean)", mean(&out.mean_logits.to_vec::<f32>()?));

    if args.device != Device::Cpu {
        println!("fused step on {}: {}", args.device, report::seconds(fused.time));
        println!("(the naive comparison runs on the CPU: run the demo with --device cpu)");
        return Ok(());
    }
    let fused_grad = logits;
    let (logits, labels) = batch(args, Device::Cpu)?;
    let meter = PeakMeter::start();
    let start = Instant::now();
    let naive_out = naive_sequence_logprobs(&logits, &labels, None, &log_cfg)?;
    let (naive_loss, naive_grad_logps) = dpo_step(&naive_out, &reference, &cfg, Device::Cpu)?;
    let naive_grad = naive_sequence_logprobs_backward(&logits, &labels, None, &naive_out, &naive_grad_logps, &log_cfg)?;
    let naive = Measured { name: "naive (materialised)", time: start.elapsed(), peak_bytes: meter.peak_extra() };

    report::table(&[fused, naive]);
    let grad_diff =
        max_abs_diff(&fused_grad.to_dtype(DType::F32)?.to_vec()?, &naive_grad.to_dtype(DType::F32)?.to_vec()?);
    println!(
        "\nagreement: |loss difference| = {:.2e}, max |gradient difference| = {grad_diff:.2e}",
        (loss.loss - naive_loss.loss).abs()
    );
    Ok(())
}

fn mean(values: &[f32]) -> f32 {
    values.iter().sum::<f32>() / values.len().max(1) as f32
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
