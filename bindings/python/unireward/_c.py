"""The loaded library, its process-wide context, and one helper to call an export on tensors."""

import atexit
import ctypes

import torch

from . import _dlpack, _lib

lib = _lib.load_library()

_context = ctypes.c_void_p()
_lib.check(lib, "ur_context_create", lib.ur_context_create(ctypes.byref(_context)))
lib.ur_context_free.restype = None
lib.ur_context_free.argtypes = [ctypes.c_void_p]
atexit.register(lib.ur_context_free, _context)


def stream_of(t: torch.Tensor):
    """The `void* stream` argument for work on `t`: PyTorch's current stream for a CUDA tensor, NULL on the CPU."""
    if t.device.type == "cuda":
        return ctypes.c_void_p(torch.cuda.current_stream(t.device).cuda_stream)
    return None


def call(name: str, *args) -> None:
    """Calls `name(ctx, *args)`, turning tensors (and `None`) into `const DLTensor*` (NULL), and raises
    `UnirewardError` on a failing status. The caller appends the stream when the export takes one."""
    converted = [_dlpack.ref(a) if a is None or isinstance(a, torch.Tensor) else a for a in args]
    _lib.check(lib, name, getattr(lib, name)(_context, *converted))


def contiguous(*ts):
    """The tensors made contiguous (the C ABI takes row-major tensors only); `None` stays `None`."""
    return [None if t is None else t.contiguous() for t in ts]


def enum_code(kind: str, name: str, names) -> int:
    """The C enum code of `name`: its index in `names` (the header's numbering)."""
    if name not in names:
        raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(names)}")
    return names.index(name)


def declare(name: str, argtypes, restype=ctypes.c_int32) -> None:
    """Declares an export's C signature (without its leading `ur_context*`)."""
    f = getattr(lib, name)
    f.argtypes = [ctypes.c_void_p, *argtypes]
    f.restype = restype
