"""Per-sequence log-probabilities, from logits (`unireward::sequence_logprobs`) or straight from hidden states and
the LM head (`unireward::fused_linear_logprobs`), with backward ops that call the library's backward kernels."""

import ctypes
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from ._c import call, contiguous, declare, lib, stream_of
from ._dlpack import DLTensor

_T = ctypes.POINTER(DLTensor)
_REDUCTION = {False: 0, True: 1}  # UR_REDUCTION_SUM, UR_REDUCTION_MEAN


class _LogprobsConfig(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("reduction", ctypes.c_int32), ("ignore_index", ctypes.c_int64)]


class _FusedLinearConfig(ctypes.Structure):
    _fields_ = _LogprobsConfig._fields_ + [("chunk_tokens", ctypes.c_uint64)]


lib.ur_logprobs_config_default.restype = _LogprobsConfig
lib.ur_fused_linear_config_default.restype = _FusedLinearConfig
declare("ur_logprobs_forward", [_T, _T, _T, ctypes.POINTER(_LogprobsConfig)] + [_T] * 5 + [ctypes.c_void_p])
declare("ur_logprobs_backward", [_T] * 6 + [ctypes.POINTER(_LogprobsConfig), _T, ctypes.c_void_p])
declare(
    "ur_fused_linear_logprobs_forward", [_T] * 5 + [ctypes.POINTER(_FusedLinearConfig)] + [_T] * 5 + [ctypes.c_void_p]
)
declare(
    "ur_fused_linear_logprobs_backward", [_T] * 7 + [ctypes.POINTER(_FusedLinearConfig)] + [_T] * 3 + [ctypes.c_void_p]
)


def _logprobs_config(ignore_index: int, average: bool):
    cfg = lib.ur_logprobs_config_default()
    cfg.ignore_index, cfg.reduction = ignore_index, _REDUCTION[average]
    return ctypes.byref(cfg)


def _fused_config(ignore_index: int, average: bool, chunk_tokens: int):
    cfg = lib.ur_fused_linear_config_default()
    cfg.ignore_index, cfg.reduction, cfg.chunk_tokens = ignore_index, _REDUCTION[average], chunk_tokens
    return ctypes.byref(cfg)


def _forward_outputs(like: Tensor, n: int, t: int):
    """logps, token_counts, mean_logits, entropy [N] and lse [N,T], float32 on the device of `like`."""
    return tuple(like.new_empty(s, dtype=torch.float32) for s in [(n,)] * 4 + [(n, t)])


# ---- sequence_logprobs ----------------------------------------------------------------------------------------


