"""`unireward.AdamW`: the library's fused AdamW (`ur_adamw_*`) over a model's torch parameters, updated in place —
`torch.optim.AdamW` + `torch.nn.utils.clip_grad_norm_` + transformers' warm-up schedules in one call per step, with
fp32 masters and moments for bfloat16/float16 parameters."""

import ctypes
import math
from typing import Callable, Dict, Iterable, Optional, Tuple, Union

import torch
from torch import Tensor

from . import _dlpack
from ._c import _context, lib, stream_of
from ._dlpack import DLTensor
from ._lib import check

_P = ctypes.c_void_p  # ur_adamw*
_T = ctypes.POINTER(DLTensor)


class _Config(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("schedule", ctypes.c_int32), ("lr", ctypes.c_double),
                ("beta1", ctypes.c_double), ("beta2", ctypes.c_double), ("eps", ctypes.c_double),
                ("weight_decay", ctypes.c_double), ("max_grad_norm", ctypes.c_double),
                ("warmup_steps", ctypes.c_uint64), ("total_steps", ctypes.c_uint64),
                ("error_if_nonfinite", ctypes.c_int32), ("reserved", ctypes.c_int32)]  # fmt: skip


class _StepReport(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("reserved", ctypes.c_uint32), ("step", ctypes.c_uint64),
                ("lr", ctypes.c_double), ("grad_norm", ctypes.c_double), ("clip_coef", ctypes.c_double)]  # fmt: skip


lib.ur_adamw_config_default.argtypes = []
lib.ur_adamw_config_default.restype = _Config
lib.ur_adamw_create.argtypes = [_P, _T, ctypes.POINTER(ctypes.c_char_p), ctypes.c_size_t, ctypes.POINTER(_Config),
                                ctypes.POINTER(_P)]  # fmt: skip
lib.ur_adamw_create.restype = ctypes.c_int32
lib.ur_adamw_step.argtypes = [_P, _P, _T, _T, ctypes.c_size_t, ctypes.POINTER(_StepReport), _P]
lib.ur_adamw_step.restype = ctypes.c_int32
_U64P = ctypes.POINTER(ctypes.c_uint64)
lib.ur_adamw_state_numel.argtypes = [_P, _P, _U64P, _U64P, _U64P]
lib.ur_adamw_state_numel.restype = ctypes.c_int32
lib.ur_adamw_get_state.argtypes = [_P, _P, _T, _T, _T, _U64P, _P]
lib.ur_adamw_get_state.restype = ctypes.c_int32
lib.ur_adamw_set_state.argtypes = [_P, _P, _T, _T, _T, ctypes.c_uint64, _P]
lib.ur_adamw_set_state.restype = ctypes.c_int32
lib.ur_adamw_free.argtypes = [_P]
lib.ur_adamw_free.restype = None

#: The `UR_SCHEDULE_*` codes, by index.
SCHEDULES = ("constant", "linear", "cosine")
_FLOATS = (torch.float32, torch.bfloat16, torch.float16)

Params = Union[Iterable[Tensor], Iterable[Tuple[str, Tensor]]]


def _non_negative(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"unireward.AdamW: `{name}` must be finite and >= 0, got {value}")
    return value


def _count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        raise ValueError(f"unireward.AdamW: `{name}` must be an integer >= 0, got {value!r}")
    return value


def _named(params: Params):
    """`(name, tensor)` pairs of `params` (tensors, or `(name, tensor)` pairs as `named_parameters()` gives)."""
    named = []
    for i, item in enumerate(params):
        if isinstance(item, Tensor):
            named.append((f"params[{i}]", item))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], Tensor):
            named.append(item)
        else:
            raise TypeError(f"unireward.AdamW: `params[{i}]` must be a tensor or a (name, tensor) pair, "
                            f"got {type(item).__name__}")  # fmt: skip
    return named


def _dl_array(tensors):
    """A C array of the `DLTensor`s of `tensors`, and the structs it copies pointers from (keep them alive)."""
    dls = [_dlpack.dl_tensor(t) for t in tensors]
    return (DLTensor * len(dls))(*dls), dls


def _check_separate(named) -> None:
    """Each parameter is memory of its own (the step writes them in place): torch's "appear in more than one
    parameter group", found at creation rather than at the first step."""
    spans = sorted((p.data_ptr(), p.data_ptr() + p.numel() * p.element_size(), name) for name, p in named)
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            raise ValueError(f"unireward.AdamW: `{second}` overlaps `{first}`: each parameter must be given once")


