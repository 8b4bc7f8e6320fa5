"""The preference and reward-model losses: `unireward::fused_dpo_loss`, `bradley_terry_loss`, `kwise_loss` and
`diffusion_dpo_loss`. Each library call is a forward and a backward at once: the op returns the loss, the
gradients with respect to the trained inputs (for an upstream gradient of 1) and the metrics; the autograd
formula saves those gradients and scales them by the loss's incoming gradient."""

import ctypes
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import _dlpack
from ._c import call, contiguous, declare, enum_code, lib, stream_of
from ._dlpack import DLTensor

_T = ctypes.POINTER(DLTensor)
_F = ctypes.POINTER(ctypes.c_float)

# `ur_dpo_config.loss_type` codes: TRL's names in the order of UR_DPO_SIGMOID = 0 ... UR_DPO_DISCOPOP = 14.
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "robust", "bco_pair", "exo_pair", "nca_pair", "sppo_hard", "apo_zero",
                  "apo_down", "simpo", "orpo", "aot", "aot_pair", "discopop")  # fmt: skip
# `ur_dpo_config.f_divergence_type` codes (UR_F_DIVERGENCE_*): TRL's `f_divergence_type` values.
F_DIVERGENCE_TYPES = ("reverse_kl", "js_divergence", "alpha_divergence")
KWISE_METHODS = ("all_pairs", "plackett_luce")  # UR_KWISE_ALL_PAIRS, UR_KWISE_PLACKETT_LUCE


def _metrics_struct(name, fields):
    """A metrics struct: `struct_size` (set by the caller to the struct's size), then floats."""
    fields = [("struct_size", ctypes.c_uint32)] + [(f, ctypes.c_float) for f in fields]
    return type(name, (ctypes.Structure,), {"_fields_": fields})


def _new_metrics(cls):
    return cls(struct_size=ctypes.sizeof(cls))


class _DpoConfig(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("loss_type", ctypes.c_int32), ("beta", ctypes.c_float),
                ("label_smoothing", ctypes.c_float), ("reference_free", ctypes.c_int32),
                ("use_rpo_alpha", ctypes.c_int32), ("rpo_alpha", ctypes.c_float), ("simpo_gamma", ctypes.c_float),
                ("bco_delta", ctypes.c_float), ("grad_output", ctypes.c_float),
                ("f_divergence_type", ctypes.c_int32), ("f_alpha_divergence_coef", ctypes.c_float),
                ("discopop_tau", ctypes.c_float), ("bco_count", ctypes.c_float), ("use_ld_alpha", ctypes.c_int32),
                ("ld_alpha", ctypes.c_float), ("num_loss_types", ctypes.c_uint32), ("use_weighting", ctypes.c_int32),
                ("loss_types", ctypes.POINTER(ctypes.c_int32)), ("loss_weights", ctypes.POINTER(ctypes.c_float)),
                ("pair_weights", _T), ("policy_chosen_verbose", _T), ("policy_rejected_verbose", _T),
                ("grad_policy_chosen_verbose_out", _T), ("grad_policy_rejected_verbose_out", _T),
                ("losses_out", _T)]  # fmt: skip


class _BradleyTerryConfig(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("center_rewards_coefficient", ctypes.c_float),
                ("grad_output", ctypes.c_float)]  # fmt: skip


class _KwiseConfig(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("method", ctypes.c_int32), ("grad_output", ctypes.c_float)]


class _DiffusionDpoConfig(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("beta", ctypes.c_float), ("grad_output", ctypes.c_float)]


DPO_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
               "logps/rejected", "nll_loss", "log_odds_ratio", "log_odds_chosen", "bco_delta", "bco_count")  # fmt: skip
BRADLEY_TERRY_METRICS = ("accuracy", "rewards_chosen", "rewards_rejected", "margins", "center_term")
DIFFUSION_DPO_METRICS = ("implicit_accuracy", "model_mse_winner", "model_mse_loser", "ref_mse_winner",
                         "ref_mse_loser")  # fmt: skip
# ur_dpo_metrics's fields, in the order of TRL's keys above.
_DpoMetrics = _metrics_struct("_DpoMetrics", [k.replace("/", "_") for k in DPO_METRICS])
_BradleyTerryMetrics = _metrics_struct("_BradleyTerryMetrics", BRADLEY_TERRY_METRICS)
_DiffusionDpoMetrics = _metrics_struct("_DiffusionDpoMetrics", DIFFUSION_DPO_METRICS)

