"""A drop-in for TRL's `DPOTrainer.dpo_loss`: TRL's `loss_type` names, its rewards and its logged metrics."""

import torch

from . import ops
from ._c import enum_code
from .losses import DPO_LOSS_TYPES

# Loss types TRL length-normalises (`average_log_prob`): their log-probs are divided by the token counts.
LENGTH_NORMALISED = ("ipo", "simpo", "orpo")
# Loss types that never compare against a reference model.
_REFERENCE_FREE = ("simpo", "orpo")


def dpo_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps=None,
    reference_rejected_logps=None,
    beta=0.1,
    loss_type="sigmoid",
    label_smoothing=0.0,
    reference_free=False,
    chosen_lengths=None,
    rejected_lengths=None,
    rpo_alpha=None,
    simpo_gamma=0.5,
    bco_delta=0.0,
):
    """TRL's DPO loss family on per-sequence log-probs [P], fused in one library call (forward and gradient).

    Returns `(loss, chosen_rewards, rejected_rewards, metrics)`: the loss is the mean over pairs (TRL's
    `losses.mean()`, plus `rpo_alpha · NLL` with RPO); the rewards are per pair and detached; `metrics` holds TRL's
    logged values as 0-dim tensors under TRL's keys (`rewards/chosen`, `rewards/rejected`, `rewards/accuracies`,
    `rewards/margins`, `logps/chosen`, `logps/rejected`, plus `nll_loss`, `log_odds_ratio` and `log_odds_chosen`
    where they apply).

    As in TRL, for `ipo`, `simpo` and `orpo` the log-probs are expected already averaged over tokens; or pass
    summed log-probs with `chosen_lengths` / `rejected_lengths` (token counts) and the op averages them (RPO's NLL
    needs the summed log-probs and `chosen_lengths`). `bco_delta` is the running mean of rewards TRL keeps for
    `bco_pair` (feed it `0.5 * (metrics["rewards/chosen"] + metrics["rewards/rejected"])`).
    """
    enum_code("DPO loss type", loss_type, DPO_LOSS_TYPES)
    dtype = policy_chosen_logps.dtype
    use_reference = loss_type not in _REFERENCE_FREE and not reference_free
    if use_reference and (reference_chosen_logps is None or reference_rejected_logps is None):
        raise ValueError(f"dpo_loss: loss_type {loss_type!r} needs the reference log-probs (or reference_free=True)")
    cast = lambda t: None if t is None else t.detach().to(dtype)
    ref_c, ref_r = cast(reference_chosen_logps), cast(reference_rejected_logps)
    normalised = loss_type in LENGTH_NORMALISED
    if normalised and chosen_lengths is None and rejected_lengths is None:
        if rpo_alpha is not None:
            raise ValueError("dpo_loss: rpo_alpha needs summed log-probs and chosen_lengths")
        # TRL hands these losses averaged log-probs: counts of 1 leave them as they are.
        ones = torch.ones(policy_chosen_logps.shape, dtype=torch.int64, device=policy_chosen_logps.device)
        chosen_lengths = rejected_lengths = ones
    loss, metrics = ops.dpo_loss(
        policy_chosen_logps,
        policy_rejected_logps,
        ref_c,
        ref_r,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
        loss_type=loss_type,
        beta=beta,
        label_smoothing=label_smoothing,
        reference_free=reference_free,
        rpo_alpha=rpo_alpha,
        simpo_gamma=simpo_gamma,
        bco_delta=bco_delta,
    )
    with torch.no_grad():
        a, b = policy_chosen_logps.float(), policy_rejected_logps.float()
        if use_reference:
            a, b = a - ref_c.float(), b - ref_r.float()
        if normalised:
            a, b = a / chosen_lengths.float(), b / rejected_lengths.float()
    return loss, beta * a, beta * b, metrics
