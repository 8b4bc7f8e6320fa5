//! Per-sequence log-probabilities straight from hidden states and the LM head, never materialising `[N,T,V]`.
//!
//! Tokens that count (label ≠ ignore index, mask ≠ 0) are processed in chunks of `chunk_tokens`: for each chunk the
//! logits `h·Wᵀ (+ b)` are computed into a [chunk, V] f32 scratch, reduced to per-token statistics, and dropped.
//! Backward recomputes the chunk's logits, turns them into `g·(softmax − onehot)` in place, and accumulates
//! `d_hidden = G·W` and `d_weight += Gᵀ·h` in f32. Extra memory is O(chunk·V) whatever N·T is (plus the f32
//! accumulator of `d_weight` for bf16/f16 weights). Uncounted tokens (prompts, padding) cost nothing.
//!
//! The same pass can also take a second, per-token weighted sum of the log-probabilities and the gradient of both
//! sums (LD-DPO's log-prob of the tokens past a pair's shared length), and each token's log collision probability
//! `log Σ_v p_v²` (WPO's weights), without a second product with the head ([`fused_linear_logprobs_extended`]).

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

/// What [`fused_linear_logprobs_extended`] takes besides the plain outputs.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExtraOutputs<'a> {
    /// `[N,T]` float weights, finite where a token counts: also take `Σ_t token_weights[n,t] · log p(label)`.
    pub token_weights: Option<&'a Tensor>,
    /// Also take `Σ_t log Σ_v softmax(logits_t)_v²` (each token's log collision probability; a constant to the
    /// backward).
    pub log_collision: bool,
}

/// [`fused_linear_logprobs_extended`]'s outputs: the plain per-sequence outputs and the extras asked for, each `[N]`
/// f32 over the counted tokens, divided by the token count under [`TokenReduction::Mean`] as `logps` is.
#[derive(Debug)]
pub struct ExtendedLogProbs {
    /// What [`fused_linear_logprobs`] returns (the backward's `saved`).
    pub logprobs: SequenceLogProbs,
    /// The weighted sums, with `token_weights`.
    pub weighted_logps: Option<Tensor>,
    /// The summed log collision probabilities, with `log_collision`.
    pub log_collision: Option<Tensor>,
}

/// The upstream gradients of [`fused_linear_weighted_logprobs_backward_into`]: of `logps` and of the weighted sums
/// (with the token weights they were taken with), each `[N]` float.
#[derive(Clone, Copy)]
pub struct WeightedUpstream<'a> {
    pub grad_logps: &'a Tensor,
    pub token_weights: &'a Tensor,
    pub grad_weighted_logps: &'a Tensor,
}

/// Validated sizes and the tokens to process.
struct Plan {
    n: usize,
    t: usize,
    h: usize,
    v: usize,
    tokens: Vec<CountedToken>,
    /// Each counted token's weight in the weighted sum, when there is one.
    weights: Option<Vec<f32>>,
    /// Whether the forward takes the log collision probabilities.
    log_collision: bool,
    device: Device,
}

fn plan(
    head: &LinearHead<'_>,
    labels: &Tensor,
    mask: Option<&Tensor>,
    token_weights: Option<&Tensor>,
    cfg: &FusedLinearConfig,
) -> Result<Plan> {
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
    if let Some(w) = token_weights {
        check::float("token_weights", w)?;
        check::shape("token_weights", w, &[n, t])?;
        named.push(("token_weights", w));
    }
    let device = check::same_device(&named)?;
    let tokens = tokens::counted_tokens(labels, mask, cfg.logprobs.ignore_index, (n, t, v))?;
    let weights = token_weights.map(|w| counted_weights(w, &tokens, t)).transpose()?;
    Ok(Plan { n, t, h, v, tokens, weights, log_collision: false, device })
}

/// The weights of the counted tokens, each finite (an uncounted token's weight is never read).
fn counted_weights(weights: &Tensor, tokens: &[CountedToken], t: usize) -> Result<Vec<f32>> {
    let all = weights.to_device(Device::Cpu)?.to_f32_cow()?.into_owned();
    tokens
        .iter()
        .map(|tok| match all[tok.position] {
            w if w.is_finite() => Ok(w),
            w => Err(Error::InvalidArgument(format!(
                "`token_weights` is {w} at (sequence {}, token {}): weights must be finite",
                tok.sequence,
                tok.position % t
            ))),
        })
        .collect()
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
    Ok(fused_linear_logprobs_extended(head, labels, mask, ExtraOutputs::default(), cfg)?.logprobs)
}

