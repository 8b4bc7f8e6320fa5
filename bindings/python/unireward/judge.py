"""`unireward.Judge`: a UnifiedReward judge checkpoint held by the library (`ur_judge_*`) — one-pass pairwise
verdicts and pointwise scores of the four tasks, one at a time or batched (`judge_many`); reasoned judgments
(`reasoned`: the answer generated and parsed); users' task templates (`set_template`).

Each image or video (a generation task's candidate, an understanding task's `images` / `videos`) is a file path
(an image file, or a video as a folder of frames or an animated GIF, decoded by the library) or 8-bit RGB pixels in
memory: a PIL image (converted to RGB), a uint8 numpy array or torch tensor `H x W x 3` (an image) or
`F x H x W x 3` (a video: all its frames, sampled by the judge as a video file's are), or for a video a list of
frames (PIL images or `H x W x 3` arrays/tensors of one size). Pixels are judged exactly as the same pixels decoded
from a file. Float tensors (e.g. torchvision's `C x H x W` in [0, 1]) are refused rather than guessed at: convert
them with `(x * 255).round().to(torch.uint8).permute(1, 2, 0)` if that is what they hold. Everything is preprocessed
by the library with the checkpoint's preprocessor_config.json."""

import ctypes
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

import torch

from . import _dlpack
from ._c import call, declare, lib
from ._dlpack import DLDataType, DLDevice
from ._lib import check
from .model import _dl_device, _GenerationConfig, _generation_config

_P = ctypes.c_void_p  # ur_judge*

#: Task names by `UR_TASK_*` code ("image-generation" is accepted for "image_generation").
TASKS = ("image_generation", "image_understanding", "video_generation", "video_understanding")
#: Modes by `UR_JUDGE_PAIRWISE` / `UR_JUDGE_POINTWISE` code.
MODES = ("pairwise", "pointwise")
#: `ur_judge_result.verdict` codes 0, 1, 2 ("A": the first candidate given is better).
VERDICTS = ("A", "B", "tie")
#: `ur_judge_reasoning.parse_status` codes 0 to 3.
PARSE_STATUSES = ("ok", "unparsable", "out_of_scale", "scale_mismatch")
_TEXT, _IMAGE, _VIDEO = 0, 1, 2  # UR_JUDGE_TEXT, UR_JUDGE_IMAGE, UR_JUDGE_VIDEO
_PIXELS = {_IMAGE: 3, _VIDEO: 4}  # UR_JUDGE_IMAGE_PIXELS, UR_JUDGE_VIDEO_PIXELS, by the kind of their files

Path = Union[str, os.PathLike]
#: An image or video: a path, a PIL image, a uint8 numpy array or torch tensor (H x W x 3, or F x H x W x 3 for a
#: video), or a video's list of frames.
Media = object


class _JudgeItem(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int32), ("reserved", ctypes.c_int32), ("value", ctypes.c_void_p)]


class _JudgePixels(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("reserved", ctypes.c_uint32), ("data", ctypes.c_void_p),
                ("num_frames", ctypes.c_uint64), ("height", ctypes.c_uint64), ("width", ctypes.c_uint64)]  # fmt: skip


class _JudgeContext(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("reserved", ctypes.c_uint32),
                ("field_names", ctypes.POINTER(ctypes.c_char_p)), ("field_values", ctypes.POINTER(ctypes.c_char_p)),
                ("num_fields", ctypes.c_size_t), ("media", ctypes.POINTER(_JudgeItem)),
                ("num_media", ctypes.c_size_t)]  # fmt: skip


class _JudgeRequest(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("task", ctypes.c_int32), ("mode", ctypes.c_int32),
                ("reserved", ctypes.c_int32), ("context", ctypes.POINTER(_JudgeContext)),
                ("candidates", ctypes.POINTER(_JudgeItem)), ("num_candidates", ctypes.c_size_t)]  # fmt: skip


class _JudgeResult(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("verdict", ctypes.c_int32), ("num_probs", ctypes.c_uint64),
                ("score", ctypes.c_float), ("argmax_score", ctypes.c_float),
                ("position_consistent", ctypes.c_int32), ("reserved", ctypes.c_int32),
                ("prompt_tokens", ctypes.c_uint64), ("seconds", ctypes.c_double)]  # fmt: skip


class _JudgeBatchInfo(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("reserved", ctypes.c_uint32), ("prefill_tokens", ctypes.c_uint64),
                ("prefill_tokens_saved", ctypes.c_uint64), ("seconds", ctypes.c_double)]  # fmt: skip


