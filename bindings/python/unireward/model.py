"""`unireward.Model`: a Hugging Face checkpoint loaded by the library (`ur_model_*`) — a Qwen2 decoder or the
LLaVA-OneVision judge, told apart by its config.json — with logits (from token ids, and images and videos for
LLaVA), the gradient of every parameter from a gradient of the logits, and generation with a KV cache.
`Qwen2Model` and `LlavaOnevisionModel` are the same class, refusing a checkpoint of the other architecture."""

import ctypes
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

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
                ("tie_word_embeddings", ctypes.c_int32), ("dtype", DLDataType), ("device", DLDevice),
                ("architecture", ctypes.c_int32), ("reserved2", ctypes.c_int32), ("image_token_id", ctypes.c_int64),
                ("video_token_id", ctypes.c_int64)]  # fmt: skip


class _LoadOptions(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("lenient", ctypes.c_int32), ("check_finite", ctypes.c_int32)]


class _Media(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("kind", ctypes.c_int32), ("pixel_values", ctypes.POINTER(DLTensor)),
                ("height", ctypes.c_uint64), ("width", ctypes.c_uint64), ("path", ctypes.c_char_p),
                ("layout", ctypes.c_int32), ("num_frames", ctypes.c_uint32)]  # fmt: skip


class _GenerationResult(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("finish_reason", ctypes.c_int32), ("num_tokens", ctypes.c_uint64)]


class _GenerationConfig(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("max_new_tokens", ctypes.c_uint32), ("temperature", ctypes.c_float),
                ("top_p", ctypes.c_float), ("seed", ctypes.c_uint64), ("stop_tokens", ctypes.POINTER(ctypes.c_int32)),
                ("num_stop_tokens", ctypes.c_size_t)]  # fmt: skip


def _generation_config(max_new_tokens: int, temperature: float, top_p: float, seed: int,
                       stop_tokens: Optional[Sequence[int]]):  # fmt: skip
    """A `ur_generation_config` and the stop-token array it points to (keep both alive for the call)."""
    if max_new_tokens < 1:
        raise ValueError(f"unireward: max_new_tokens must be at least 1, got {max_new_tokens}")
    stop = list(stop_tokens or [])
    stop_array = (ctypes.c_int32 * max(len(stop), 1))(*stop)
    cfg = lib.ur_generation_config_default()
    cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.seed = max_new_tokens, temperature, top_p, seed
    cfg.stop_tokens = ctypes.cast(stop_array, ctypes.POINTER(ctypes.c_int32))
    cfg.num_stop_tokens = len(stop)
    return cfg, stop_array


declare("ur_model_load_ex", [ctypes.c_char_p, DLDataType, DLDevice, ctypes.POINTER(_LoadOptions), ctypes.POINTER(_P)])
_M = ctypes.POINTER(_Media)
declare("ur_model_forward", [_P, _T, _T, _T, ctypes.c_void_p])
declare("ur_model_forward_ex", [_P, _T, _T, _M, ctypes.c_size_t, _T, ctypes.c_void_p])
declare("ur_model_backward", [_P, _T, ctypes.c_void_p])
declare("ur_model_gradient", [_P, ctypes.c_char_p, _T, ctypes.c_void_p])
_I32 = ctypes.POINTER(ctypes.c_int32)
declare("ur_model_generate_ex", [_P, _I32, ctypes.c_size_t, _M, ctypes.c_size_t, ctypes.POINTER(_GenerationConfig),
                                 _I32, ctypes.c_size_t, ctypes.POINTER(_GenerationResult)])  # fmt: skip
# The calls without a context.
for _name, _args in [("ur_model_get_info", [_P, ctypes.POINTER(_ModelInfo)]),
                     ("ur_model_parameter_count", [_P, ctypes.POINTER(ctypes.c_size_t)]),
                     ("ur_model_parameter_name", [_P, ctypes.c_size_t, ctypes.POINTER(ctypes.c_char_p)]),
                     ("ur_model_parameter_shape", [_P, ctypes.c_size_t, ctypes.POINTER(ctypes.c_int32),
                                                   ctypes.POINTER(ctypes.c_int64), ctypes.c_size_t]),
                     ("ur_model_ignored_count", [_P, ctypes.POINTER(ctypes.c_size_t)]),
                     ("ur_model_ignored_name", [_P, ctypes.c_size_t, ctypes.POINTER(ctypes.c_char_p)]),
                     ("ur_model_placeholder_counts",
                      [_P, _M, ctypes.c_size_t, ctypes.POINTER(ctypes.c_uint64)])]:  # fmt: skip
    getattr(lib, _name).argtypes = _args
    getattr(lib, _name).restype = ctypes.c_int32
