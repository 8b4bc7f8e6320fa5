//! Per-sequence log-probabilities straight from hidden states and the LM head, never materialising `[N,T,V]`.
//!
//! Tokens that count (label ≠ ignore index, mask ≠ 0) are processed in chunks of `chunk_tokens`: for each chunk the
//! logits `h·Wᵀ (+ b)` are computed into a [chunk, V] f32 scratch, reduced to per-token statistics, and dropped.
//! Backward recomputes the chunk's logits, turns them into `g·(softmax − onehot)` in place, and accumulates
//! `d_hidden = G·W` and `d_weight += Gᵀ·h` in f32. Extra memory is O(chunk·V) whatever N·T is (plus the f32
//! accumulator of `d_weight` for bf16/f16 weights). Uncounted tokens (prompts, padding) cost nothing.

mod cpu;
mod cuda;

use crate::ops::check;
use crate::ops::logprobs::{LogProbsConfig, SequenceLogProbs, TokenReduction};
use crate::ops::tokens::{self, CountedToken};
use crate::runtime::cuda::KernelModule;
use crate::runtime::{Device, Tensor};
use crate::{Error, Result};

pub const KERNELS: KernelModule = crate::kernel_module!("fused_linear");

/// Bytes of f32 logits one chunk may hold when `chunk_tokens` is not given: 256 MiB, a chunk of 441 tokens for a
/// Qwen2 vocabulary (151,936). Each chunk's backward reads and writes the whole f32 `d_weight` accumulator, so
/// small chunks are bandwidth-bound: measured on 2 CPU cores (N·T = 256, H = 896), chunks of 32, 110 and 256 tokens
/// took 1.69×, 2.06× and 1.38× the time of materialising the logits (the floor is 4/3: one recomputed product).
const DEFAULT_CHUNK_BYTES: usize = 256 << 20;

/// How the fused path reduces tokens, and how many tokens it processes at once.
#[derive(Clone, Debug, Default)]
pub struct FusedLinearConfig {
    pub logprobs: LogProbsConfig,
    /// Tokens per chunk; `None` picks about 256 MiB of f32 logits per chunk.
    pub chunk_tokens: Option<usize>,
}

impl FusedLinearConfig {
    /// The chunk size used for a vocabulary of `vocab` tokens.
    pub fn chunk_tokens_for(&self, vocab: usize) -> usize {
        self.chunk_tokens.unwrap_or(DEFAULT_CHUNK_BYTES / (4 * vocab.max(1))).max(1)
    }
}

/// Gradients of the fused path, each in the dtype of the input it differentiates.
#[derive(Debug)]
pub struct FusedLinearGrads {
    pub grad_hidden: Tensor,
    pub grad_weight: Tensor,
    pub grad_bias: Option<Tensor>,
}

/// Buffers the backward writes: `grad_hidden` (overwritten whole) and the head's parameter gradients, overwritten or,
/// with `accumulate`, added to (a tied embedding's gradient, micro-batches summed into one buffer) — no `[V, H]`
/// gradient of its own is allocated for an f32 head. Each in the dtype and shape of what it differentiates, on its
/// device; none may alias the inputs.
#[derive(Debug)]
pub struct FusedLinearGradsMut<'a> {
    pub grad_hidden: &'a mut Tensor,
    pub grad_weight: &'a mut Tensor,
    pub grad_bias: Option<&'a mut Tensor>,
    pub accumulate: bool,
}

/// The LM head's inputs: hidden states `[N,T,H]`, weight `[V,H]` and an optional bias `[V]`, all float.
#[derive(Clone, Copy)]
pub struct LinearHead<'a> {
    pub hidden: &'a Tensor,
    pub weight: &'a Tensor,
    pub bias: Option<&'a Tensor>,
}

/// Validated sizes and the tokens to process.
struct Plan {
    n: usize,
    t: usize,
    h: usize,
    v: usize,
    tokens: Vec<CountedToken>,
    device: Device,
}

fn plan(head: &LinearHead<'_>, labels: &Tensor, mask: Option<&Tensor>, cfg: &FusedLinearConfig) -> Result<Plan> {
    let &[n, t, h] = check::rank("hidden", head.hidden, 3)? else { unreachable!() };
    let &[v, hw] = check::rank("weight", head.weight, 2)? else { unreachable!() };
    check::float("hidden", head.hidden)?;
    check::float("weight", head.weight)?;
    if hw != h {
        return Err(Error::Shape(format!("`weight` is [{v}, {hw}] but `hidden` has hidden size {h}")));
    }
    check::non_empty("hidden (N·T)", n * t)?;
    check::non_empty("weight (V)", v)?;
    check::non_empty("hidden (H)", h)?;
    if cfg.chunk_tokens == Some(0) {
        return Err(Error::InvalidArgument("`chunk_tokens` must be at least 1".into()));
    }
    let mut named = vec![("hidden", head.hidden), ("weight", head.weight), ("labels", labels)];
    if let Some(b) = head.bias {
        check::float("bias", b)?;
        check::shape("bias", b, &[v])?;
        named.push(("bias", b));
    }
    if let Some(m) = mask {
        named.push(("mask", m));
    }
    let device = check::same_device(&named)?;
    let tokens = tokens::counted_tokens(labels, mask, cfg.logprobs.ignore_index, (n, t, v))?;
    Ok(Plan { n, t, h, v, tokens, device })
}