class _JudgeReasoning(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("parse_status", ctypes.c_int32), ("parsed_verdict", ctypes.c_int32),
                ("reserved", ctypes.c_int32), ("parsed_score", ctypes.c_double), ("generated_tokens", ctypes.c_uint64),
                ("reasoning_tokens", ctypes.c_uint64), ("text", ctypes.c_char_p), ("text_len", ctypes.c_uint64),
                ("parse_error", ctypes.c_char_p)]  # fmt: skip


class _JudgeTemplate(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("task", ctypes.c_int32), ("mode", ctypes.c_int32),
                ("reserved", ctypes.c_int32), ("path", ctypes.c_char_p), ("json", ctypes.c_char_p)]  # fmt: skip


_I = ctypes.POINTER(_JudgeItem)
_C = ctypes.POINTER(_JudgeContext)
_F = ctypes.POINTER(ctypes.c_float)
_R = ctypes.POINTER(_JudgeResult)
declare("ur_judge_load", [ctypes.c_char_p, DLDataType, DLDevice, ctypes.POINTER(_P)])
declare("ur_judge_pairwise", [_P, ctypes.c_int32, _C, _I, _I, _F, ctypes.c_size_t, _R])
declare("ur_judge_pointwise", [_P, ctypes.c_int32, _C, _I, _F, ctypes.c_size_t, _R])
declare("ur_judge_many", [_P, ctypes.POINTER(_JudgeRequest), ctypes.c_size_t, _F, ctypes.c_size_t, _R,
                          ctypes.POINTER(_JudgeBatchInfo)])  # fmt: skip
declare("ur_judge_reasoned", [_P, ctypes.POINTER(_JudgeRequest), ctypes.POINTER(_GenerationConfig), _F,
                              ctypes.c_size_t, _R, ctypes.POINTER(_JudgeReasoning)])  # fmt: skip
lib.ur_judge_num_probs.argtypes = [_P, ctypes.c_int32, ctypes.c_int32, ctypes.POINTER(ctypes.c_size_t)]
lib.ur_judge_num_probs.restype = ctypes.c_int32
lib.ur_judge_set_template.argtypes = [_P, ctypes.POINTER(_JudgeTemplate)]
lib.ur_judge_set_template.restype = ctypes.c_int32
lib.ur_judge_free.argtypes = [_P]
lib.ur_judge_free.restype = None
for _name, _struct in [("ur_judge_context_default", _JudgeContext), ("ur_judge_request_default", _JudgeRequest),
                       ("ur_judge_pixels_default", _JudgePixels),
                       ("ur_judge_template_default", _JudgeTemplate)]:  # fmt: skip
    getattr(lib, _name).argtypes = []
    getattr(lib, _name).restype = _struct


@dataclass
class JudgeResult:
    """A judgment. `probs`: pairwise `[A better, B better, tie]`, position-debiased over both orders (the tie's 0
    for templates without a tie phrase); pointwise one probability per score value of the task's scale, lowest
    first. `verdict` ("A", "B", "tie") and `position_consistent` (both orders pick the same) are pairwise only;
    `score` (expected) and `argmax_score` (most probable value) pointwise only. `seconds`: in a batch, the batch's
    time shared equally by its requests."""

    probs: List[float]
    verdict: Optional[str]
    score: Optional[float]
    argmax_score: Optional[float]
    position_consistent: Optional[bool]
    prompt_tokens: int
    seconds: float


@dataclass
class ReasonedResult(JudgeResult):
    """A reasoned judgment (`Judge.reasoned`): the answer `text` generated and what the parser read in it —
    `parse_status` "ok", "unparsable" (no verdict, no score: never a score of 0), "out_of_scale" or
    "scale_mismatch", `parsed_verdict` ("A", "B", "tie"; pairwise, parsed), `parsed_score` (pointwise: the score
    stated, also out of the scale; None when none was read), `parse_error` (None when parsed) — and, in the
    `JudgeResult` fields, the one-pass probabilities of the final verdict or score given the generated reasoning
    (pairwise: that one order's, `position_consistent` None). `reasoning_tokens` of the `generated_tokens` are the
    reasoning the probabilities are conditioned on."""

    text: str
    parse_status: str
    parsed_verdict: Optional[str]
    parsed_score: Optional[float]
    parse_error: Optional[str]
    generated_tokens: int
    reasoning_tokens: int


@dataclass
class JudgeRequest:
    """One judgment of a `judge_many` batch: `candidates` (two for "pairwise", one for "pointwise") are images or
    videos (paths or pixels, see the module) for generation tasks and response texts for understanding tasks; the
    context is `caption` (generation), `question` and `images` / `videos` (understanding), and any other template
    `fields`."""

    task: str
    mode: str
    candidates: Sequence[Media]
    caption: Optional[str] = None
    question: Optional[str] = None
    images: Sequence[Media] = ()
    videos: Sequence[Media] = ()
    fields: Dict[str, str] = field(default_factory=dict)