class AdamW:
    """AdamW with decoupled weight decay over `params` (tensors, or `(name, tensor)` pairs such as
    `model.named_parameters()`: float32, bfloat16 or float16 leaves, contiguous, all on one device), stepped in
    place by the library — `torch.optim.AdamW`'s update, with `clip_grad_norm_(max_grad_norm)` when given and the
    learning rate `lr` times the `schedule`'s factor: "constant", "linear" or "cosine" (transformers'
    `get_*_schedule_with_warmup`: `warmup_steps` linear steps from 0, then constant, or decaying to 0 at
    `total_steps`). A bf16/f16 parameter keeps an fp32 master copy (the stored value is the master rounded).

    `step()` uses every parameter's `.grad` (each must have one: unlike torch, a parameter is never skipped) and
    returns the closure's loss when given one; `last_step` reports the step's number, learning rate, gradient norm
    (before clipping; `None` without clipping) and clipping factor. The optimizer state lives in the library;
    `state_dict()` copies it out (for `torch.save`) and `load_state_dict()` restores it, so a resumed loop steps
    exactly as an uninterrupted one.
    """

    def __init__(self, params: Params, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, max_grad_norm: Optional[float] = None,
                 schedule: str = "constant", warmup_steps: int = 0, total_steps: int = 0,
                 error_if_nonfinite: bool = False):  # fmt: skip
        self._handle = None
        config = lib.ur_adamw_config_default()
        config.lr = _non_negative("lr", lr)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"unireward.AdamW: `betas` must be a pair (beta1, beta2), got {betas!r}")
        for i, beta in enumerate(betas):
            if not 0.0 <= float(beta) < 1.0:
                raise ValueError(f"unireward.AdamW: `betas[{i}]` must be in [0, 1), got {beta}")
        config.beta1, config.beta2 = float(betas[0]), float(betas[1])
        config.eps = _non_negative("eps", eps)
        config.weight_decay = _non_negative("weight_decay", weight_decay)
        if max_grad_norm is not None:
            max_grad_norm = float(max_grad_norm)
            if not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
                raise ValueError(f"unireward.AdamW: `max_grad_norm` must be finite and > 0 (or None), "
                                 f"got {max_grad_norm}")  # fmt: skip
            config.max_grad_norm = max_grad_norm
        if schedule not in SCHEDULES:
            raise ValueError(f"unireward.AdamW: `schedule` must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        config.schedule = SCHEDULES.index(schedule)
        config.warmup_steps = _count("warmup_steps", warmup_steps)
        config.total_steps = _count("total_steps", total_steps)
        if schedule != "constant" and total_steps == 0:
            raise ValueError(f"unireward.AdamW: the {schedule} schedule needs `total_steps` > 0")
        config.error_if_nonfinite = int(bool(error_if_nonfinite))

        named = _named(params)
        if not named:
            raise ValueError("unireward.AdamW: `params` is empty")
        for name, p in named:
            self._check_param(name, p)
        devices = {p.device for _, p in named}
        if len(devices) > 1:
            raise ValueError(f"unireward.AdamW: `params` must be on one device, got {sorted(map(str, devices))}")
        _check_separate(named)
        self.names = [name for name, _ in named]
        self.params = [p for _, p in named]
        self.device = self.params[0].device
        #: The configuration, as given.
        self.defaults = dict(lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps,
                             weight_decay=config.weight_decay, max_grad_norm=max_grad_norm, schedule=schedule,
                             warmup_steps=warmup_steps, total_steps=total_steps)  # fmt: skip
        #: What the last `step()` did: {"step", "lr", "grad_norm", "clip_coef"}; `None` before the first.
        self.last_step: Optional[Dict[str, float]] = None
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # creation copies the masters on its own stream
        array, _keep = _dl_array(self.params)
        names = (ctypes.c_char_p * len(self.names))(*(n.encode() for n in self.names))
        handle = _P()
        status = lib.ur_adamw_create(_context, array, names, len(self.params), ctypes.byref(config),
                                     ctypes.byref(handle))  # fmt: skip
        check(lib, "ur_adamw_create", status)
        self._handle = handle

    @staticmethod
    def _check_param(name: str, p: Tensor) -> None:
        if p.dtype not in _FLOATS:
            raise TypeError(f"unireward.AdamW: `{name}` is {p.dtype}; parameters must be float32, bfloat16 or "
                            "float16")  # fmt: skip
        if not p.is_leaf:
            raise ValueError(f"unireward.AdamW: `{name}` is not a leaf tensor (optimize the tensor itself, not a "
                             "result computed from it)")  # fmt: skip
        if not p.is_contiguous():
            raise ValueError(f"unireward.AdamW: `{name}` is not contiguous (the optimizer writes it in place)")

    def _live(self):
        if self._handle is None:
            raise RuntimeError("unireward.AdamW: the optimizer was closed")
        return self._handle

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Tensor]] = None):
        """One update of every parameter from its `.grad` (same shape and dtype as the parameter). Every argument
        is checked before any parameter is written. Returns the closure's loss (the closure runs with grad
        enabled, as in torch) or `None`."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        handle = self._live()
        grads = []
        for name, p in zip(self.names, self.params):
            self._check_param(name, p)
            g = p.grad
            if g is None:
                raise ValueError(f"unireward.AdamW: `{name}` has no gradient (.grad is None); every parameter "
                                 "needs one")  # fmt: skip
            if g.dtype != p.dtype or g.shape != p.shape or g.device != p.device:
                raise ValueError(f"unireward.AdamW: the gradient of `{name}` is {g.dtype} {tuple(g.shape)} on "
                                 f"{g.device}, the parameter {p.dtype} {tuple(p.shape)} on {p.device}")  # fmt: skip
            grads.append(g.contiguous())
        params, _keep_p = _dl_array(self.params)
        grad_array, _keep_g = _dl_array(grads)
        report = _StepReport(struct_size=ctypes.sizeof(_StepReport))
        status = lib.ur_adamw_step(_context, handle, params, grad_array, len(self.params), ctypes.byref(report),
                                   stream_of(self.params[0]))  # fmt: skip
        check(lib, "ur_adamw_step", status)
        self.last_step = {
            "step": report.step,
            "lr": report.lr,
            "grad_norm": None if math.isnan(report.grad_norm) else report.grad_norm,
            "clip_coef": report.clip_coef,
        }
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clears every parameter's `.grad` (to `None`, or zeros with `set_to_none=False`), as torch's."""
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_()
                p.grad.zero_()

    @property
    def steps_done(self) -> int:
        """Steps taken so far (the schedule's position)."""
        step = ctypes.c_uint64()
        check(lib, "ur_adamw_state_numel",
              lib.ur_adamw_state_numel(_context, self._live(), None, None, ctypes.byref(step)))  # fmt: skip
        return step.value

    def state_dict(self) -> dict:
        """The optimizer's state, copied: `step`, the first and second moments `exp_avg` / `exp_avg_sq` (float32,
        every parameter's flattened one after the other in `names` order), `master` (the fp32 masters of the
        bfloat16/float16 parameters in the same order; empty when all are float32), and the `names`, `dtypes` and
        `shapes` of the parameters, which `load_state_dict` checks. The schedule's configuration is the
        constructor's (`defaults`), not part of the state."""
        moments, masters = ctypes.c_uint64(), ctypes.c_uint64()
        handle = self._live()
        check(lib, "ur_adamw_state_numel",
              lib.ur_adamw_state_numel(_context, handle, ctypes.byref(moments), ctypes.byref(masters), None))  # fmt: skip
        buffers = [torch.empty(n, dtype=torch.float32, device=self.device)
                   for n in (moments.value, moments.value, masters.value)]  # fmt: skip
        array, _keep = _dl_array(buffers)
        step = ctypes.c_uint64()
        status = lib.ur_adamw_get_state(_context, handle, ctypes.byref(array[0]), ctypes.byref(array[1]),
                                        ctypes.byref(array[2]), ctypes.byref(step), stream_of(buffers[0]))  # fmt: skip
        check(lib, "ur_adamw_get_state", status)
        return {
            "step": step.value,
            "exp_avg": buffers[0],
            "exp_avg_sq": buffers[1],
            "master": buffers[2],
            "names": list(self.names),
            "dtypes": [str(p.dtype) for p in self.params],
            "shapes": [tuple(p.shape) for p in self.params],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restores a `state_dict()` of an optimizer over the same parameters (same names, dtypes and shapes, in the
        same order); its tensors may be on any device (they are copied to the optimizer's). Everything is checked
        before anything changes. The parameters themselves are restored by the caller (e.g. `load_state_dict` of
        the model)."""
        if not isinstance(state, dict):
            raise TypeError(f"unireward.AdamW.load_state_dict: expected a dict, got {type(state).__name__}")
        keys = ("step", "exp_avg", "exp_avg_sq", "master", "names", "dtypes", "shapes")
        missing = [k for k in keys if k not in state]
        if missing:
            raise ValueError(f"unireward.AdamW.load_state_dict: the state lacks {', '.join(missing)}")
        mine = self.state_dict()
        for key in ("names", "dtypes", "shapes"):
            got = [tuple(x) if key == "shapes" else x for x in state[key]]
            if got != mine[key]:
                raise ValueError(f"unireward.AdamW.load_state_dict: the state's parameter {key} {got} are not this "
                                 f"optimizer's {mine[key]}")  # fmt: skip
        step = state["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"unireward.AdamW.load_state_dict: `step` must be an int >= 0, got {step!r}")
        buffers = []
        for key in ("exp_avg", "exp_avg_sq", "master"):
            t = state[key]
            if not isinstance(t, Tensor) or t.dtype != torch.float32 or t.shape != mine[key].shape:
                what = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"unireward.AdamW.load_state_dict: `{key}` is {what}, this optimizer's is "
                                 f"torch.float32 {tuple(mine[key].shape)}")  # fmt: skip
            buffers.append(t.detach().to(self.device).contiguous())
        array, _keep = _dl_array(buffers)
        status = lib.ur_adamw_set_state(_context, self._live(), ctypes.byref(array[0]), ctypes.byref(array[1]),
                                        ctypes.byref(array[2]), step, stream_of(buffers[0]))  # fmt: skip
        check(lib, "ur_adamw_set_state", status)

    def close(self) -> None:
        """Frees the optimizer's state now (also done when it is garbage-collected)."""
        if getattr(self, "_handle", None) is not None:
            lib.ur_adamw_free(self._handle)
            self._handle = None

    def __del__(self):
        self.close()