/// Per-sequence log-probabilities (and mean logits, entropy, token counts) of `labels` under the logits
/// `hidden·weightᵀ + bias`, without materialising them. Returns the same outputs as
/// [`sequence_logprobs`](crate::ops::logprobs::sequence_logprobs) on the materialised logits.
pub fn fused_linear_logprobs(
    head: LinearHead<'_>,
    labels: &Tensor,
    mask: Option<&Tensor>,
    cfg: &FusedLinearConfig,
) -> Result<SequenceLogProbs> {
    let plan = plan(&head, labels, mask, cfg)?;
    match plan.device {
        Device::Cpu => cpu::forward(&head, &plan, cfg),
        Device::Cuda(_) => cuda::forward(&head, &plan, cfg),
    }
}

/// Gradients of `Σ_n grad_logps[n] · logps[n]` with respect to the hidden states, the weight and the bias, from the
/// forward's saved per-token logsumexp.
pub fn fused_linear_logprobs_backward(
    head: LinearHead<'_>,
    labels: &Tensor,
    mask: Option<&Tensor>,
    saved: &SequenceLogProbs,
    grad_logps: &Tensor,
    cfg: &FusedLinearConfig,
) -> Result<FusedLinearGrads> {
    let zeros_like = |t: &Tensor| Tensor::zeros(t.shape(), t.dtype(), t.device());
    let mut grads = FusedLinearGrads {
        grad_hidden: zeros_like(head.hidden)?,
        grad_weight: zeros_like(head.weight)?,
        grad_bias: head.bias.map(zeros_like).transpose()?,
    };
    let out = FusedLinearGradsMut {
        grad_hidden: &mut grads.grad_hidden,
        grad_weight: &mut grads.grad_weight,
        grad_bias: grads.grad_bias.as_mut(),
        accumulate: false,
    };
    fused_linear_logprobs_backward_into(head, labels, mask, saved, grad_logps, cfg, out)?;
    Ok(grads)
}

/// [`fused_linear_logprobs_backward`] into the caller's buffers (see [`FusedLinearGradsMut`]). Everything is
/// validated before anything is written.
pub fn fused_linear_logprobs_backward_into(
    head: LinearHead<'_>,
    labels: &Tensor,
    mask: Option<&Tensor>,
    saved: &SequenceLogProbs,
    grad_logps: &Tensor,
    cfg: &FusedLinearConfig,
    out: FusedLinearGradsMut<'_>,
) -> Result<()> {
    let plan = plan(&head, labels, mask, cfg)?;
    check::shape("grad_logps", grad_logps, &[plan.n])?;
    check::float("grad_logps", grad_logps)?;
    check::shape("saved.lse", &saved.lse, &[plan.n, plan.t])?;
    check::dtype("saved.lse", &saved.lse, crate::runtime::DType::F32)?;
    check::same_device(&[("hidden", head.hidden), ("grad_logps", grad_logps), ("saved.lse", &saved.lse)])?;
    let like =
        |name: &'static str, grad: &Tensor, of: &Tensor| check::output(name, grad, of.shape(), of.dtype(), plan.device);
    like("grad_hidden", out.grad_hidden, head.hidden)?;
    like("grad_weight", out.grad_weight, head.weight)?;
    match (head.bias, out.grad_bias.as_deref()) {
        (Some(b), Some(gb)) => like("grad_bias", gb, b)?,
        (None, None) => {}
        (Some(_), None) => return Err(Error::InvalidArgument("the head has a bias but no `grad_bias` buffer".into())),
        (None, Some(_)) => return Err(Error::InvalidArgument("a `grad_bias` buffer for a head without bias".into())),
    }
    match plan.device {
        Device::Cpu => cpu::backward(&head, &plan, saved, grad_logps, cfg, out),
        Device::Cuda(_) => cuda::backward(&head, &plan, saved, grad_logps, cfg, out),
    }
}

impl Plan {
    /// Per sequence, the factor of `softmax − onehot` in its tokens' logit gradients: d logp / d logits is
    /// `onehot − softmax`, times the upstream gradient, divided by the token count for a mean.
    fn gradient_scales(&self, cfg: &FusedLinearConfig, grad_logps: &[f32]) -> Vec<f32> {
        let counts = tokens::counts_per_sequence(&self.tokens, self.n);
        counts
            .iter()
            .zip(grad_logps)
            .map(|(&c, &g)| match cfg.logprobs.reduction {
                TokenReduction::Sum => -g,
                TokenReduction::Mean => -g / c.max(1.0),
            })
            .collect()
    }
}