def _task_code(task: str) -> int:
    name = str(task).strip().replace("-", "_")
    if name not in TASKS:
        raise ValueError(f"unireward: unknown task {task!r}; known: {', '.join(TASKS)}")
    return TASKS.index(name)


def _mode_code(mode: str) -> int:
    if mode not in MODES:
        raise ValueError(f"unireward: unknown mode {mode!r}; known: {', '.join(MODES)}")
    return MODES.index(mode)


_ACCEPTED = "a path, a PIL image, or a uint8 numpy array or torch tensor"


def _pixels(what: str, value, video: bool) -> torch.Tensor:
    """`value`'s RGB pixels as a contiguous uint8 CPU tensor, `F x H x W x 3` (F = 1 for an image)."""
    pil = sys.modules.get("PIL.Image")
    np = sys.modules.get("numpy")
    if pil is not None and isinstance(value, pil.Image):
        rgb = value.convert("RGB")
        t = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(rgb.height, rgb.width, 3)
    elif np is not None and isinstance(value, np.ndarray):
        if value.dtype != np.uint8:
            raise TypeError(f"unireward: {what} is a numpy array of {value.dtype}; the judge takes uint8 RGB pixels")
        t = torch.from_numpy(np.ascontiguousarray(value))
    elif isinstance(value, torch.Tensor):
        if value.dtype != torch.uint8:
            raise TypeError(f"unireward: {what} is a {value.dtype} tensor; the judge takes uint8 RGB pixels "
                            "(H x W x 3): convert a float C x H x W tensor in [0, 1] with "
                            "(x * 255).round().to(torch.uint8).permute(1, 2, 0)")  # fmt: skip
        t = value.detach().cpu()
    elif video and isinstance(value, (list, tuple)) and value:
        frames = [_pixels(f"{what}[{i}]", f, False)[0] for i, f in enumerate(value)]
        if any(f.shape != frames[0].shape for f in frames):
            sizes = sorted({tuple(f.shape[:2]) for f in frames})
            raise ValueError(f"unireward: {what}'s frames differ in size (H, W: {sizes}); give frames of one size")
        return torch.stack(frames)
    else:
        kind = "an F x H x W x 3 video, or a list of frames" if video else "an H x W x 3 image"
        raise TypeError(f"unireward: {what} must be {_ACCEPTED} ({kind}), got {type(value).__name__}")
    want = 4 if video else 3
    if t.dim() != want or t.shape[-1] != 3 or 0 in t.shape:
        layout = "F x H x W x 3" if video else "H x W x 3"
        raise ValueError(f"unireward: {what} has shape {tuple(t.shape)}; the judge takes {layout} RGB pixels "
                         "(channels last, none of size 0)")  # fmt: skip
    return (t if video else t.unsqueeze(0)).contiguous()


def _media(what: str, value, kind: int, keep: list) -> "_JudgeItem":
    """The C item of an image or video (`kind` `_IMAGE` / `_VIDEO`): its path, or its pixels (kept alive in `keep`,
    with the struct that points to them)."""
    if isinstance(value, (str, os.PathLike)):
        path = ctypes.c_char_p(os.fsencode(value))
        keep.append(path)
        return _JudgeItem(kind, 0, ctypes.cast(path, ctypes.c_void_p).value)
    t = _pixels(what, value, kind == _VIDEO)
    pixels = lib.ur_judge_pixels_default()
    pixels.data, (pixels.num_frames, pixels.height, pixels.width) = t.data_ptr(), t.shape[:3]
    keep += [t, pixels]
    return _JudgeItem(_PIXELS[kind], 0, ctypes.addressof(pixels))


