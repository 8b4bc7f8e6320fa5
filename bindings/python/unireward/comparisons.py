"""Batched comparisons of G groups of K candidates (`unireward::compare`) and UnifiedReward's pair selection
(`unireward::select_pairs`): integer and selection outputs, so no autograd."""

import ctypes
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from ._c import call, declare, enum_code, lib, stream_of
from ._dlpack import DLTensor

_T = ctypes.POINTER(DLTensor)
VERDICT_KINDS = ("scores", "log_odds")
SCORE_LINKS = ("sigmoid", "hard")
PAIRINGS = ("adjacent", "all_pairs")
TIES = ("skip", "first_wins", "drop_group")
NANS = ("error", "skip")


class _CompareConfig(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("verdict_kind", ctypes.c_int32), ("score_link", ctypes.c_int32),
                ("ridge", ctypes.c_float), ("tolerance", ctypes.c_float), ("max_iterations", ctypes.c_uint32)]  # fmt: skip


class _SelectConfig(ctypes.Structure):
    _fields_ = [(f, ctypes.c_int32) for f in ("verdict_kind", "pairing", "ties", "nans")]
    _fields_ = [("struct_size", ctypes.c_uint32)] + _fields_


lib.ur_compare_config_default.restype = _CompareConfig
lib.ur_select_config_default.restype = _SelectConfig
declare("ur_compare", [_T, ctypes.POINTER(_CompareConfig)] + [_T] * 10 + [ctypes.c_void_p])
declare("ur_select_pairs", [_T, _T, ctypes.POINTER(_SelectConfig)] + [_T] * 5 + [ctypes.c_void_p])


def _compare_outputs(verdicts: Tensor, verdict_kind: str):
    """The ten outputs; consistency is [G] for log-odds and empty for scores."""
    g, k = verdicts.shape[0], verdicts.shape[1]
    f, i = dict(dtype=torch.float32), dict(dtype=torch.int32)
    e = verdicts.new_empty
    return (e((g, k, k), **f), e((g, k), **f), e((g, k), **i), e((g, k), **i), e((g, k), **f), e((g,), **i),
            e((g,), **i), e((g,), **i), e((g,), **i), e((g if verdict_kind == "log_odds" else 0,), **f))  # fmt: skip


@torch.library.custom_op("unireward::compare", mutates_args=())
def _compare(
    verdicts: Tensor, verdict_kind: str, score_link: str, ridge: float, tolerance: float, max_iterations: int
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    verdicts = verdicts.contiguous()
    cfg = lib.ur_compare_config_default()
    cfg.verdict_kind = enum_code("verdict kind", verdict_kind, VERDICT_KINDS)
    cfg.score_link = enum_code("score link", score_link, SCORE_LINKS)
    cfg.ridge, cfg.tolerance, cfg.max_iterations = ridge, tolerance, max_iterations
    outs = _compare_outputs(verdicts, verdict_kind)
    consistency = outs[9] if verdict_kind == "log_odds" else None
    call("ur_compare", verdicts, ctypes.byref(cfg), *outs[:9], consistency, stream_of(verdicts))
    return outs


@_compare.register_fake
def _(verdicts, verdict_kind, score_link, ridge, tolerance, max_iterations):
    return _compare_outputs(verdicts, verdict_kind)


def _selection_outputs(verdicts: Tensor):
    g = verdicts.shape[0]
    i, f = dict(dtype=torch.int32), dict(dtype=torch.float32)
    e = verdicts.new_empty
    return e((g,), **i), e((g,), **i), e((g,), **f), e((g,), **f), e((g,), **i)


@torch.library.custom_op("unireward::select_pairs", mutates_args=())
def _select_pairs(
    verdicts: Tensor, verdict_kind: str, pointwise: Tensor, pairing: str, ties: str, nans: str
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    verdicts, pointwise = verdicts.contiguous(), pointwise.contiguous()
    cfg = lib.ur_select_config_default()
    cfg.verdict_kind = enum_code("verdict kind", verdict_kind, VERDICT_KINDS)
    cfg.pairing, cfg.ties = enum_code("pairing", pairing, PAIRINGS), enum_code("tie policy", ties, TIES)
    cfg.nans = enum_code("NaN policy", nans, NANS)
    outs = _selection_outputs(verdicts)
    call("ur_select_pairs", verdicts, pointwise, ctypes.byref(cfg), *outs, stream_of(verdicts))
    return outs


@_select_pairs.register_fake
def _(verdicts, verdict_kind, pointwise, pairing, ties, nans):
    return _selection_outputs(verdicts)


class Comparison(NamedTuple):
    """See `compare`."""

    preference: Tensor
    wins: Tensor
    copeland: Tensor
    ranks: Tensor
    strengths: Tensor
    iterations: Tensor
    converged: Tensor
    best: Tensor
    worst: Tensor
    consistency: Optional[Tensor]


class Selection(NamedTuple):
    """See `select_pairs`."""

    chosen: Tensor
    rejected: Tensor
    chosen_score: Tensor
    rejected_score: Tensor
    kept: Tensor


def _verdicts(scores, log_odds):
    if (scores is None) == (log_odds is None):
        raise ValueError("give exactly one of scores= [G,K] or log_odds= [G,K,K]")
    return (scores, "scores") if scores is not None else (log_odds, "log_odds")


def compare(scores=None, *, log_odds=None, score_link="sigmoid", ridge=1e-2, tolerance=1e-6, max_iterations=100):
    """Compares the K candidates of G groups, from `scores` [G,K] or verdict `log_odds` [G,K,K] (both presentation
    orders): preference P [G,K,K] (float32), wins [G,K] (float32), Copeland scores and ranks [G,K] (int32),
    Bradley-Terry log-strengths [G,K] (float32) with the fit's iterations and convergence [G], best and worst
    candidate [G] (int32), and for log-odds the position-consistency rate [G] (None for scores)."""
    verdicts, kind = _verdicts(scores, log_odds)
    outs = _compare(verdicts, kind, score_link, ridge, tolerance, max_iterations)
    return Comparison(*outs[:9], outs[9] if kind == "log_odds" else None)


def select_pairs(pointwise, *, scores=None, log_odds=None, pairing="adjacent", ties="skip", nans="error"):
    """UnifiedReward's pair selection: pair verdicts (`scores` [G,K] or `log_odds` [G,K,K]) split the paired
    candidates into winners and losers; the chosen is the best of the winners by `pointwise` [G,K], the rejected
    the worst of the losers, kept when the chosen score is strictly greater. `pairing` "adjacent" or "all_pairs",
    `ties` "skip", "first_wins" or "drop_group", `nans` "error" or "skip". Returns [G] tensors: chosen and
    rejected indices (int32, -1 when none), their scores (float32, NaN when none) and kept (int32 0/1)."""
    verdicts, kind = _verdicts(scores, log_odds)
    return Selection(*_select_pairs(verdicts, kind, pointwise, pairing, ties, nans))
