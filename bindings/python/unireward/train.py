"""`unireward.SftTrainer`: the library's SFT trainer (`ur_sft_trainer_*`) stepped on the caller's batches of
conversation records, so a Python loop drives training exactly as `unireward train-judge` does — the same records
in the same batches give bitwise the same losses and checkpoints."""

import ctypes
import json
import math
import os
import pathlib
from typing import Dict, Optional, Sequence, Union

import torch

from ._c import _context, lib
from ._dlpack import DLDevice
from ._lib import check
from .model import _dl_device
from .optim import SCHEDULES

_P = ctypes.c_void_p  # ur_sft_trainer*


class _Config(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("schedule", ctypes.c_int32), ("lr", ctypes.c_double),
                ("weight_decay", ctypes.c_double), ("max_grad_norm", ctypes.c_double),
                ("warmup_ratio", ctypes.c_double), ("total_steps", ctypes.c_uint64), ("max_len", ctypes.c_uint64),
                ("media_folder", ctypes.c_char_p), ("freeze", ctypes.POINTER(ctypes.c_char_p)),
                ("num_freeze", ctypes.c_size_t), ("device", DLDevice), ("video_frames", ctypes.c_uint32),
                ("reserved", ctypes.c_uint32)]  # fmt: skip


class _Metrics(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("reserved", ctypes.c_uint32), ("step", ctypes.c_uint64),
                ("loss", ctypes.c_double), ("tokens", ctypes.c_uint64), ("grad_norm", ctypes.c_double),
                ("lr", ctypes.c_double)]  # fmt: skip


lib.ur_sft_trainer_config_default.argtypes = []
lib.ur_sft_trainer_config_default.restype = _Config
lib.ur_sft_trainer_create.argtypes = [_P, ctypes.c_char_p, ctypes.POINTER(_Config), ctypes.POINTER(_P)]
lib.ur_sft_trainer_step.argtypes = [_P, _P, ctypes.POINTER(ctypes.c_char_p), ctypes.c_size_t, ctypes.c_size_t,
                                    ctypes.POINTER(_Metrics)]  # fmt: skip
lib.ur_sft_trainer_save.argtypes = [_P, _P, ctypes.c_char_p]
for _name in ("ur_sft_trainer_create", "ur_sft_trainer_step", "ur_sft_trainer_save"):
    getattr(lib, _name).restype = ctypes.c_int32
lib.ur_sft_trainer_free.argtypes = [_P]
lib.ur_sft_trainer_free.restype = None

Record = Union[str, dict]


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**63:
        raise ValueError(f"unireward.SftTrainer: `{name}` must be an integer >= 1, got {value!r}")
    return value


