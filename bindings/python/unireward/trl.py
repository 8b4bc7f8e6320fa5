"""A drop-in for TRL's `DPOTrainer.dpo_loss` (TRL v0.24.0-v0.27.2, where that method has one form): its signature,
its per-pair returns, its loss types and its `reference_free`, f-divergence and BCO running-mean behaviour."""

from typing import Optional, Tuple

import torch
from torch import Tensor

from .losses import _fused_dpo_loss

# Loss types TRL length-normalises (`average_log_prob`): their log-probs are divided by the token counts.
LENGTH_NORMALISED = ("ipo", "simpo", "orpo")
# Loss types that never compare against a reference model.
_WITHOUT_REFERENCE = ("simpo", "orpo")


class RunningMean:
    """BCO's running mean of the rewards, as TRL's `RunningMoments` keeps it (`mean`, and `count` batch means).
    `dpo_loss` updates it in place with each batch before using it, as TRL does; TRL's own `RunningMoments` object
    works as well."""

    def __init__(self, mean: float = 0.0, count: float = 0.0):
        self.mean, self.count = mean, count


def _args(loss_type, beta, label_smoothing, reference_free, f_divergence_type, f_alpha_divergence_coef, simpo_gamma,
          discopop_tau):  # fmt: skip
    return (loss_type, [1.0], beta, label_smoothing, reference_free, f_divergence_type, f_alpha_divergence_coef, None,
            None, simpo_gamma, discopop_tau)  # fmt: skip


@torch.library.custom_op("unireward::dpo_pair_losses", mutates_args=())
def _dpo_pair_losses(
    chosen: Tensor,
    rejected: Tensor,
    ref_chosen: Optional[Tensor],
    ref_rejected: Optional[Tensor],
    loss_type: str,
    beta: float,
    label_smoothing: float,
    reference_free: bool,
    f_divergence_type: str,
    f_alpha_divergence_coef: float,
    simpo_gamma: float,
    discopop_tau: float,
    bco_delta: float,
    bco_count: float,
) -> Tuple[Tensor, Tensor]:
    """TRL's per-pair losses (in the log-probs' dtype) and BCO's updated (delta, count) as a float32 [2]."""
    ones = torch.ones(chosen.shape, dtype=torch.int64, device=chosen.device)
    lengths = (ones, ones) if loss_type in LENGTH_NORMALISED else (None, None)
    out = _fused_dpo_loss(chosen, rejected, ref_chosen, ref_rejected, *lengths, None, None, None,
                          *_args(loss_type, beta, label_smoothing, reference_free, f_divergence_type,
                                 f_alpha_divergence_coef, simpo_gamma, discopop_tau), bco_delta, bco_count)  # fmt: skip
    metrics = out[6]
    return out[5].to(chosen.dtype), metrics[-2:].clone()


@_dpo_pair_losses.register_fake
def _(chosen, rejected, *args):
    return torch.empty_like(chosen), chosen.new_empty(2, dtype=torch.float32)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:4])
    ctx.args = inputs[4:12]
    ctx.bco = output[1]
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad_losses, _):
    # d(Σ g_i loss_i): the op's gradient of mean(w_i loss_i) with the pair weights w = g, times P. BCO's delta is
    # the one the forward used (a constant of the gradient, as TRL's detached running mean is).
    chosen, rejected, ref_chosen, ref_rejected = ctx.saved_tensors
    loss_type = ctx.args[0]
    ones = torch.ones(chosen.shape, dtype=torch.int64, device=chosen.device)
    lengths = (ones, ones) if loss_type in LENGTH_NORMALISED else (None, None)
    delta = float(ctx.bco[0]) if loss_type == "bco_pair" else 0.0
    weights = grad_losses.detach().to(chosen.dtype).contiguous()
    out = _fused_dpo_loss(chosen.detach(), rejected.detach(), ref_chosen, ref_rejected, *lengths, None, None,
                          weights, *_args(*ctx.args), delta, -1.0)  # fmt: skip
    p = chosen.shape[0]
    return (out[1] * p, out[2] * p) + (None,) * 12


_dpo_pair_losses.register_autograd(_backward, setup_context=_setup)


def dpo_loss(
    chosen_logps,
    rejected_logps,
    ref_chosen_logps=None,
    ref_rejected_logps=None,
    loss_type="sigmoid",
    model_output=None,
    *,
    beta=0.1,
    label_smoothing=0.0,
    reference_free=False,
    f_divergence_type="reverse_kl",
    f_alpha_divergence_coef=1.0,
    discopop_tau=0.05,
    simpo_gamma=0.5,
    running=None,
):
    """TRL's `DPOTrainer.dpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, loss_type,
    model_output)` on per-sequence log-probs [P], with TRL's `DPOConfig` values as keywords.

    Returns TRL's `(losses, chosen_rewards, rejected_rewards)`: the per-pair losses [P] (differentiable with respect
    to the policy log-probs; AOT's at sorted positions) and the detached rewards `β·(logps - ref_logps)`. As in TRL,
    the log-probs are what the loss sees: already averaged over tokens for `ipo` (and `simpo` / `orpo`, CPO's and
    ORPO's losses, also accepted here), already LD-DPO-weighted for `ld_alpha`. `reference_free` is TRL's: some loss
    types and the rewards still use the reference log-probs; pass `None` for them to take them as 0.
    `model_output` is accepted for TRL's signature (TRL reads it only for `sft`). For `bco_pair`, `running` is the
    running mean of the rewards (`RunningMean` or TRL's `RunningMoments`), updated in place before use as TRL does.

    The whole training objective (mixtures with `loss_weights`, RPO, WPO weights, LD-DPO from token counts) is
    `unireward.ops.fused_dpo_loss`, one call for the loss and its gradient.
    """
    del model_output
    if (ref_chosen_logps is None) != (ref_rejected_logps is None):
        raise ValueError("dpo_loss: give both reference log-probs or neither")
    if loss_type not in _WITHOUT_REFERENCE and not reference_free and ref_chosen_logps is None:
        raise ValueError(f"dpo_loss: loss_type {loss_type!r} needs the reference log-probs (or reference_free=True)")
    if loss_type == "bco_pair" and running is None:
        raise ValueError("dpo_loss: bco_pair needs `running` (a unireward.trl.RunningMean carried across steps)")
    dtype = chosen_logps.dtype
    cast = lambda t: None if t is None else t.detach().to(dtype).contiguous()
    ref_c, ref_r = cast(ref_chosen_logps), cast(ref_rejected_logps)
    bco = (float(running.mean), float(running.count)) if loss_type == "bco_pair" else (0.0, 0.0)
    losses, state = _dpo_pair_losses(chosen_logps, rejected_logps, ref_c, ref_r, loss_type, beta, label_smoothing,
                                     reference_free, f_divergence_type, f_alpha_divergence_coef, simpo_gamma,
                                     discopop_tau, *bco)  # fmt: skip
    if loss_type == "bco_pair":
        running.mean, running.count = state.tolist()
    with torch.no_grad():
        use_reference = loss_type not in _WITHOUT_REFERENCE and ref_c is not None
        a, b = chosen_logps.detach(), rejected_logps.detach()
        if use_reference:
            a, b = a - ref_c, b - ref_r
    return losses, beta * a, beta * b
