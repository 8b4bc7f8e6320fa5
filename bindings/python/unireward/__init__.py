"""unireward for PyTorch: the library's fused ops (log-probs, the DPO family, reward-model losses, Diffusion-DPO,
reward heads, comparisons) as `torch.ops.unireward.*` custom ops with autograd, loaded from `libunireward.so`
through ctypes (no compilation). See README.md, section "PyTorch"."""

from ._lib import ABI_VERSION, UnirewardError
from . import _c
from . import ops
from .ops import *  # noqa: F401,F403
from .trl import dpo_loss
from .liger import FusedLinearDPOLoss


def library_path():
    """The path of the loaded `libunireward.so`."""
    return _c.lib._unireward_path


def version():
    """The loaded library's version string."""
    return _c.lib.ur_version_string().decode()