@torch.library.custom_op("unireward::sequence_logprobs", mutates_args=())
def _sequence_logprobs(
    logits: Tensor, labels: Tensor, mask: Optional[Tensor], ignore_index: int, average: bool, in_place_backward: bool
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    logits, labels, mask = contiguous(logits, labels, mask)
    outs = _forward_outputs(logits, logits.shape[0], logits.shape[1])
    cfg = _logprobs_config(ignore_index, average)
    call("ur_logprobs_forward", logits, labels, mask, cfg, *outs, stream_of(logits))
    return outs


@_sequence_logprobs.register_fake
def _(logits, labels, mask, ignore_index, average, in_place_backward):
    return _forward_outputs(logits, logits.shape[0], logits.shape[1])


@torch.library.custom_op("unireward::sequence_logprobs_backward", mutates_args=())
def _sequence_logprobs_backward(
    logits: Tensor,
    labels: Tensor,
    mask: Optional[Tensor],
    lse: Tensor,
    token_counts: Tensor,
    grad_logps: Tensor,
    ignore_index: int,
    average: bool,
) -> Tensor:
    logits, labels, mask, lse, token_counts, grad_logps = contiguous(
        logits, labels, mask, lse, token_counts, grad_logps.float()
    )
    grad = torch.empty_like(logits)
    cfg = _logprobs_config(ignore_index, average)
    call("ur_logprobs_backward", logits, labels, mask, lse, token_counts, grad_logps, cfg, grad, stream_of(logits))
    return grad


@_sequence_logprobs_backward.register_fake
def _(logits, labels, mask, lse, token_counts, grad_logps, ignore_index, average):
    return torch.empty_like(logits)


@torch.library.custom_op("unireward::sequence_logprobs_backward_", mutates_args=("logits",))
def _sequence_logprobs_backward_in_place(
    logits: Tensor,
    labels: Tensor,
    mask: Optional[Tensor],
    lse: Tensor,
    token_counts: Tensor,
    grad_logps: Tensor,
    ignore_index: int,
    average: bool,
) -> None:
    """`sequence_logprobs_backward` written over `logits` (contiguous): no [N,T,V] allocation."""
    labels, mask, lse, token_counts, grad_logps = contiguous(labels, mask, lse, token_counts, grad_logps.float())
    cfg = _logprobs_config(ignore_index, average)
    call("ur_logprobs_backward", logits, labels, mask, lse, token_counts, grad_logps, cfg, logits, stream_of(logits))


@_sequence_logprobs_backward_in_place.register_fake
def _(logits, labels, mask, lse, token_counts, grad_logps, ignore_index, average):
    return None


def _setup_sequence(ctx, inputs, output):
    logits, labels, mask, ctx.ignore_index, ctx.average, ctx.in_place = inputs
    _, token_counts, mean_logits, entropy, lse = output
    ctx.save_for_backward(logits, labels, mask, lse, token_counts)
    ctx.mark_non_differentiable(token_counts, mean_logits, entropy, lse)


def _backward_sequence(ctx, grad_logps, *_):
    logits, labels, mask, lse, token_counts = ctx.saved_tensors
    args = (logits, labels, mask, lse, token_counts, grad_logps, ctx.ignore_index, ctx.average)
    if ctx.in_place:
        torch.ops.unireward.sequence_logprobs_backward_(*args)
        grad = logits
    else:
        grad = torch.ops.unireward.sequence_logprobs_backward(*args)
    return grad, None, None, None, None, None


_sequence_logprobs.register_autograd(_backward_sequence, setup_context=_setup_sequence)


# ---- fused_linear_logprobs ------------------------------------------------------------------------------------


@torch.library.custom_op("unireward::fused_linear_logprobs", mutates_args=())
def _fused_linear_logprobs(
    hidden: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    labels: Tensor,
    mask: Optional[Tensor],
    ignore_index: int,
    average: bool,
    chunk_tokens: int,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    hidden, weight, bias, labels, mask = contiguous(hidden, weight, bias, labels, mask)
    outs = _forward_outputs(hidden, hidden.shape[0], hidden.shape[1])
    cfg = _fused_config(ignore_index, average, chunk_tokens)
    call("ur_fused_linear_logprobs_forward", hidden, weight, bias, labels, mask, cfg, *outs, stream_of(hidden))
    return outs


@_fused_linear_logprobs.register_fake
def _(hidden, weight, bias, labels, mask, ignore_index, average, chunk_tokens):
    return _forward_outputs(hidden, hidden.shape[0], hidden.shape[1])


@torch.library.custom_op("unireward::fused_linear_logprobs_backward", mutates_args=())
def _fused_linear_logprobs_backward(
    hidden: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    labels: Tensor,
    mask: Optional[Tensor],
    lse: Tensor,
    grad_logps: Tensor,
    ignore_index: int,
    average: bool,
    chunk_tokens: int,
) -> Tuple[Tensor, Tensor, Tensor]:
    hidden, weight, bias, labels, mask, lse, grad_logps = contiguous(
        hidden, weight, bias, labels, mask, lse, grad_logps.float()
    )
    grad_hidden, grad_weight = torch.empty_like(hidden), torch.empty_like(weight)
    # Without a bias the third output is an empty placeholder (an op returns tensors only).
    grad_bias = torch.empty_like(bias) if bias is not None else weight.new_empty(0)
    cfg = _fused_config(ignore_index, average, chunk_tokens)
    call(
        "ur_fused_linear_logprobs_backward",
        hidden, weight, bias, labels, mask, lse, grad_logps, cfg,
        grad_hidden, grad_weight, grad_bias if bias is not None else None, stream_of(hidden),
    )  # fmt: skip
    return grad_hidden, grad_weight, grad_bias


@_fused_linear_logprobs_backward.register_fake
def _(hidden, weight, bias, labels, mask, lse, grad_logps, ignore_index, average, chunk_tokens):
    grad_bias = torch.empty_like(bias) if bias is not None else weight.new_empty(0)
    return torch.empty_like(hidden), torch.empty_like(weight), grad_bias


def _setup_fused(ctx, inputs, output):
    hidden, weight, bias, labels, mask, ctx.ignore_index, ctx.average, ctx.chunk_tokens = inputs
    _, token_counts, mean_logits, entropy, lse = output
    ctx.save_for_backward(hidden, weight, bias, labels, mask, lse)
    ctx.mark_non_differentiable(token_counts, mean_logits, entropy, lse)


def _backward_fused(ctx, grad_logps, *_):
    hidden, weight, bias, labels, mask, lse = ctx.saved_tensors
    grad_hidden, grad_weight, grad_bias = torch.ops.unireward.fused_linear_logprobs_backward(
        hidden, weight, bias, labels, mask, lse, grad_logps, ctx.ignore_index, ctx.average, ctx.chunk_tokens
    )
    return grad_hidden, grad_weight, grad_bias if bias is not None else None, None, None, None, None, None


_fused_linear_logprobs.register_autograd(_backward_fused, setup_context=_setup_fused)


# ---- public API -----------------------------------------------------------------------------------------------


class LogProbs(NamedTuple):
    """Per-sequence outputs [N], float32: `logps` (differentiable), `token_counts`, `mean_logits` (mean logit over
    counted tokens, TRL's `logits/chosen`) and `entropy` (mean token entropy). `mean_logits` and `entropy` are
    metrics: they carry no gradient. `logits[n, t]` scores `labels[n, t]`: labels are not shifted (as in Liger;
    transformers' causal-LM loss shifts them by one)."""

    logps: Tensor
    token_counts: Tensor
    mean_logits: Tensor
    entropy: Tensor


def sequence_logprobs(
    logits, labels, mask=None, *, ignore_index=-100, average=False, in_place_backward=False
) -> LogProbs:
    """Log-probabilities of `labels` [N,T] (int32/int64) under `logits` [N,T,V] (float32/bfloat16/float16), summed
    (or averaged, `average=True`) over the tokens that count: label ≠ `ignore_index` and, with `mask` [N,T], mask ≠
    0. The [N,T,V] log-softmax is never materialised; the backward writes `g·(onehot − softmax)` in one pass.

    With `in_place_backward=True` the backward writes the gradient over `logits` itself (which must be contiguous)
    and hands that memory on as the logits' gradient, saving an [N,T,V] buffer: the logits' values are gone
    afterwards, so use it when nothing else reads them after the backward (eager mode; torch.compile cannot trace
    a mutation of a forward input in the backward)."""
    if in_place_backward and not logits.is_contiguous():
        raise ValueError("sequence_logprobs: in_place_backward needs contiguous logits")
    logps, counts, mean_logits, entropy, _ = _sequence_logprobs(
        logits, labels, mask, ignore_index, average, in_place_backward
    )
    return LogProbs(logps, counts, mean_logits, entropy)


def fused_linear_logprobs(
    hidden, weight, labels, bias=None, mask=None, *, ignore_index=-100, average=False, chunk_tokens=0
) -> LogProbs:
    """`sequence_logprobs` of the logits `hidden [N,T,H] · weightᵀ [V,H] + bias [V]`, computed `chunk_tokens`
    tokens at a time (0: about 256 MiB of float32 logits per chunk), never materialising [N,T,V]. Differentiable
    with respect to `hidden`, `weight` and `bias`."""
    logps, counts, mean_logits, entropy, _ = _fused_linear_logprobs(
        hidden, weight, bias, labels, mask, ignore_index, average, chunk_tokens
    )
    return LogProbs(logps, counts, mean_logits, entropy)
