"""unireward for PyTorch: the library's fused ops (log-probs, the DPO family, reward-model losses, Diffusion-DPO,
reward heads, comparisons) as `torch.ops.unireward.*` custom ops with autograd, the judge (`Judge`: one-pass
verdicts and scores of the four UnifiedReward tasks), the models (`Model`, a Qwen2 decoder
or LLaVA-OneVision with images and videos: logits, parameter gradients, generation), the fused optimizer
(`AdamW`), the SFT, DPO and reward-model trainers stepped from Python (`SftTrainer`, `RewardTrainer`,
`DpoTrainer`) and LLaVA-OneVision's image
preprocessing (`ImageProcessor`), loaded from `libunireward.so` through ctypes (no compilation). See README.md, sections "PyTorch" and "Images and videos"."""

import ctypes

from . import _c, ops
from ._lib import ABI_VERSION, UnirewardError
from .liger import FusedLinearDPOLoss
from .judge import Judge, JudgeRequest, JudgeResult, ReasonedResult
from .media import ImageProcessor
from .model import LlavaOnevisionModel, Model, Qwen2Model
from .optim import AdamW
from .train import REWARD_LOSSES, DpoTrainer, RewardTrainer, SftTrainer
from .ops import (
    Comparison,
    LogProbs,
    Selection,
    Verdict,
    bradley_terry_loss,
    compare,
    diffusion_dpo_loss,
    fused_linear_logprobs,
    kwise_loss,
    scalar_reward,
    select_pairs,
    sequence_logprobs,
    verdict_head,
)
from .trl import RunningMean, dpo_loss

# `dpo_loss` is TRL's `DPOTrainer.dpo_loss` (per-pair losses); `ops.fused_dpo_loss` is the whole objective in one call.
__all__ = ["ABI_VERSION", "AdamW", "DpoTrainer", "UnirewardError", "FusedLinearDPOLoss", "ImageProcessor", "Judge", "JudgeRequest", "JudgeResult", "ReasonedResult", "LlavaOnevisionModel", "Model",
           "Qwen2Model", "REWARD_LOSSES", "RewardTrainer", "RunningMean", "SftTrainer", "dpo_loss", "ops", "library_path", "version",
           "host_cache_bytes", "release_host_cache",
           "Comparison", "LogProbs", "Selection", "Verdict", "bradley_terry_loss", "compare", "diffusion_dpo_loss",
           "fused_linear_logprobs", "kwise_loss", "scalar_reward", "select_pairs", "sequence_logprobs",
           "verdict_head"]  # fmt: skip


def library_path():
    """The path of the loaded `libunireward.so`."""
    return _c.lib._unireward_path


def version():
    """The loaded library's version string."""
    return _c.lib.ur_version_string().decode()


for _name in ("ur_host_cache_bytes", "ur_host_cache_release"):
    getattr(_c.lib, _name).argtypes = []
    getattr(_c.lib, _name).restype = ctypes.c_uint64


def host_cache_bytes():
    """Bytes of freed host buffers (>= 1 MiB each) the library keeps for reuse; the cap is the environment variable
    `UNIREWARD_HOST_CACHE_BYTES` (0 turns the cache off), by default a quarter of the machine's memory."""
    return _c.lib.ur_host_cache_bytes()


def release_host_cache():
    """Hands the library's cached host buffers back to the system; returns the bytes released."""
    return _c.lib.ur_host_cache_release()