lib.ur_model_free.argtypes = [_P]
lib.ur_model_free.restype = None
for _name, _struct in [("ur_generation_config_default", _GenerationConfig), ("ur_load_options_default", _LoadOptions),
                       ("ur_media_default", _Media)]:  # fmt: skip
    getattr(lib, _name).argtypes = []
    getattr(lib, _name).restype = _struct

#: `ur_model_info.architecture` codes, and the `UR_FINISH_*` codes, by index.
ARCHITECTURES = ("qwen2", "llava_onevision")
FINISH_REASONS = ("stop", "max_new_tokens", "context_length")
_LAYOUTS = ("anyres", "square")  # UR_IMAGE_LAYOUT_*

#: An image: a file path, or preprocessed pixel values [tiles, 3, S, S] with the image's (height, width) before
#: preprocessing. A video: a path (a folder of frames or an animated GIF), or frames [F, 3, S, S].
Image = Union[str, os.PathLike, Tuple[Tensor, Tuple[int, int]]]
Video = Union[str, os.PathLike, Tensor]

def _dl_device(device: torch.device) -> DLDevice:
    if device.type == "cpu":
        return DLDevice(_dlpack.KDL_CPU, 0)
    if device.type == "cuda":
        return DLDevice(_dlpack.KDL_CUDA, device.index if device.index is not None else torch.cuda.current_device())
    raise ValueError(f"unireward: device {device} is not supported (cpu or cuda)")


class _MediaArray:
    """The `ur_media` array of a call, keeping the DLTensors and path bytes it points to alive."""

    def __init__(self, device: torch.device, images, videos, image_layout, video_frames: int = 8):
        images, videos = list(images or []), list(videos or [])
        layouts = image_layout if isinstance(image_layout, (list, tuple)) else [image_layout] * len(images)
        if len(layouts) != len(images):
            raise ValueError(f"unireward: image_layout has {len(layouts)} entries for {len(images)} images")
        self._keep = []
        items = [self._image(device, image, layout, i) for i, (image, layout) in enumerate(zip(images, layouts))]
        items += [self._video(device, video, video_frames, i) for i, video in enumerate(videos)]
        self.count = len(items)
        self.array = (_Media * max(self.count, 1))(*items)

    def _path(self, item, path) -> None:
        item.path = os.fsencode(path)
        self._keep.append(item.path)

    def _pixels(self, item, device, pixels: Tensor) -> None:
        dl = _dlpack.dl_tensor(pixels.to(device).contiguous())
        self._keep.append(dl)
        item.pixel_values = ctypes.pointer(dl)

    def _image(self, device, image, layout: str, i: int):
        item = lib.ur_media_default()
        if layout not in _LAYOUTS:
            raise ValueError(f"unireward: image_layout {layout!r} is not one of {', '.join(_LAYOUTS)}")
        item.layout = _LAYOUTS.index(layout)
        if isinstance(image, (str, os.PathLike)):
            self._path(item, image)
        elif isinstance(image, tuple) and len(image) == 2 and isinstance(image[0], Tensor) and len(image[1]) == 2:
            self._pixels(item, device, image[0])
            item.height, item.width = (int(v) for v in image[1])
        else:
            raise TypeError(f"unireward: images[{i}] must be a path or (pixel_values, (height, width)), "
                            f"got {type(image).__name__}")  # fmt: skip
        return item

    def _video(self, device, video, frames: int, i: int):
        item = lib.ur_media_default()
        item.kind = 1  # UR_MEDIA_VIDEO
        if isinstance(video, (str, os.PathLike)):
            if not 1 <= frames < 2**32:
                raise ValueError(f"unireward: video_frames must be at least 1, got {frames}")
            self._path(item, video)
            item.num_frames = frames
        elif isinstance(video, Tensor):
            self._pixels(item, device, video)
        else:
            raise TypeError(f"unireward: videos[{i}] must be a path or frames [F, 3, S, S], got {type(video).__name__}")
        return item

    def pointer(self):
        return ctypes.cast(self.array, _M) if self.count else None


