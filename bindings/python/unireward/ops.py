"""Every op of the library, as functions over torch tensors (each backed by a `torch.ops.unireward.*` op)."""

from .comparisons import Comparison, Selection, compare, select_pairs
from .heads import Verdict, scalar_reward, verdict_head
from .logprobs import LogProbs, fused_linear_logprobs, sequence_logprobs
from .losses import bradley_terry_loss, diffusion_dpo_loss, fused_dpo_loss, kwise_loss

__all__ = ["Comparison", "Selection", "compare", "select_pairs", "Verdict", "scalar_reward", "verdict_head",
           "LogProbs", "fused_linear_logprobs", "sequence_logprobs", "bradley_terry_loss", "diffusion_dpo_loss",
           "fused_dpo_loss", "kwise_loss"]  # fmt: skip
