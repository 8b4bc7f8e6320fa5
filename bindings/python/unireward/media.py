"""`ImageProcessor`: LLaVA-OneVision's image preprocessing (the library's `media::ImageProcessor`, equal to
transformers' `LlavaOnevisionImageProcessor` with PIL's resampling) for images decoded in Python."""

import ctypes

import torch

from ._c import _context, lib
from ._lib import check

# The `UR_IMAGE_LAYOUT_*` codes of include/unireward.h, by index.
LAYOUTS = ("anyres", "square")

lib.ur_image_processor_create.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
lib.ur_image_processor_create.restype = ctypes.c_int32
lib.ur_image_processor_free.argtypes = [ctypes.c_void_p]
lib.ur_image_processor_free.restype = None
_U8P, _F32P, _U64P = (ctypes.POINTER(t) for t in (ctypes.c_uint8, ctypes.c_float, ctypes.c_uint64))
lib.ur_image_processor_output_shape.argtypes = [
    ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int32, _U64P]
lib.ur_image_processor_output_shape.restype = ctypes.c_int32
lib.ur_image_processor_run.argtypes = [
    ctypes.c_void_p, _U8P, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int32, _F32P, ctypes.c_uint64]
lib.ur_image_processor_run.restype = ctypes.c_int32


class ImageProcessor:
    """A checkpoint's image preprocessing, read from its `preprocessor_config.json` (`None`: transformers'
    defaults). Calling it on an image gives the vision tower's pixel values."""

    def __init__(self, config_path=None):
        handle = ctypes.c_void_p()
        path = None if config_path is None else str(config_path).encode()
        check(lib, "ur_image_processor_create", lib.ur_image_processor_create(_context, path, ctypes.byref(handle)))
        self._handle = handle

    def output_shape(self, height: int, width: int, layout: str = "anyres") -> tuple:
        """The shape `[patches, 3, H, W]` a `height x width` image gets in `layout`."""
        shape = (ctypes.c_uint64 * 4)()
        status = lib.ur_image_processor_output_shape(self._handle, height, width, _layout(layout), shape)
        check(lib, "ur_image_processor_output_shape", status)
        return tuple(int(d) for d in shape)

    def __call__(self, image: torch.Tensor, layout: str = "anyres") -> torch.Tensor:
        """`image`: a CPU `uint8` tensor `[height, width, 3]` (RGB, as `torch.from_numpy(np.asarray(pil_image))`
        gives; convert float images with `(x * 255).round().to(torch.uint8)`). Returns float32 `[patches, 3, H, W]`:
        with "anyres" (an image alone in its sample) the whole image resized to one tile, then the tiles of the best
        grid resolution; with "square" (one of several images in a sample) one patch."""
        if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.dim() != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be a uint8 tensor [height, width, 3], got {_describe(image)}")
        if image.device.type != "cpu":
            raise ValueError(f"image must be on the CPU, got {image.device}")
        image = image.contiguous()
        height, width = image.shape[0], image.shape[1]
        out = torch.empty(self.output_shape(height, width, layout), dtype=torch.float32)
        pixels, values = ctypes.cast(image.data_ptr(), _U8P), ctypes.cast(out.data_ptr(), _F32P)
        status = lib.ur_image_processor_run(self._handle, pixels, height, width, _layout(layout), values, out.numel())
        check(lib, "ur_image_processor_run", status)
        return out

    def __del__(self):
        handle, self._handle = getattr(self, "_handle", None), None
        if handle:
            lib.ur_image_processor_free(handle)


def _layout(name: str) -> int:
    if name not in LAYOUTS:
        raise ValueError(f"unknown layout {name!r}; known: {', '.join(LAYOUTS)}")
    return LAYOUTS.index(name)


def _describe(image) -> str:
    if isinstance(image, torch.Tensor):
        return f"{image.dtype} {list(image.shape)}"
    return type(image).__name__