class _Request:
    """The C structs of one request, keeping every buffer they point to alive."""

    def __init__(self, request: JudgeRequest):
        self.task = _task_code(request.task)
        mode = _mode_code(request.mode)
        fields = dict(request.fields)
        for name, value in (("caption", request.caption), ("question", request.question)):
            if value is not None:
                fields[name] = value
        names = [k.encode() for k in fields]
        values = [str(v).encode() for v in fields.values()]
        self.names = (ctypes.c_char_p * max(len(names), 1))(*names)
        self.values = (ctypes.c_char_p * max(len(values), 1))(*values)
        self.keep = []  # the paths, pixels and pixel structs the items point to
        media = [_media(f"images[{i}]", m, _IMAGE, self.keep) for i, m in enumerate(request.images)]
        media += [_media(f"videos[{i}]", m, _VIDEO, self.keep) for i, m in enumerate(request.videos)]
        self.media = (_JudgeItem * max(len(media), 1))(*media)
        self.context = lib.ur_judge_context_default()
        self.context.field_names, self.context.field_values = self.names, self.values
        self.context.num_fields = len(names)
        self.context.media, self.context.num_media = self.media, len(media)
        kind = {0: _IMAGE, 2: _VIDEO}.get(self.task, _TEXT)
        items = []
        for i, c in enumerate(request.candidates):
            if kind == _TEXT:
                if not isinstance(c, str):
                    raise TypeError(f"unireward: candidates[{i}] of {TASKS[self.task]} is a response text, "
                                    f"got {type(c).__name__}")  # fmt: skip
                text = ctypes.c_char_p(c.encode())
                self.keep.append(text)
                items.append(_JudgeItem(kind, 0, ctypes.cast(text, ctypes.c_void_p).value))
            else:
                items.append(_media(f"candidates[{i}]", c, kind, self.keep))
        self.candidates = (_JudgeItem * max(len(items), 1))(*items)
        self.c = lib.ur_judge_request_default()
        self.c.task, self.c.mode = self.task, mode
        self.c.context = ctypes.pointer(self.context)
        self.c.candidates, self.c.num_candidates = self.candidates, len(items)


def _result_fields(r: _JudgeResult, probs) -> dict:
    pairwise = r.verdict >= 0
    return dict(
        probs=[float(p) for p in probs[: r.num_probs]],
        verdict=VERDICTS[r.verdict] if pairwise else None,
        score=None if pairwise else float(r.score),
        argmax_score=None if pairwise else float(r.argmax_score),
        position_consistent=bool(r.position_consistent) if pairwise and r.position_consistent >= 0 else None,
        prompt_tokens=int(r.prompt_tokens),
        seconds=float(r.seconds),
    )


def _text_at(why: _JudgeReasoning) -> str:
    """The answer: `text_len` bytes read at the address (the text may hold a NUL the model generated)."""
    address = ctypes.c_void_p.from_buffer(why, _JudgeReasoning.text.offset).value
    return ctypes.string_at(address, why.text_len).decode()


def _reasoned_result(r: _JudgeResult, probs, why: _JudgeReasoning) -> ReasonedResult:
    parsed = why.parse_status == 0
    score = None if math.isnan(why.parsed_score) else float(why.parsed_score)
    return ReasonedResult(
        **_result_fields(r, probs),
        text=_text_at(why),
        parse_status=PARSE_STATUSES[why.parse_status],
        parsed_verdict=VERDICTS[why.parsed_verdict] if why.parsed_verdict >= 0 else None,
        parsed_score=score,
        parse_error=None if parsed else why.parse_error.decode(),
        generated_tokens=int(why.generated_tokens),
        reasoning_tokens=int(why.reasoning_tokens),
    )


