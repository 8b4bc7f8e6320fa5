"""`unireward.Qwen2Model`: a Qwen2 decoder loaded from a Hugging Face checkpoint by the library (`ur_model_*`), with
logits, the gradient of every parameter from a gradient of the logits, and text generation with a KV cache."""

import ctypes
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor

from . import _dlpack
from ._c import _context, call, declare, lib, stream_of
from ._dlpack import DLDataType, DLDevice, DLTensor
from ._lib import check

_T = ctypes.POINTER(DLTensor)
_P = ctypes.c_void_p  # ur_model*


class _ModelInfo(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("reserved", ctypes.c_uint32), ("vocab_size", ctypes.c_uint64),
                ("hidden_size", ctypes.c_uint64),
                ("intermediate_size", ctypes.c_uint64), ("num_layers", ctypes.c_uint64),
                ("num_attention_heads", ctypes.c_uint64), ("num_key_value_heads", ctypes.c_uint64),
                ("max_position_embeddings", ctypes.c_uint64), ("num_parameters", ctypes.c_uint64),
                ("tie_word_embeddings", ctypes.c_int32), ("dtype", DLDataType), ("device", DLDevice)]  # fmt: skip


class _GenerationConfig(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("max_new_tokens", ctypes.c_uint32), ("temperature", ctypes.c_float),
                ("top_p", ctypes.c_float), ("seed", ctypes.c_uint64), ("stop_tokens", ctypes.POINTER(ctypes.c_int32)),
                ("num_stop_tokens", ctypes.c_size_t)]  # fmt: skip


declare("ur_model_load", [ctypes.c_char_p, DLDataType, DLDevice, ctypes.POINTER(_P)])
declare("ur_model_forward", [_P, _T, _T, _T, ctypes.c_void_p])
declare("ur_model_backward", [_P, _T, ctypes.c_void_p])
declare("ur_model_gradient", [_P, ctypes.c_char_p, _T, ctypes.c_void_p])
_I32 = ctypes.POINTER(ctypes.c_int32)
declare("ur_model_generate", [_P, _I32, ctypes.c_size_t, ctypes.POINTER(_GenerationConfig), _I32, ctypes.c_size_t,
                              ctypes.POINTER(ctypes.c_size_t)])  # fmt: skip
# The calls without a context.
for _name, _args in [("ur_model_get_info", [_P, ctypes.POINTER(_ModelInfo)]),
                     ("ur_model_parameter_count", [_P, ctypes.POINTER(ctypes.c_size_t)]),
                     ("ur_model_parameter_name", [_P, ctypes.c_size_t, ctypes.POINTER(ctypes.c_char_p)]),
                     ("ur_model_parameter_shape", [_P, ctypes.c_size_t, ctypes.POINTER(ctypes.c_int32),
                                                   ctypes.POINTER(ctypes.c_int64), ctypes.c_size_t])]:  # fmt: skip
    getattr(lib, _name).argtypes = _args
    getattr(lib, _name).restype = ctypes.c_int32
lib.ur_model_free.argtypes = [_P]
lib.ur_model_free.restype = None
lib.ur_generation_config_default.argtypes = []
lib.ur_generation_config_default.restype = _GenerationConfig

def _dl_device(device: torch.device) -> DLDevice:
    if device.type == "cpu":
        return DLDevice(_dlpack.KDL_CPU, 0)
    if device.type == "cuda":
        return DLDevice(_dlpack.KDL_CUDA, device.index if device.index is not None else torch.cuda.current_device())
    raise ValueError(f"unireward: device {device} is not supported (cpu or cuda)")