for _name, _cls in [("ur_dpo_config_default", _DpoConfig), ("ur_bradley_terry_config_default", _BradleyTerryConfig),
                    ("ur_kwise_config_default", _KwiseConfig),
                    ("ur_diffusion_dpo_config_default", _DiffusionDpoConfig)]:  # fmt: skip
    getattr(lib, _name).restype = _cls
_P = ctypes.POINTER
declare("ur_dpo_loss", [_T] * 6 + [_P(_DpoConfig), _F, _T, _T, _P(_DpoMetrics), ctypes.c_void_p])
declare("ur_bradley_terry_loss", [_T] * 3 + [_P(_BradleyTerryConfig), _F, _T, _T, _P(_BradleyTerryMetrics),
                                             ctypes.c_void_p])  # fmt: skip
declare("ur_kwise_loss", [_T, _T, _P(_KwiseConfig), _F, _T, _F, ctypes.c_void_p])
declare("ur_diffusion_dpo_loss", [_T] * 6 + [_P(_DiffusionDpoConfig), _F, _T, _T, _P(_DiffusionDpoMetrics),
                                             ctypes.c_void_p])  # fmt: skip


def _scalars(like: Tensor, values) -> Tensor:
    """Host floats as a float32 tensor on the device of `like` (the loss [] or a metrics vector)."""
    return torch.tensor(values, dtype=torch.float32).to(like.device)


def _fake_scalars(like: Tensor, *shape) -> Tensor:
    return like.new_empty(shape, dtype=torch.float32)


def _register_loss_autograd(op, trained: Tuple[int, ...], n_inputs: int):
    """Autograd for a loss op returning `(loss, grad for each input in trained, metrics...)`: the backward scales the
    saved gradients by the loss's incoming gradient."""

    def setup_context(ctx, inputs, output):
        grads = output[1 : 1 + len(trained)]
        ctx.save_for_backward(*grads)
        ctx.mark_non_differentiable(*output[1:])

    def backward(ctx, grad_loss, *_):
        result = [None] * n_inputs
        for i, g in zip(trained, ctx.saved_tensors):
            # An empty saved gradient stands for an optional input that was not given.
            result[i] = (g * grad_loss).to(g.dtype) if g.numel() else None
        return tuple(result)

    op.register_autograd(backward, setup_context=setup_context)


# ---- fused_dpo_loss -------------------------------------------------------------------------------------------