class Model:
    """A checkpoint held by the library, in `dtype` on `device`: a Qwen2 decoder (`Qwen2ForCausalLM` weights) or
    LLaVA-OneVision (`llava_onevision` or `llava_qwen`; `architecture` tells).

    `forward` returns the logits and keeps the pass for one `backward`, which returns the gradient of every
    parameter under the checkpoint's names (a tied model has no `lm_head.weight`: the embedding gradient holds both
    shares) and of the language model's input embeddings (`"inputs_embeds"`). `lenient=True` loads a checkpoint
    holding tensors the model does not use (listed in `ignored`); `check_finite=True` refuses NaN or infinite
    weights. Not thread-safe: use a model from one thread at a time.
    """

    #: The architecture this class insists on (`None`: any).
    _ARCHITECTURE = None

    def __init__(self, path, dtype: torch.dtype = torch.float32, device: Union[str, torch.device] = "cpu",
                 lenient: bool = False, check_finite: bool = False):  # fmt: skip
        code_bits = _dlpack._DTYPES.get(dtype)
        if code_bits is None or not dtype.is_floating_point:
            raise TypeError(f"unireward: model dtype {dtype} is not supported (float32, bfloat16, float16)")
        self.device = torch.device(device)
        self.dtype = dtype
        self.path = path
        options = lib.ur_load_options_default()
        options.lenient, options.check_finite = int(lenient), int(check_finite)
        handle = _P()
        call("ur_model_load_ex", str(path).encode(), DLDataType(*code_bits, 1), _dl_device(self.device),
             ctypes.byref(options), ctypes.byref(handle))  # fmt: skip
        self._handle = handle
        info = _ModelInfo(struct_size=ctypes.sizeof(_ModelInfo))
        check(lib, "ur_model_get_info", lib.ur_model_get_info(handle, ctypes.byref(info)))
        #: "qwen2" or "llava_onevision".
        self.architecture = ARCHITECTURES[info.architecture]
        if self._ARCHITECTURE is not None and self.architecture != self._ARCHITECTURE:
            self.close()
            raise ValueError(f"unireward: {path} holds a {self.architecture} model, not {self._ARCHITECTURE}: "
                             "load it with unireward.Model")  # fmt: skip
        #: The (language) model's sizes: vocab_size, hidden_size, intermediate_size, num_hidden_layers,
        #: num_attention_heads, num_key_value_heads, max_position_embeddings, num_parameters (the whole model's),
        #: tie_word_embeddings, and for LLaVA image_token_id / video_token_id (the placeholder ids).
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
        if self.architecture == "llava_onevision":
            self.config.update(image_token_id=info.image_token_id, video_token_id=info.video_token_id)
        #: (checkpoint name, shape) of every parameter, in a fixed order.
        self.parameters = [self._parameter(i) for i in range(self._parameter_count())]
        #: The stored tensors a lenient load ignored, sorted.
        self.ignored = [self._ignored(i) for i in range(self._ignored_count())]
        self._batch = None

    def _ignored_count(self) -> int:
        count = ctypes.c_size_t()
        check(lib, "ur_model_ignored_count", lib.ur_model_ignored_count(self._handle, ctypes.byref(count)))
        return count.value

    def _ignored(self, index: int) -> str:
        name = ctypes.c_char_p()
        check(lib, "ur_model_ignored_name", lib.ur_model_ignored_name(self._handle, index, ctypes.byref(name)))
        return name.value.decode()

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

    def placeholder_counts(self, images: Optional[Sequence[Image]] = None, videos: Optional[Sequence[Video]] = None,
                           image_layout: Union[str, Sequence[str]] = "anyres",
                           video_frames: int = 8) -> List[int]:  # fmt: skip
        """How many placeholder ids each image, then each video, takes in `input_ids` (its packed feature rows):
        what one `<image>` / `<video>` expands to."""
        media = _MediaArray(self.device, images, videos, image_layout, video_frames)
        counts = (ctypes.c_uint64 * max(media.count, 1))()
        check(lib, "ur_model_placeholder_counts",
              lib.ur_model_placeholder_counts(self._live(), media.pointer(), media.count, counts))  # fmt: skip
        return [int(c) for c in counts[: media.count]]

    def expand_placeholders(self, input_ids: Sequence[int], images: Optional[Sequence[Image]] = None,
                            videos: Optional[Sequence[Video]] = None,
                            image_layout: Union[str, Sequence[str]] = "anyres",
                           video_frames: int = 8) -> List[int]:  # fmt: skip
        """`input_ids` (one sample) with each single image / video placeholder id (`config["image_token_id"]` /
        `["video_token_id"]`, as a tokenizer makes of `<image>` / `<video>`) repeated to its item's count, as
        transformers' processor does."""
        counts = self.placeholder_counts(images, videos, image_layout, video_frames)
        n_images = len(images or [])
        queues = {self.config["image_token_id"]: counts[:n_images], self.config["video_token_id"]: counts[n_images:]}
        found = {k: sum(1 for i in input_ids if i == k) for k in queues}
        for token, queue in queues.items():
            if found[token] != len(queue):
                kind = "image" if token == self.config["image_token_id"] else "video"
                raise ValueError(f"unireward: input_ids hold {found[token]} {kind} placeholders ({token}) for "
                                 f"{len(queue)} {kind}s")  # fmt: skip
        out, taken = [], {k: 0 for k in queues}
        for i in input_ids:
            if i in queues:
                out += [i] * queues[i][taken[i]]
                taken[i] += 1
            else:
                out.append(i)
        return out

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None,
                images: Optional[Sequence[Image]] = None, videos: Optional[Sequence[Video]] = None,
                image_layout: Union[str, Sequence[str]] = "anyres", video_frames: int = 8) -> Tensor:  # fmt: skip
        """The logits [N,T,V] (the model's dtype, on its device) of `input_ids` [N,T] with `attention_mask` [N,T]
        (nonzero = a real token; `None`: every token is real). Keeps the pass for one `backward`.

        LLaVA-OneVision: `images` and `videos` (see `Image`, `Video`) fill the placeholders of `input_ids` in order,
        each kind on its own, over the batch; each item needs as many placeholders as `placeholder_counts` says.
        Image files are preprocessed with the checkpoint's preprocessor_config.json in `image_layout` ("anyres" for
        an image alone in its sample, "square" for one of several; one value or one per image); `video_frames`
        frames are sampled evenly from each video file."""
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
        media = _MediaArray(self.device, images, videos, image_layout, video_frames)
        self._batch = None
        if media.count:
            call("ur_model_forward_ex", self._live(), ids, mask, media.pointer(), media.count, logits,
                 stream_of(logits))  # fmt: skip
        else:
            call("ur_model_forward", self._live(), ids, mask, logits, stream_of(logits))
        self._batch = tuple(ids.shape)
        return logits

    __call__ = forward

    def backward(self, grad_logits: Tensor) -> Dict[str, Tensor]:
        """The gradients, from the gradient of a loss with respect to the last `forward`'s logits: every parameter
        under its checkpoint name, and `"inputs_embeds"` [N,T,H]. Consumes the forward pass."""
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
                 top_p: float = 1.0, seed: int = 0, stop_tokens: Optional[Sequence[int]] = None,
                 images: Optional[Sequence[Image]] = None, videos: Optional[Sequence[Video]] = None,
                 image_layout: Union[str, Sequence[str]] = "anyres", video_frames: int = 8,
                 return_finish_reason: bool = False):
        """The new tokens after `prompt_ids` (greedy at temperature 0, else sampled with `top_p` and `seed`); ends
        early after a token of `stop_tokens`, which is kept, or when the context is full. LLaVA-OneVision: `images`
        and `videos` as for `forward` (the prompt holds their expanded placeholders). With `return_finish_reason`,
        returns `(tokens, reason)`, reason one of "stop", "max_new_tokens", "context_length"."""  # fmt: skip
        prompt = (ctypes.c_int32 * max(len(prompt_ids), 1))(*prompt_ids)
        cfg, _stop = _generation_config(max_new_tokens, temperature, top_p, seed, stop_tokens)
        media = _MediaArray(self.device, images, videos, image_layout, video_frames)
        if media.count and self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # generation reads the pixels on its own stream
        out = (ctypes.c_int32 * max_new_tokens)()
        result = _GenerationResult(struct_size=ctypes.sizeof(_GenerationResult))
        check(lib, "ur_model_generate_ex",
              lib.ur_model_generate_ex(_context, self._live(), prompt, len(prompt_ids), media.pointer(), media.count,
                                       ctypes.byref(cfg), out, max_new_tokens, ctypes.byref(result)))  # fmt: skip
        tokens = list(out[: result.num_tokens])
        return (tokens, FINISH_REASONS[result.finish_reason]) if return_finish_reason else tokens


class Qwen2Model(Model):
    """A `Model` that must be a Qwen2 decoder."""

    _ARCHITECTURE = "qwen2"


class LlavaOnevisionModel(Model):
    """A `Model` that must be LLaVA-OneVision (either checkpoint layout)."""

    _ARCHITECTURE = "llava_onevision"