class Qwen2Model:
    """A Qwen2 decoder (`Qwen2ForCausalLM` weights) held by the library, in `dtype` on `device`.

    `forward` returns the logits and keeps the pass for one `backward`, which returns the gradient of every
    parameter (Hugging Face names; a tied model has no `lm_head.weight`: the embedding gradient holds both shares)
    and of the input embeddings (`"inputs_embeds"`). Not thread-safe: use a model from one thread at a time.
    """

    def __init__(self, path, dtype: torch.dtype = torch.float32, device: Union[str, torch.device] = "cpu"):
        code_bits = _dlpack._DTYPES.get(dtype)
        if code_bits is None or not dtype.is_floating_point:
            raise TypeError(f"unireward: model dtype {dtype} is not supported (float32, bfloat16, float16)")
        self.device = torch.device(device)
        self.dtype = dtype
        handle = _P()
        call("ur_model_load", str(path).encode(), DLDataType(*code_bits, 1), _dl_device(self.device),
             ctypes.byref(handle))  # fmt: skip
        self._handle = handle
        info = _ModelInfo(struct_size=ctypes.sizeof(_ModelInfo))
        check(lib, "ur_model_get_info", lib.ur_model_get_info(handle, ctypes.byref(info)))
        #: The model's sizes: vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
        #: num_key_value_heads, max_position_embeddings, num_parameters, tie_word_embeddings.
        self.config = {
            "vocab_size": info.vocab_size,
            "hidden_size": info.hidden_size,
            "intermediate_size": info.intermediate_size,
            "num_hidden_layers": info.num_layers,
            "num_attention_heads": info.num_attention_heads,
            "num_key_value_heads": info.num_key_value_heads,
            "max_position_embeddings": info.max_position_embeddings,
            "num_parameters": info.num_parameters,
            "tie_word_embeddings": bool(info.tie_word_embeddings),
        }
        #: (Hugging Face name, shape) of every parameter, in checkpoint order.
        self.parameters = [self._parameter(i) for i in range(self._parameter_count())]
        self._batch = None

    def _parameter_count(self) -> int:
        count = ctypes.c_size_t()
        check(lib, "ur_model_parameter_count", lib.ur_model_parameter_count(self._handle, ctypes.byref(count)))
        return count.value

    def _parameter(self, index: int):
        name = ctypes.c_char_p()
        check(lib, "ur_model_parameter_name", lib.ur_model_parameter_name(self._handle, index, ctypes.byref(name)))
        rank, dims = ctypes.c_int32(), (ctypes.c_int64 * 4)()
        check(lib, "ur_model_parameter_shape",
                    lib.ur_model_parameter_shape(self._handle, index, ctypes.byref(rank), dims, 4))  # fmt: skip
        return name.value.decode(), tuple(dims[: rank.value])

    def close(self) -> None:
        """Frees the model now (also done when it is garbage-collected)."""
        if getattr(self, "_handle", None) is not None:
            lib.ur_model_free(self._handle)
            self._handle = None

    def __del__(self):
        self.close()

    def _live(self):
        if self._handle is None:
            raise RuntimeError("unireward: the model was closed")
        return self._handle

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        """The logits [N,T,V] (the model's dtype, on its device) of `input_ids` [N,T] with `attention_mask` [N,T]
        (nonzero = a real token; `None`: every token is real). Keeps the pass for one `backward`."""
        ids = input_ids.to(self.device).contiguous()
        mask = None
        if attention_mask is not None:
            mask = attention_mask.to(self.device)
            if mask.dtype not in (torch.int32, torch.int64):  # bool or float masks: nonzero = a real token
                mask = (mask != 0).to(torch.int64)
            mask = mask.contiguous()
        if ids.dim() != 2:
            raise ValueError(f"unireward: input_ids must be [N, T], got shape {tuple(ids.shape)}")
        logits = torch.empty((*ids.shape, self.config["vocab_size"]), dtype=self.dtype, device=self.device)
        self._batch = None
        call("ur_model_forward", self._live(), ids, mask, logits, stream_of(logits))
        self._batch = tuple(ids.shape)
        return logits

    __call__ = forward

    def backward(self, grad_logits: Tensor) -> Dict[str, Tensor]:
        """The gradients, from the gradient of a loss with respect to the last `forward`'s logits: every parameter
        under its Hugging Face name, and `"inputs_embeds"` [N,T,H]. Consumes the forward pass."""
        grad = grad_logits.to(device=self.device, dtype=self.dtype).contiguous()
        handle = self._live()
        call("ur_model_backward", handle, grad, stream_of(grad))
        n, t = self._batch
        shapes = [*self.parameters, ("inputs_embeds", (n, t, self.config["hidden_size"]))]
        grads = {}
        for name, shape in shapes:
            out = torch.empty(shape, dtype=self.dtype, device=self.device)
            call("ur_model_gradient", handle, name.encode(), out, stream_of(out))
            grads[name] = out
        return grads

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int = 64, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0, stop_tokens: Optional[Sequence[int]] = None) -> List[int]:
        """The new tokens after `prompt_ids` (greedy at temperature 0, else sampled with `top_p` and `seed`); ends
        early after a token of `stop_tokens`, which is kept."""  # fmt: skip
        if max_new_tokens < 1:
            raise ValueError(f"unireward: max_new_tokens must be at least 1, got {max_new_tokens}")
        prompt = (ctypes.c_int32 * max(len(prompt_ids), 1))(*prompt_ids)
        stop = list(stop_tokens or [])
        stop_array = (ctypes.c_int32 * max(len(stop), 1))(*stop)
        cfg = lib.ur_generation_config_default()
        cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.seed = max_new_tokens, temperature, top_p, seed
        cfg.stop_tokens = ctypes.cast(stop_array, ctypes.POINTER(ctypes.c_int32))
        cfg.num_stop_tokens = len(stop)
        out, out_len = (ctypes.c_int32 * max_new_tokens)(), ctypes.c_size_t()
        check(lib, "ur_model_generate", lib.ur_model_generate(_context, self._live(), prompt, len(prompt_ids),
                                                               ctypes.byref(cfg), out, max_new_tokens,
                                                               ctypes.byref(out_len)))  # fmt: skip
        return list(out[: out_len.value])