@torch.library.custom_op("unireward::fused_dpo_loss", mutates_args=())
def _fused_dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    reference_chosen: Optional[Tensor],
    reference_rejected: Optional[Tensor],
    chosen_lengths: Optional[Tensor],
    rejected_lengths: Optional[Tensor],
    policy_chosen_verbose: Optional[Tensor],
    policy_rejected_verbose: Optional[Tensor],
    pair_weights: Optional[Tensor],
    loss_types: str,
    loss_weights: List[float],
    beta: float,
    label_smoothing: float,
    reference_free: bool,
    f_divergence_type: str,
    f_alpha_divergence_coef: float,
    rpo_alpha: Optional[float],
    ld_alpha: Optional[float],
    simpo_gamma: float,
    discopop_tau: float,
    bco_delta: float,
    bco_count: float,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    ins = contiguous(policy_chosen, policy_rejected, reference_chosen, reference_rejected, chosen_lengths,
                     rejected_lengths)  # fmt: skip
    cv, rv, pw = contiguous(policy_chosen_verbose, policy_rejected_verbose, pair_weights)
    names = loss_types.split(",")
    codes = [enum_code("DPO loss type", n, DPO_LOSS_TYPES) for n in names]
    if len(loss_weights) != len(codes):
        raise ValueError(f"{len(loss_weights)} loss_weights for {len(codes)} loss types {names}")
    cfg = lib.ur_dpo_config_default()
    cfg.loss_type = codes[0]
    types_c, weights_c = (ctypes.c_int32 * len(codes))(*codes), (ctypes.c_float * len(codes))(*loss_weights)
    if len(codes) > 1 or loss_weights[0] != 1.0:
        cfg.num_loss_types, cfg.loss_types, cfg.loss_weights = len(codes), types_c, weights_c
    cfg.beta, cfg.label_smoothing, cfg.reference_free = beta, label_smoothing, int(reference_free)
    cfg.f_divergence_type = enum_code("f-divergence", f_divergence_type, F_DIVERGENCE_TYPES)
    cfg.f_alpha_divergence_coef = f_alpha_divergence_coef
    cfg.use_rpo_alpha, cfg.rpo_alpha = int(rpo_alpha is not None), rpo_alpha or 0.0
    cfg.use_ld_alpha, cfg.ld_alpha = int(ld_alpha is not None), 1.0 if ld_alpha is None else ld_alpha
    cfg.simpo_gamma, cfg.discopop_tau, cfg.bco_delta, cfg.bco_count = simpo_gamma, discopop_tau, bco_delta, bco_count
    loss, metrics = ctypes.c_float(), _new_metrics(_DpoMetrics)
    grad_c, grad_r = torch.empty_like(ins[0]), torch.empty_like(ins[1])
    losses = torch.empty(ins[0].shape, dtype=torch.float32, device=ins[0].device)
    with_ld = ld_alpha is not None
    grad_cv = torch.empty_like(ins[0]) if with_ld else ins[0].new_empty(0)
    grad_rv = torch.empty_like(ins[1]) if with_ld else ins[1].new_empty(0)
    # Pointer fields keep their DLTensor (and it its tensor) alive as long as `cfg` lives.
    pointer = lambda t: None if t is None else ctypes.pointer(_dlpack.dl_tensor(t))
    refs = [pointer(t) for t in (pw, cv, rv, grad_cv if with_ld else None, grad_rv if with_ld else None, losses)]
    cfg.pair_weights, cfg.policy_chosen_verbose, cfg.policy_rejected_verbose = refs[0], refs[1], refs[2]
    cfg.grad_policy_chosen_verbose_out, cfg.grad_policy_rejected_verbose_out, cfg.losses_out = refs[3:]
    call("ur_dpo_loss", *ins, ctypes.byref(cfg), ctypes.byref(loss), grad_c, grad_r, ctypes.byref(metrics),
         stream_of(ins[0]))  # fmt: skip
    # Values the loss type does not compute are NaN in the C struct; the op reports them as 0.
    values = [getattr(metrics, f) for f, _ in _DpoMetrics._fields_[1:]]
    values = [0.0 if v != v else v for v in values]
    return _scalars(grad_c, loss.value), grad_c, grad_r, grad_cv, grad_rv, losses, _scalars(grad_c, values)


@_fused_dpo_loss.register_fake
def _(pc, pr, rc, rr, cl, rl, cv, rv, pw, loss_types, loss_weights, beta, label_smoothing, reference_free,
      f_divergence_type, f_alpha_divergence_coef, rpo_alpha, ld_alpha, simpo_gamma, discopop_tau, bco_delta,
      bco_count):  # fmt: skip
    with_ld = ld_alpha is not None
    return (_fake_scalars(pc), torch.empty_like(pc), torch.empty_like(pr),
            torch.empty_like(pc) if with_ld else pc.new_empty(0), torch.empty_like(pr) if with_ld else pr.new_empty(0),
            pc.new_empty(pc.shape, dtype=torch.float32), _fake_scalars(pc, len(DPO_METRICS)))  # fmt: skip


_register_loss_autograd(_fused_dpo_loss, (0, 1, 6, 7), 22)


# ---- bradley_terry_loss ---------------------------------------------------------------------------------------


