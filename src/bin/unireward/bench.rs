//! `unireward bench`: fused against naive paths on the same inputs, with wall time and the peak heap each
//! allocates beyond its inputs (measured by the CLI's counting allocator).

use std::time::Instant;

use unireward::ops::fused_linear::{
    fused_linear_logprobs, fused_linear_logprobs_backward, FusedLinearConfig, LinearHead,
};
use unireward::ops::logprobs::{sequence_logprobs, sequence_logprobs_backward, LogProbsConfig};
use unireward::runtime::cpu::{matmul, MatRef};
use unireward::{DType, Device, Tensor};

use crate::peak_alloc::PeakMeter;
use crate::report::{self, Measured};
use crate::synthetic;

#[derive(clap::Subcommand)]
pub enum Bench {
    /// Per-sequence log-probs from logits [N,T,V]: fused (out of place and in place) against the naive
    /// materialised log-softmax, forward and backward, on the CPU.
    Logprobs(LogprobsArgs),
    /// Log-probs from hidden states and the LM head: fused (chunked) against materialised logits, forward and
    /// backward, f32 on the CPU.
    FusedLinear(FusedLinearArgs),
    /// The Qwen2 decoder at Qwen2-0.5B's shapes with random weights: forward + loss and forward + backward,
    /// tokens per second, peak memory and (on CUDA) MFU; `scripts/bench_torch_qwen2.py` is PyTorch's side.
    Model(crate::bench_model::ModelArgs),
    /// The whole LLaVA-OneVision reward model on one image's batch: forward + loss and forward + backward, tokens
    /// per second, peak memory; `scripts/bench_torch_llava.py` makes the checkpoint and is PyTorch's side.
    Llava(crate::bench_llava::LlavaArgs),
    /// The CPU matrix products alone at Qwen2-0.5B's shapes, f32, bf16 or f16 operands, at a chosen ISA level, in GFLOP/s;
    /// `scripts/bench_torch_matmul.py` is PyTorch's side.
    Products(crate::bench_products::ProductsArgs),
    /// Whole SFT training steps through the trainer (forward, fused-head loss, backward, clipping, AdamW) at
    /// Qwen2-0.5B's shapes or on a LLaVA-OneVision checkpoint, with peak resident memory;
    /// `scripts/bench_torch_train_step.py` is PyTorch's side.
    Train(crate::bench_train::TrainArgs),
    /// One-pass verdicts against generate-then-parse on one random judge: judgments per second, and the prefill
    /// that prefix sharing saves for K candidates.
    Judge(crate::bench_judge::JudgeArgs),
}

#[derive(clap::Args)]
pub struct LogprobsArgs {
    #[arg(long, default_value_t = 4)]
    n: usize,
    #[arg(long, default_value_t = 512)]
    t: usize,
    #[arg(long, default_value_t = 151_936)]
    v: usize,
    /// Logits dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32", value_parser = crate::parse_float_dtype)]
    dtype: DType,
}

#[derive(clap::Args)]
pub struct FusedLinearArgs {
    #[arg(long, default_value_t = 2)]
    n: usize,
    #[arg(long, default_value_t = 128)]
    t: usize,
    /// Hidden size (Qwen2-0.5B's by default).
    #[arg(long, default_value_t = 896)]
    h: usize,
    #[arg(long, default_value_t = 151_936)]
    v: usize,
    /// Tokens per chunk (default: about 64 MiB of f32 logits).
    #[arg(long)]
    chunk_tokens: Option<usize>,
}

pub fn run(bench: &Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Logprobs(args) => {
            print!("{}", unireward::ops::logprobs::compare_fused_vs_naive(args.n, args.t, args.v, args.dtype)?);
            Ok(())
        }
        Bench::FusedLinear(args) => fused_linear(args),
        Bench::Model(args) => crate::bench_model::run(args),
        Bench::Llava(args) => crate::bench_llava::run(args),
        Bench::Products(args) => crate::bench_products::run(args),
        Bench::Judge(args) => crate::bench_judge::run(args),
        Bench::Train(args) => crate::bench_train::run(args),
    }
}

fn fused_linear(args: &FusedLinearArgs) -> anyhow::Result<()> {
    let (n, t, h, v) = (args.n, args.t, args.h, args.v);
    let cpu = Device::Cpu;
    let hidden = synthetic::tensor(1, &[n, t, h], 1.0, DType::F32, cpu)?;
    let weight = synthetic::tensor(2, &[v, h], 1.0 / (h as f32).sqrt(), DType::F32, cpu)?;
    let labels = synthetic::labels(3, n, t, 0, v, cpu)?;
    let grad_logps = Tensor::from_slice(&vec![1.0f32; n], &[n], cpu)?;
    let head = LinearHead { hidden: &hidden, weight: &weight, bias: None };
    let cfg = FusedLinearConfig { chunk_tokens: args.chunk_tokens, ..Default::default() };
    println!(
        "fused linear log-probs, forward + backward: N = {n}, T = {t}, H = {h}, V = {v}, f32 on the CPU \
         (materialised logits would take {})",
        report::bytes(n * t * v * 4)
    );

    let meter = PeakMeter::start();
    let start = Instant::now();
    let out = fused_linear_logprobs(head, &labels, None, &cfg)?;
    let fused_grads = fused_linear_logprobs_backward(head, &labels, None, &out, &grad_logps, &cfg)?;
    let fused = Measured { name: "fused (chunked)", time: start.elapsed(), peak_bytes: meter.peak_extra() };
    drop(out);

    let meter = PeakMeter::start();
    let start = Instant::now();
    let (hs, ws) = (hidden.as_slice::<f32>()?, weight.as_slice::<f32>()?);
    let mut logits = Tensor::zeros(&[n, t, v], DType::F32, cpu)?;
    matmul(logits.as_mut_slice()?, MatRef::row_major(hs, n * t, h), MatRef::row_major(ws, v, h).t(), 0.0);
    let out = sequence_logprobs(&logits, &labels, None, &LogProbsConfig::default())?;
    let grad_logits =
        sequence_logprobs_backward(&logits, &labels, None, &out, &grad_logps, &LogProbsConfig::default())?;
    let g = MatRef::row_major(grad_logits.as_slice()?, n * t, v);
    let mut grad_hidden = vec![0.0f32; n * t * h];
    let mut grad_weight = vec![0.0f32; v * h];
    matmul(&mut grad_hidden, g, MatRef::row_major(ws, v, h), 0.0);
    matmul(&mut grad_weight, g.t(), MatRef::row_major(hs, n * t, h), 0.0);
    let naive = Measured { name: "materialised logits", time: start.elapsed(), peak_bytes: meter.peak_extra() };

    report::table(&[fused, naive]);
    let diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    println!(
        "\nagreement: max |d hidden difference| = {:.2e}, max |d weight difference| = {:.2e}",
        diff(fused_grads.grad_hidden.as_slice()?, &grad_hidden),
        diff(fused_grads.grad_weight.as_slice()?, &grad_weight)
    );
    Ok(())
}