class SftTrainer:
    """Supervised fine-tuning of the checkpoint in `model_dir` (a Qwen2 or LLaVA-OneVision judge: config, weights,
    tokenizer files, chat template) in float32 on `device`, with `unireward train-judge`'s recipe and defaults:
    AdamW (`lr`, `weight_decay`), clipping at `max_grad_norm` (`None`: off), the `schedule` ("cosine", "linear" or
    "constant") over `total_steps` optimizer steps after `ceil(total_steps * warmup_ratio)` warm-up steps, records
    of at most `max_len` tokens, parameters named by `freeze` left untrained ("vision", "projector" or a name
    fragment), media paths relative to `media_folder` (default: the current directory), `video_frames` frames a
    video. Not thread-safe."""

    def __init__(self, model_dir: Union[str, os.PathLike], total_steps: int, lr: float = 1e-5,
                 weight_decay: float = 0.0, max_grad_norm: Optional[float] = 1.0, schedule: str = "cosine",
                 warmup_ratio: float = 0.03, max_len: int = 2048, freeze: Sequence[str] = (),
                 media_folder: Optional[Union[str, os.PathLike]] = None, video_frames: int = 8,
                 device: Union[str, torch.device] = "cpu"):  # fmt: skip
        self._handle = None
        config = lib.ur_sft_trainer_config_default()
        config.total_steps = _positive("total_steps", total_steps)
        config.max_len = _positive("max_len", max_len)
        config.video_frames = _positive("video_frames", video_frames)
        if schedule not in SCHEDULES:
            raise ValueError(f"unireward.SftTrainer: `schedule` must be one of {', '.join(SCHEDULES)}, "
                             f"got {schedule!r}")  # fmt: skip
        config.schedule = SCHEDULES.index(schedule)
        for name, value in (("lr", lr), ("weight_decay", weight_decay)):
            if not (math.isfinite(float(value)) and float(value) >= 0):
                raise ValueError(f"unireward.SftTrainer: `{name}` must be finite and >= 0, got {value}")
        if not 0 <= float(warmup_ratio) <= 1:
            raise ValueError(f"unireward.SftTrainer: `warmup_ratio` must be in [0, 1], got {warmup_ratio}")
        if max_grad_norm is not None and not (math.isfinite(float(max_grad_norm)) and float(max_grad_norm) > 0):
            raise ValueError(f"unireward.SftTrainer: `max_grad_norm` must be finite and > 0 (or None), "
                             f"got {max_grad_norm}")  # fmt: skip
        config.lr, config.weight_decay, config.warmup_ratio = float(lr), float(weight_decay), float(warmup_ratio)
        config.max_grad_norm = 0.0 if max_grad_norm is None else float(max_grad_norm)
        if isinstance(freeze, (str, bytes)):
            raise TypeError("unireward.SftTrainer: `freeze` must be a list of names, not one string")
        freeze = [os.fsencode(f) for f in freeze]
        self._freeze = (ctypes.c_char_p * max(len(freeze), 1))(*freeze)
        config.freeze, config.num_freeze = ctypes.cast(self._freeze, ctypes.POINTER(ctypes.c_char_p)), len(freeze)
        self._media_folder = None if media_folder is None else os.fsencode(media_folder)
        config.media_folder = self._media_folder
        self.device = torch.device(device)
        config.device = _dl_device(self.device)
        self.model_dir = pathlib.Path(model_dir)
        self.total_steps = total_steps
        #: Optimizer steps taken (the schedule's position).
        self.steps_done = 0
        handle = _P()
        check(lib, "ur_sft_trainer_create",
              lib.ur_sft_trainer_create(_context, os.fsencode(model_dir), ctypes.byref(config),
                                        ctypes.byref(handle)))  # fmt: skip
        self._handle = handle

    def _live(self):
        if self._handle is None:
            raise RuntimeError("unireward.SftTrainer: the trainer was closed")
        return self._handle

    def step(self, records: Sequence[Record], micro_batch_size: Optional[int] = None) -> Dict[str, float]:
        """One optimizer step on `records` (LLaVA conversation records: dicts, or their JSON text), cut into
        micro-batches of `micro_batch_size` consecutive records (`None`: one micro-batch) whose gradients are
        accumulated — `train-judge --batch-size B --grad-accum K` on the same records in its batches. Every record
        is checked first; a bad one raises `UnirewardError` naming it (`micro_batches[i][j]`) and nothing changes.
        Returns the metrics `train-judge` logs: step, loss (before the update), tokens, grad_norm (`None` without
        clipping) and lr."""
        if isinstance(records, (str, bytes, dict)) or not isinstance(records, Sequence):
            raise TypeError("unireward.SftTrainer.step: `records` must be a list of records (dicts or JSON strings)")
        if not records:
            raise ValueError("unireward.SftTrainer.step: `records` is empty")
        texts = []
        for i, r in enumerate(records):
            if isinstance(r, dict):
                texts.append(json.dumps(r).encode())
            elif isinstance(r, str):
                texts.append(r.encode())
            else:
                raise TypeError(f"unireward.SftTrainer.step: `records[{i}]` must be a dict or a JSON string, "
                                f"got {type(r).__name__}")  # fmt: skip
        size = 0 if micro_batch_size is None else _positive("micro_batch_size", micro_batch_size)
        array = (ctypes.c_char_p * len(texts))(*texts)
        metrics = _Metrics(struct_size=ctypes.sizeof(_Metrics))
        check(lib, "ur_sft_trainer_step",
              lib.ur_sft_trainer_step(_context, self._live(), array, len(texts), size,
                                      ctypes.byref(metrics)))  # fmt: skip
        self.steps_done = metrics.step
        return {
            "step": metrics.step,
            "loss": metrics.loss,
            "tokens": metrics.tokens,
            "grad_norm": None if math.isnan(metrics.grad_norm) else metrics.grad_norm,
            "lr": metrics.lr,
        }

    def save(self, out_dir: Union[str, os.PathLike]) -> pathlib.Path:
        """Writes `out_dir/checkpoint-<step>/` as `train-judge` does (the weights in the source's layout, which
        transformers loads, and the optimizer state; no data-loader position) and returns it."""
        handle = self._live()
        check(lib, "ur_sft_trainer_save", lib.ur_sft_trainer_save(_context, handle, os.fsencode(out_dir)))
        return pathlib.Path(out_dir) / f"checkpoint-{self.steps_done}"

    def close(self) -> None:
        """Frees the trainer now (also done when it is garbage-collected)."""
        if getattr(self, "_handle", None) is not None:
            lib.ur_sft_trainer_free(self._handle)
            self._handle = None

    def __del__(self):
        self.close()