class Judge:
    """A judge checkpoint (LLaVA-OneVision, or a text-only Qwen2) with its tokenizer, chat template, image processor
    and the built-in task templates, in `dtype` on `device`. Generation tasks ("image_generation",
    "video_generation") judge images or videos against a `caption`; understanding tasks ("image_understanding",
    "video_understanding") judge response texts to a `question` about `images` / `videos`. Images and videos are
    paths or pixels in memory (PIL images, uint8 numpy arrays or torch tensors, see the module). Not thread-safe."""

    def __init__(self, path: Path, dtype: torch.dtype = torch.float32, device: Union[str, torch.device] = "cpu"):
        code_bits = _dlpack._DTYPES.get(dtype)
        if code_bits is None or not dtype.is_floating_point:
            raise TypeError(f"unireward: judge dtype {dtype} is not supported (float32, bfloat16, float16)")
        self.path, self.dtype, self.device = path, dtype, torch.device(device)
        handle = _P()
        call("ur_judge_load", os.fsencode(path), DLDataType(*code_bits, 1), _dl_device(self.device),
             ctypes.byref(handle))  # fmt: skip
        self._handle = handle

    def close(self) -> None:
        """Frees the judge now (also done when it is garbage-collected)."""
        if getattr(self, "_handle", None) is not None:
            lib.ur_judge_free(self._handle)
            self._handle = None

    def __del__(self):
        self.close()

    def _live(self):
        if self._handle is None:
            raise RuntimeError("unireward: the judge was closed")
        return self._handle

    def _num_probs(self, task: int, mode: int) -> int:
        n = ctypes.c_size_t()
        check(lib, "ur_judge_num_probs", lib.ur_judge_num_probs(self._live(), task, mode, ctypes.byref(n)))
        return n.value

    def pairwise(self, task: str, a, b, caption: Optional[str] = None, question: Optional[str] = None,
                 images: Sequence[Media] = (), videos: Sequence[Media] = (),
                 fields: Optional[Dict[str, str]] = None) -> JudgeResult:  # fmt: skip
        """Which of `a` and `b` is better (or a tie), from both orders in one pass."""
        return self.judge_many([JudgeRequest(task, "pairwise", [a, b], caption, question, images, videos,
                                             dict(fields or {}))])[0]  # fmt: skip

    def pointwise(self, task: str, candidate, caption: Optional[str] = None, question: Optional[str] = None,
                  images: Sequence[Media] = (), videos: Sequence[Media] = (),
                  fields: Optional[Dict[str, str]] = None) -> JudgeResult:  # fmt: skip
        """The score of `candidate` on the task's scale (the probability of each value, their expectation and the
        most probable value), in one pass."""
        return self.judge_many([JudgeRequest(task, "pointwise", [candidate], caption, question, images, videos,
                                             dict(fields or {}))])[0]  # fmt: skip

    def judge_many(self, requests: Sequence[JudgeRequest], return_info: bool = False):
        """One-pass judgments of many requests in one batch (prompts seeing the same media share their prefill).
        With `return_info`, returns `(results, info)`, info a dict of the batch's `prefill_tokens`,
        `prefill_tokens_saved` and `seconds`."""
        if not requests:
            raise ValueError("unireward: judge_many needs at least one request")
        built = [_Request(r) for r in requests]
        array = (_JudgeRequest * len(built))(*[r.c for r in built])
        n = len(built)
        capacity = max(self._num_probs(r.c.task, r.c.mode) for r in built)
        probs = (ctypes.c_float * (n * capacity))()
        results = (_JudgeResult * n)(*[_JudgeResult(struct_size=ctypes.sizeof(_JudgeResult)) for _ in built])
        info = _JudgeBatchInfo(struct_size=ctypes.sizeof(_JudgeBatchInfo))
        call("ur_judge_many", self._live(), array, n, probs, capacity, results, ctypes.byref(info))
        out = [JudgeResult(**_result_fields(r, probs[i * capacity : (i + 1) * capacity]))
               for i, r in enumerate(results)]  # fmt: skip
        if return_info:
            stats = {"prefill_tokens": info.prefill_tokens, "prefill_tokens_saved": info.prefill_tokens_saved,
                     "seconds": info.seconds}  # fmt: skip
            return out, stats
        return out

    def reasoned(self, request: JudgeRequest, max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int = 0, stop_tokens: Optional[Sequence[int]] = None) -> ReasonedResult:  # fmt: skip
        """A reasoned judgment of `request` (pairwise or pointwise, its media in any form the one-pass calls take):
        the answer generated (greedy at temperature 0, else sampled with `top_p` and `seed`; the checkpoint's
        end-of-turn tokens and `stop_tokens` end it) in the forward order, parsed per the task's template, and the
        one-pass probabilities of the final verdict or score given the generated reasoning."""
        built = _Request(request)
        cfg, _stop = _generation_config(max_new_tokens, temperature, top_p, seed, stop_tokens)
        capacity = self._num_probs(built.c.task, built.c.mode)
        probs = (ctypes.c_float * capacity)()
        result = _JudgeResult(struct_size=ctypes.sizeof(_JudgeResult))
        why = _JudgeReasoning(struct_size=ctypes.sizeof(_JudgeReasoning))
        call("ur_judge_reasoned", self._live(), ctypes.byref(built.c), ctypes.byref(cfg), probs, capacity,
             ctypes.byref(result), ctypes.byref(why))  # fmt: skip
        return _reasoned_result(result, probs, why)

    def set_template(self, task: str, mode: str, path: Optional[Path] = None, json: Optional[str] = None) -> None:
        """Judges `task` x `mode` with the user's template from now on: a file at `path`, or its JSON text `json`
        (exactly one), in the schema of the repository's templates/*.json. Raises, leaving the judge unchanged, when
        it cannot be read, is invalid, or is another task's or mode's."""
        template = lib.ur_judge_template_default()
        template.task, template.mode = _task_code(task), _mode_code(mode)
        template.path = None if path is None else os.fsencode(path)
        template.json = None if json is None else json.encode()
        check(lib, "ur_judge_set_template", lib.ur_judge_set_template(self._live(), ctypes.byref(template)))