@torch.library.custom_op("unireward::bradley_terry_loss", mutates_args=())
def _bradley_terry_loss(
    rewards_chosen: Tensor, rewards_rejected: Tensor, margin: Optional[Tensor], center_rewards_coefficient: float
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    chosen, rejected, margin = contiguous(rewards_chosen, rewards_rejected, margin)
    cfg = lib.ur_bradley_terry_config_default()
    cfg.center_rewards_coefficient = center_rewards_coefficient
    loss, metrics = ctypes.c_float(), _new_metrics(_BradleyTerryMetrics)
    grad_c, grad_r = torch.empty_like(chosen), torch.empty_like(rejected)
    call("ur_bradley_terry_loss", chosen, rejected, margin, ctypes.byref(cfg), ctypes.byref(loss), grad_c, grad_r,
         ctypes.byref(metrics), stream_of(chosen))  # fmt: skip
    values = [getattr(metrics, f) for f in BRADLEY_TERRY_METRICS]
    return _scalars(grad_c, loss.value), grad_c, grad_r, _scalars(grad_c, values)


@_bradley_terry_loss.register_fake
def _(chosen, rejected, margin, center_rewards_coefficient):
    return (_fake_scalars(chosen), torch.empty_like(chosen), torch.empty_like(rejected),
            _fake_scalars(chosen, len(BRADLEY_TERRY_METRICS)))  # fmt: skip


_register_loss_autograd(_bradley_terry_loss, (0, 1), 4)


# ---- kwise_loss -----------------------------------------------------------------------------------------------


@torch.library.custom_op("unireward::kwise_loss", mutates_args=())
def _kwise_loss(rewards: Tensor, order: Optional[Tensor], method: str) -> Tuple[Tensor, Tensor, Tensor]:
    rewards, order = contiguous(rewards, order)
    cfg = lib.ur_kwise_config_default()
    cfg.method = enum_code("K-wise method", method, KWISE_METHODS)
    loss, accuracy = ctypes.c_float(), ctypes.c_float()
    grad = torch.empty_like(rewards)
    call("ur_kwise_loss", rewards, order, ctypes.byref(cfg), ctypes.byref(loss), grad, ctypes.byref(accuracy),
         stream_of(rewards))  # fmt: skip
    return _scalars(grad, loss.value), grad, _scalars(grad, accuracy.value)


@_kwise_loss.register_fake
def _(rewards, order, method):
    return _fake_scalars(rewards), torch.empty_like(rewards), _fake_scalars(rewards)


_register_loss_autograd(_kwise_loss, (0,), 3)


# ---- diffusion_dpo_loss ---------------------------------------------------------------------------------------


@torch.library.custom_op("unireward::diffusion_dpo_loss", mutates_args=())
def _diffusion_dpo_loss(
    model_winner: Tensor,
    model_loser: Tensor,
    ref_winner: Tensor,
    ref_loser: Tensor,
    target_winner: Tensor,
    target_loser: Tensor,
    beta: float,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    ins = contiguous(model_winner, model_loser, ref_winner, ref_loser, target_winner, target_loser)
    cfg = lib.ur_diffusion_dpo_config_default()
    cfg.beta = beta
    loss, metrics = ctypes.c_float(), _new_metrics(_DiffusionDpoMetrics)
    grad_w, grad_l = torch.empty_like(ins[0]), torch.empty_like(ins[1])
    call("ur_diffusion_dpo_loss", *ins, ctypes.byref(cfg), ctypes.byref(loss), grad_w, grad_l, ctypes.byref(metrics),
         stream_of(ins[0]))  # fmt: skip
    values = [getattr(metrics, f) for f in DIFFUSION_DPO_METRICS]
    return _scalars(grad_w, loss.value), grad_w, grad_l, _scalars(grad_w, values)


@_diffusion_dpo_loss.register_fake
def _(mw, ml, rw, rl, tw, tl, beta):
    return (_fake_scalars(mw), torch.empty_like(mw), torch.empty_like(ml),
            _fake_scalars(mw, len(DIFFUSION_DPO_METRICS)))  # fmt: skip


_register_loss_autograd(_diffusion_dpo_loss, (0, 1), 7)


# ---- public API -----------------------------------------------------------------------------------------------


def _named(keys, values: Tensor):
    return dict(zip(keys, values.unbind(0)))


def _loss_types(loss_type, loss_weights):
    """TRL's `loss_type` (a name or a list) and `loss_weights` as the op's comma-joined names and weights."""
    names = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    weights = [1.0] * len(names) if loss_weights is None else [float(w) for w in loss_weights]
    return ",".join(names), weights


def _bco_state(bco_delta):
    """`bco_delta` (a float: used as given) or `running` (an object with `mean` and `count`, TRL's
    RunningMoments or `unireward.trl.RunningMean`) as the op's (delta, count); a count of -1 fixes delta."""
    if bco_delta is None:
        return 0.0, 0.0
    if isinstance(bco_delta, (int, float)):
        return float(bco_delta), -1.0
    return float(bco_delta.mean), float(bco_delta.count)


def fused_dpo_loss(
    policy_chosen,
    policy_rejected,
    reference_chosen=None,
    reference_rejected=None,
    *,
    chosen_lengths=None,
    rejected_lengths=None,
    loss_type="sigmoid",
    loss_weights=None,
    beta=0.1,
    label_smoothing=0.0,
    reference_free=False,
    f_divergence_type="reverse_kl",
    f_alpha_divergence_coef=1.0,
    rpo_alpha=None,
    ld_alpha=None,
    policy_chosen_verbose=None,
    policy_rejected_verbose=None,
    pair_weights=None,
    simpo_gamma=0.5,
    discopop_tau=0.05,
    bco_running=None,
):
    """The whole DPO objective of a TRL step in one library call (forward and gradient): `(loss, metrics)`.

    The loss is a 0-dim float32 tensor, `mean(w · (Σ_k weight_k · loss_k + rpo_alpha · NLL))` over the pairs (what
    TRL's `get_batch_loss_metrics` returns), differentiable with respect to the policy log-probs [P] (and LD-DPO's
    verbose parts); metrics under TRL's keys (0-dim tensors; `nll_loss`, ORPO's `log_odds_*` and BCO's running
    `bco_delta` / `bco_count` only where they apply). `loss_type` is a TRL name or a list of them with
    `loss_weights`; log-probs are sums over the completion tokens, and the op averages them itself for IPO, SimPO
    and ORPO from `chosen_lengths` / `rejected_lengths` (int [P]; RPO's NLL needs `chosen_lengths` too).
    `pair_weights` [P] are WPO's `policy_weights` (constants). `ld_alpha` needs the verbose parts' log-probs.
    `bco_running` is TRL's running mean (an object with `mean` and `count`, updated in place) or a float δ.
    Reference log-probs are constants (TRL computes them without gradient). The TRL-shaped per-pair function is
    `unireward.dpo_loss`."""
    names, weights = _loss_types(loss_type, loss_weights)
    delta, count = _bco_state(bco_running)
    loss, _, _, _, _, _, metrics = _fused_dpo_loss(
        policy_chosen, policy_rejected, reference_chosen, reference_rejected, chosen_lengths, rejected_lengths,
        policy_chosen_verbose, policy_rejected_verbose, pair_weights, names, weights, beta, label_smoothing,
        reference_free, f_divergence_type, f_alpha_divergence_coef, rpo_alpha, ld_alpha, simpo_gamma, discopop_tau,
        delta, count,
    )  # fmt: skip
    named = _named(DPO_METRICS, metrics)
    bco = "bco_pair" in names.split(",")
    if bco and count >= 0:
        bco_running.mean, bco_running.count = named["bco_delta"].item(), named["bco_count"].item()
    # Leave out the values this call does not compute (decided from the arguments, never synchronising).
    absent = (() if rpo_alpha is not None else ("nll_loss",)) + (
        () if loss_type == "orpo" else ("log_odds_ratio", "log_odds_chosen")
    ) + (() if bco else ("bco_delta", "bco_count"))
    return loss, {k: v for k, v in named.items() if k not in absent}


def bradley_terry_loss(rewards_chosen, rewards_rejected, margin=None, *, center_rewards_coefficient=None):
    """TRL's reward-model loss `mean(−logσ(r_c − r_r − margin)) + c·mean((r_c + r_r)²)` on rewards [P]:
    `(loss, metrics)` with `accuracy`, `rewards_chosen`, `rewards_rejected`, `margins`, `center_term`."""
    loss, _, _, metrics = _bradley_terry_loss(rewards_chosen, rewards_rejected, margin,
                                              center_rewards_coefficient or 0.0)  # fmt: skip
    return loss, _named(BRADLEY_TERRY_METRICS, metrics)


def kwise_loss(rewards, order=None, *, method="all_pairs"):
    """A K-wise ranking loss on rewards [G, K] listed best first (or `order` [G, K]: each group's candidate
    indices from best to worst): `method` "all_pairs" (mean −logσ(r_i − r_j) over ranked pairs) or
    "plackett_luce". Returns `(loss, accuracy)`: the mean over groups and the share of correctly ordered pairs."""
    loss, _, accuracy = _kwise_loss(rewards, order, method)
    return loss, accuracy


def diffusion_dpo_loss(model_winner, model_loser, ref_winner, ref_loser, target_winner, target_loser, *, beta=2500.0):
    """Diffusion-DPO (Wallace et al. 2023) on predictions and targets [B, D...]: `(loss, metrics)`, differentiable
    with respect to the model's predictions; metrics `implicit_accuracy`, `model_mse_winner`, `model_mse_loser`,
    `ref_mse_winner`, `ref_mse_loser`. The loss is `mean -logσ(-½β((mse_w - mse_l) - (ref_mse_w - ref_mse_l)))`, the
    paper's authors' form; diffusers' `train_diffusion_dpo.py` drops the ½, so its `beta_dpo` is β / 2.
    bindings/python/examples/diffusion_dpo.py uses it in a diffusers training step."""
    loss, _, _, metrics = _diffusion_dpo_loss(model_winner, model_loser, ref_winner, ref_loser, target_winner,
                                              target_loser, beta)  # fmt: skip
    return loss, _named(DIFFUSION_DPO_METRICS, metrics)
