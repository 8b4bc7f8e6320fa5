"""`FusedLinearDPOLoss`: the call shape of Liger's `LigerFusedLinearDPOLoss`, built from the fused linear log-prob
op (the [B, T, V] logits are never materialised) and the DPO loss op."""

import torch

from . import ops
from .trl import LENGTH_NORMALISED


class FusedLinearDPOLoss(torch.nn.Module):
    """DPO on the LM head's output, with Liger's call shape: `forward(lin_weight, _input, target, bias=None,
    ref_input=None, ref_weight=None, ref_bias=None)`, where `_input` [2P, T, H] and `target` [2P, T] hold the P
    chosen sequences then the P rejected ones.

    Returns `(loss, (chosen_logps, rejected_logps, chosen_logits_mean, rejected_logits_mean, nll_loss,
    chosen_rewards, rejected_rewards))` as Liger does. The loss is the mean preference loss over pairs, plus the
    chosen NLL (Σ over chosen tokens / chosen token count) with `compute_nll_loss`. Log-probs are sums over tokens,
    or means with `average_log_prob`. One difference: the logits means are TRL's (over counted tokens, then over
    sequences), where Liger's also count the ignored positions. Defaults are Liger's (a reference model, summed
    log-probs, no NLL term).
    """

    def __init__(
        self,
        ignore_index: int = -100,
        beta: float = 0.1,
        compute_nll_loss: bool = False,
        compiled: bool = True,
        use_ref_model: bool = True,
        average_log_prob: bool = False,
        chunk_size: int = 1,
        loss_type: str = "sigmoid",
        chunk_tokens: int = 0,
    ):
        super().__init__()
        self.ignore_index = ignore_index
        self.beta = beta
        self.compute_nll_loss = compute_nll_loss
        # Accepted for Liger compatibility: the ops need no torch.compile, and they chunk by tokens (`chunk_tokens`,
        # 0 for about 256 MiB of float32 logits per chunk), not by pairs.
        self.compiled, self.chunk_size = compiled, chunk_size
        self.use_ref_model = use_ref_model
        self.average_log_prob = average_log_prob
        self.loss_type = loss_type
        self.chunk_tokens = chunk_tokens

    def _logps(self, hidden, weight, target, bias):
        out = ops.fused_linear_logprobs(
            hidden,
            weight,
            target,
            bias=bias,
            ignore_index=self.ignore_index,
            average=self.average_log_prob,
            chunk_tokens=self.chunk_tokens,
        )
        return out.logps, out.token_counts, out.mean_logits

    def forward(self, lin_weight, _input, target, bias=None, ref_input=None, ref_weight=None, ref_bias=None):
        if _input.shape[0] % 2:
            raise ValueError(f"FusedLinearDPOLoss: the batch ({_input.shape[0]}) must hold chosen then rejected rows")
        pairs = _input.shape[0] // 2
        logps, counts, mean_logits = self._logps(_input, lin_weight, target, bias)
        chosen, rejected = logps[:pairs], logps[pairs:]
        ref_chosen = ref_rejected = None
        if self.use_ref_model:
            if ref_input is None or ref_weight is None:
                raise ValueError("FusedLinearDPOLoss: use_ref_model needs ref_input and ref_weight")
            with torch.no_grad():
                ref_logps, _, _ = self._logps(ref_input, ref_weight, target, ref_bias)
            ref_chosen, ref_rejected = ref_logps[:pairs], ref_logps[pairs:]
        lengths = {}
        if self.loss_type in LENGTH_NORMALISED:
            # These loss types average over tokens: by the op from summed log-probs, or already averaged.
            per_row = torch.ones_like(counts) if self.average_log_prob else counts.clamp(min=1)
            lengths = dict(chosen_lengths=per_row[:pairs].long(), rejected_lengths=per_row[pairs:].long())
        loss, _ = ops.fused_dpo_loss(
            chosen,
            rejected,
            ref_chosen,
            ref_rejected,
            loss_type=self.loss_type,
            beta=self.beta,
            reference_free=not self.use_ref_model,
            **lengths,
        )
        chosen_counts = counts[:pairs]
        chosen_sums = chosen * chosen_counts if self.average_log_prob else chosen
        nll_loss = -chosen_sums.sum() / chosen_counts.sum().clamp(min=1)
        if self.compute_nll_loss:
            loss = loss + nll_loss
        with torch.no_grad():
            chosen_rewards = self.beta * (chosen - (0 if ref_chosen is None else ref_chosen))
            rejected_rewards = self.beta * (rejected - (0 if ref_rejected is None else ref_rejected))
        aux = (
            chosen.detach(),
            rejected.detach(),
            mean_logits[:pairs].mean(),
            mean_logits[pairs:].mean(),
            nll_loss.detach(),
            chosen_rewards,
            rejected_rewards,
        )
        return loss, aux