/// [`fused_linear_logprobs`] and, in the same pass, the [`ExtraOutputs`] asked for: see [`ExtendedLogProbs`].
pub fn fused_linear_logprobs_extended(
    head: LinearHead<'_>,
    labels: &Tensor,
    mask: Option<&Tensor>,
    extras: ExtraOutputs<'_>,
    cfg: &FusedLinearConfig,
) -> Result<ExtendedLogProbs> {
    let plan = Plan { log_collision: extras.log_collision, ..plan(&head, labels, mask, extras.token_weights, cfg)? };
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

/// The upstream gradient of one backward: of `logps` and, optionally, of the weighted sums with their weights.
struct Upstream<'a> {
    grad_logps: &'a Tensor,
    weighted: Option<(&'a Tensor, &'a Tensor)>,
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
    backward_into(head, labels, mask, saved, Upstream { grad_logps, weighted: None }, cfg, out)
}

/// Gradients of `Σ_n grad_logps[n] · logps[n] + grad_weighted_logps[n] · weighted_logps[n]` (the outputs of
/// [`fused_linear_logprobs_extended`] with token weights, `saved` its `logprobs`) into the caller's buffers, as
/// [`fused_linear_logprobs_backward_into`]: each token's logit gradient is scaled by its sequence's
/// `grad_logps + token weight · grad_weighted_logps`, in one pass.
pub fn fused_linear_weighted_logprobs_backward_into(
    head: LinearHead<'_>,
    labels: &Tensor,
    mask: Option<&Tensor>,
    saved: &SequenceLogProbs,
    upstream: WeightedUpstream<'_>,
    cfg: &FusedLinearConfig,
    out: FusedLinearGradsMut<'_>,
) -> Result<()> {
    let weighted = Some((upstream.token_weights, upstream.grad_weighted_logps));
    backward_into(head, labels, mask, saved, Upstream { grad_logps: upstream.grad_logps, weighted }, cfg, out)
}

fn backward_into(
    head: LinearHead<'_>,
    labels: &Tensor,
    mask: Option<&Tensor>,
    saved: &SequenceLogProbs,
    upstream: Upstream<'_>,
    cfg: &FusedLinearConfig,
    out: FusedLinearGradsMut<'_>,
) -> Result<()> {
    let plan = plan(&head, labels, mask, upstream.weighted.map(|(w, _)| w), cfg)?;
    let grad_logps = upstream.grad_logps;
    let mut upstreams = vec![("grad_logps", grad_logps)];
    upstreams.extend(upstream.weighted.map(|(_, g)| ("grad_weighted_logps", g)));
    for &(name, grad) in &upstreams {
        check::shape(name, grad, &[plan.n])?;
        check::float(name, grad)?;
    }
    check::shape("saved.lse", &saved.lse, &[plan.n, plan.t])?;
    check::dtype("saved.lse", &saved.lse, crate::runtime::DType::F32)?;
    upstreams.extend([("hidden", head.hidden), ("saved.lse", &saved.lse)]);
    check::same_device(&upstreams)?;
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
    let grad_weighted = upstream.weighted.map(|(_, g)| g.to_f32_cow()).transpose()?;
    let scales = plan.gradient_scales(cfg, &grad_logps.to_f32_cow()?, grad_weighted.as_deref());
    match plan.device {
        Device::Cpu => cpu::backward(&head, &plan, saved, &scales, cfg, out),
        Device::Cuda(_) => cuda::backward(&head, &plan, saved, &scales, cfg, out),
    }
}

impl Plan {
    /// Per counted token, the factor of `softmax − onehot` in its logit gradient: d logp / d logits is
    /// `onehot − softmax`, times the token's upstream gradient (its sequence's, plus its weight times the weighted
    /// sum's), divided by the token count for a mean.
    fn gradient_scales(&self, cfg: &FusedLinearConfig, grad_logps: &[f32], grad_weighted: Option<&[f32]>) -> Vec<f32> {
        let counts = tokens::counts_per_sequence(&self.tokens, self.n);
        let divisor = |seq: usize| match cfg.logprobs.reduction {
            TokenReduction::Sum => 1.0,
            TokenReduction::Mean => counts[seq].max(1.0),
        };
        let weight = |k: usize| self.weights.as_ref().map_or(0.0, |w| w[k]);
        self.tokens
            .iter()
            .enumerate()
            .map(|(k, tok)| {
                let extra = grad_weighted.map_or(0.0, |g| weight(k) * g[tok.sequence]);
                -(grad_logps[tok.sequence] + extra) / divisor(tok.sequence)
            })
            .collect()
    }
}
