"""The reward model's heads: `unireward::scalar_reward` (the hidden state at each sequence's end through a linear
layer) and `unireward::verdict_head` (a generative judge's class probabilities from its logits), each with a backward
op over the library's backward kernels."""

import ctypes
from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from ._c import call, contiguous, declare, stream_of
from ._dlpack import DLTensor

_T = ctypes.POINTER(DLTensor)
_F = ctypes.POINTER(ctypes.c_float)
declare("ur_scalar_head_forward", [_T] * 5 + [ctypes.c_void_p])
declare("ur_scalar_head_backward", [_T] * 8 + [ctypes.c_void_p])
declare("ur_verdict_head_forward", [_T, _T, _T, _F, ctypes.c_size_t, _T, _T, _T, ctypes.c_void_p])
declare("ur_verdict_head_backward", [_T, _T, _T, _F, ctypes.c_size_t, _T, _T, _T, ctypes.c_void_p])


# ---- scalar_reward --------------------------------------------------------------------------------------------


@torch.library.custom_op("unireward::scalar_reward", mutates_args=())
def _scalar_reward(hidden: Tensor, ends: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    hidden, ends, weight, bias = contiguous(hidden, ends, weight, bias)
    rewards = hidden.new_empty((hidden.shape[0], weight.shape[0]), dtype=torch.float32)
    call("ur_scalar_head_forward", hidden, ends, weight, bias, rewards, stream_of(hidden))
    return rewards


@_scalar_reward.register_fake
def _(hidden, ends, weight, bias):
    return hidden.new_empty((hidden.shape[0], weight.shape[0]), dtype=torch.float32)


@torch.library.custom_op("unireward::scalar_reward_backward", mutates_args=())
def _scalar_reward_backward(
    hidden: Tensor, ends: Tensor, weight: Tensor, bias: Optional[Tensor], grad_rewards: Tensor
) -> Tuple[Tensor, Tensor, Tensor]:
    hidden, ends, weight, bias, grad_rewards = contiguous(hidden, ends, weight, bias, grad_rewards.float())
    grad_hidden, grad_weight = torch.empty_like(hidden), torch.empty_like(weight)
    grad_bias = torch.empty_like(bias) if bias is not None else weight.new_empty(0)  # placeholder without a bias
    call("ur_scalar_head_backward", hidden, ends, weight, bias, grad_rewards, grad_hidden, grad_weight,
         grad_bias if bias is not None else None, stream_of(hidden))  # fmt: skip
    return grad_hidden, grad_weight, grad_bias


@_scalar_reward_backward.register_fake
def _(hidden, ends, weight, bias, grad_rewards):
    grad_bias = torch.empty_like(bias) if bias is not None else weight.new_empty(0)
    return torch.empty_like(hidden), torch.empty_like(weight), grad_bias


def _setup_scalar(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward_scalar(ctx, grad_rewards):
    hidden, ends, weight, bias = ctx.saved_tensors
    gh, gw, gb = torch.ops.unireward.scalar_reward_backward(hidden, ends, weight, bias, grad_rewards)
    return gh, None, gw, gb if bias is not None else None


_scalar_reward.register_autograd(_backward_scalar, setup_context=_setup_scalar)


# ---- verdict_head ---------------------------------------------------------------------------------------------


def _values(values: Optional[List[float]]):
    return None if values is None else (ctypes.c_float * len(values))(*values)


def _count(values: Optional[List[float]]) -> int:
    return 0 if values is None else len(values)


@torch.library.custom_op("unireward::verdict_head", mutates_args=())
def _verdict_head(
    logits: Tensor, class_offsets: Tensor, token_ids: Tensor, values: Optional[List[float]]
) -> Tuple[Tensor, Tensor, Tensor]:
    logits, class_offsets, token_ids = contiguous(logits, class_offsets, token_ids)
    probs, log_probs, expected = _verdict_outputs(logits, class_offsets, values)
    call("ur_verdict_head_forward", logits, class_offsets, token_ids, _values(values), _count(values), probs,
         log_probs, expected if values is not None else None, stream_of(logits))  # fmt: skip
    return probs, log_probs, expected


def _verdict_outputs(logits, class_offsets, values):
    """probs and log_probs [B,K], expected score [B] (empty without class values), float32."""
    b, k = logits.shape[0], class_offsets.shape[0] - 1
    f32 = dict(dtype=torch.float32)
    expected = logits.new_empty((b if values is not None else 0,), **f32)
    return logits.new_empty((b, k), **f32), logits.new_empty((b, k), **f32), expected


@_verdict_head.register_fake
def _(logits, class_offsets, token_ids, values):
    return _verdict_outputs(logits, class_offsets, values)


@torch.library.custom_op("unireward::verdict_head_backward", mutates_args=())
def _verdict_head_backward(
    logits: Tensor,
    class_offsets: Tensor,
    token_ids: Tensor,
    values: Optional[List[float]],
    grad_log_probs: Tensor,
    grad_expected_score: Optional[Tensor],
) -> Tensor:
    logits, class_offsets, token_ids, grad_log_probs, grad_expected_score = contiguous(
        logits, class_offsets, token_ids, grad_log_probs.float(),
        None if grad_expected_score is None else grad_expected_score.float(),
    )  # fmt: skip
    grad = torch.empty_like(logits)
    call("ur_verdict_head_backward", logits, class_offsets, token_ids, _values(values), _count(values),
         grad_log_probs, grad_expected_score, grad, stream_of(logits))  # fmt: skip
    return grad


@_verdict_head_backward.register_fake
def _(logits, class_offsets, token_ids, values, grad_log_probs, grad_expected_score):
    return torch.empty_like(logits)


def _setup_verdict(ctx, inputs, output):
    logits, class_offsets, token_ids, ctx.values = inputs
    probs = output[0]
    ctx.save_for_backward(logits, class_offsets, token_ids, probs)


def _backward_verdict(ctx, grad_probs, grad_log_probs, grad_expected):
    logits, class_offsets, token_ids, probs = ctx.saved_tensors
    # probs = exp(log_probs): their gradient joins the log-probs' one as grad_probs · probs.
    g = torch.zeros_like(probs) if grad_log_probs is None else grad_log_probs.float()
    if grad_probs is not None:
        g = g + grad_probs.float() * probs
    if ctx.values is None:
        grad_expected = None
    grad = torch.ops.unireward.verdict_head_backward(logits, class_offsets, token_ids, ctx.values, g, grad_expected)
    return grad, None, None, None


_verdict_head.register_autograd(_backward_verdict, setup_context=_setup_verdict)


# ---- public API -----------------------------------------------------------------------------------------------


class Verdict(NamedTuple):
    """Verdict head outputs, float32: `probs` and `log_probs` [B,K]; `expected_score` [B] or None without
    class values."""

    probs: Tensor
    log_probs: Tensor
    expected_score: Optional[Tensor]


def scalar_reward(hidden, ends, weight, bias=None):
    """Rewards [N,C] float32 = `weight [C,H] · hidden[n, ends[n]] + bias [C]` from `hidden` [N,T,H] and explicit
    end positions `ends` [N] (int). Differentiable with respect to `hidden`, `weight` and `bias`."""
    return _scalar_reward(hidden, ends, weight, bias)


def verdict_head(logits, classes, values=None) -> Verdict:
    """A generative judge's verdict from `logits` [B,V] at the answer position: for each class (a list of token
    ids; classes are disjoint) the logsumexp of its logits, renormalised over the classes; with `values` (one
    number per class, a score scale) the expected score. `classes` is a list of id lists, or a pair of int
    tensors `(class_offsets [K+1], token_ids [M])` in CSR form. Differentiable with respect to `logits`."""
    if isinstance(classes, tuple) and len(classes) == 2 and isinstance(classes[0], Tensor):
        offsets, ids = classes
    else:
        sizes = [len(c) for c in classes]
        offsets = torch.tensor([0] + sizes, dtype=torch.int64).cumsum(0)
        ids = torch.tensor([i for c in classes for i in c], dtype=torch.int64)
    offsets, ids = offsets.to(logits.device), ids.to(logits.device)
    values = None if values is None else [float(v) for v in values]
    if values is not None and len(values) != offsets.numel() - 1:
        raise ValueError(f"verdict_head: `values` has {len(values)} entries for {offsets.numel() - 1} classes")
    probs, log_probs, expected = _verdict_head(logits, offsets, ids, values)
    return Verdict(probs, log_probs, expected if values is not None else None)
