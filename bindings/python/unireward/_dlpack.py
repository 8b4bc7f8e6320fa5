"""ctypes mirrors of DLPack's `DLDevice`, `DLDataType` and `DLTensor` (include/dlpack/dlpack.h), built straight
from torch tensors: no copy, the struct points at the tensor's memory."""

import ctypes

import torch

# DLDeviceType codes.
KDL_CPU = 1
KDL_CUDA = 2
# DLDataTypeCode codes.
KDL_INT = 0
KDL_FLOAT = 2
KDL_BFLOAT = 4


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


_DTYPES = {
    torch.float32: (KDL_FLOAT, 32),
    torch.float16: (KDL_FLOAT, 16),
    torch.bfloat16: (KDL_BFLOAT, 16),
    torch.int32: (KDL_INT, 32),
    torch.int64: (KDL_INT, 64),
}


def dl_tensor(t: torch.Tensor) -> DLTensor:
    """A `DLTensor` viewing `t`, which must be contiguous (the wrappers call `.contiguous()` first).

    The struct keeps its shape and stride arrays alive (as Python attributes); `t` must outlive every use of it.
    """
    if not t.is_contiguous():
        raise ValueError("unireward: tensors must be contiguous (call .contiguous())")
    code_bits = _DTYPES.get(t.dtype)
    if code_bits is None:
        raise TypeError(f"unireward: dtype {t.dtype} is not supported (float32, bfloat16, float16, int32, int64)")
    if t.device.type == "cpu":
        device = DLDevice(KDL_CPU, 0)
    elif t.device.type == "cuda":
        device = DLDevice(KDL_CUDA, t.device.index if t.device.index is not None else torch.cuda.current_device())
    else:
        raise ValueError(f"unireward: device {t.device} is not supported (cpu or cuda)")
    ndim = t.dim()
    shape = (ctypes.c_int64 * max(ndim, 1))(*t.shape)
    strides = (ctypes.c_int64 * max(ndim, 1))(*t.stride())
    dl = DLTensor(
        ctypes.c_void_p(t.data_ptr() or None),
        device,
        ndim,
        DLDataType(code_bits[0], code_bits[1], 1),
        ctypes.cast(shape, ctypes.POINTER(ctypes.c_int64)),
        ctypes.cast(strides, ctypes.POINTER(ctypes.c_int64)),
        0,
    )
    dl._keep = (shape, strides, t)
    return dl


def ref(t):
    """`ctypes.byref` of the `DLTensor` of `t`, or NULL for `None`."""
    return None if t is None else ctypes.byref(dl_tensor(t))
