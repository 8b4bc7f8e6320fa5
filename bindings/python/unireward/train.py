"""`unireward.SftTrainer`, `unireward.DpoTrainer` and `unireward.RewardTrainer`: the library's trainers
(`ur_sft_trainer_*`, `ur_dpo_trainer_*`, `ur_reward_trainer_*`) stepped on the caller's batches of records, so a
Python loop drives training exactly as `unireward train-judge` / `unireward dpo --ref-on-the-fly` / `unireward
train-reward` do — the same records in the same batches give bitwise the same losses and checkpoints."""

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
from .losses import DPO_LOSS_TYPES, _DpoConfig
from .model import _dl_device
from .optim import SCHEDULES

_P = ctypes.c_void_p  # ur_sft_trainer*, ur_dpo_trainer*, ur_reward_trainer*
_STRINGS = ctypes.POINTER(ctypes.c_char_p)


class _Config(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("schedule", ctypes.c_int32), ("lr", ctypes.c_double),
                ("weight_decay", ctypes.c_double), ("max_grad_norm", ctypes.c_double),
                ("warmup_ratio", ctypes.c_double), ("total_steps", ctypes.c_uint64), ("max_len", ctypes.c_uint64),
                ("media_folder", ctypes.c_char_p), ("freeze", _STRINGS), ("num_freeze", ctypes.c_size_t),
                ("device", DLDevice), ("video_frames", ctypes.c_uint32), ("reserved", ctypes.c_uint32),
                ("resume_from", ctypes.c_char_p)]  # fmt: skip


class _SftMetrics(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("reserved", ctypes.c_uint32), ("step", ctypes.c_uint64),
                ("loss", ctypes.c_double), ("tokens", ctypes.c_uint64), ("grad_norm", ctypes.c_double),
                ("lr", ctypes.c_double)]  # fmt: skip


class _DpoMetrics(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("reserved", ctypes.c_uint32), ("step", ctypes.c_uint64),
                ("loss", ctypes.c_double), ("pairs", ctypes.c_uint64), ("tokens", ctypes.c_uint64),
                ("grad_norm", ctypes.c_double), ("lr", ctypes.c_double), ("rewards_chosen", ctypes.c_float),
                ("rewards_rejected", ctypes.c_float), ("rewards_accuracies", ctypes.c_float),
                ("rewards_margins", ctypes.c_float), ("logps_chosen", ctypes.c_float),
                ("logps_rejected", ctypes.c_float)]  # fmt: skip


class _RewardMetrics(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("reserved", ctypes.c_uint32), ("step", ctypes.c_uint64),
                ("loss", ctypes.c_double), ("accuracy", ctypes.c_double), ("rewards_chosen", ctypes.c_double),
                ("rewards_rejected", ctypes.c_double), ("margin", ctypes.c_double), ("groups", ctypes.c_uint64),
                ("tokens", ctypes.c_uint64), ("grad_norm", ctypes.c_double), ("lr", ctypes.c_double)]  # fmt: skip


class _RewardLoss(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("loss", ctypes.c_int32),
                ("center_rewards_coefficient", ctypes.c_double)]  # fmt: skip


#: The reward losses, by their `UR_REWARD_LOSS_*` code.
REWARD_LOSSES = ("bradley-terry", "kwise", "kwise-all-pairs")

lib.ur_trainer_config_default.argtypes = []
lib.ur_trainer_config_default.restype = _Config
_CFG = ctypes.POINTER(_Config)
lib.ur_sft_trainer_create.argtypes = [_P, ctypes.c_char_p, _CFG, ctypes.POINTER(_P)]
lib.ur_dpo_trainer_create.argtypes = [_P, ctypes.c_char_p, ctypes.c_char_p, _CFG, ctypes.POINTER(_DpoConfig),
                                      ctypes.POINTER(_P)]  # fmt: skip
lib.ur_reward_loss_config_default.argtypes = []
lib.ur_reward_loss_config_default.restype = _RewardLoss
lib.ur_reward_trainer_create.argtypes = [_P, ctypes.c_char_p, _CFG, ctypes.POINTER(_RewardLoss), ctypes.POINTER(_P)]
for _kind, _metrics in (("sft", _SftMetrics), ("dpo", _DpoMetrics), ("reward", _RewardMetrics)):
    getattr(lib, f"ur_{_kind}_trainer_step").argtypes = [_P, _P, _STRINGS, ctypes.c_size_t, ctypes.c_size_t,
                                                         ctypes.POINTER(_metrics)]  # fmt: skip
    getattr(lib, f"ur_{_kind}_trainer_save").argtypes = [_P, _P, ctypes.c_char_p]
    for _call in ("create", "step", "save"):
        getattr(lib, f"ur_{_kind}_trainer_{_call}").restype = ctypes.c_int32
    getattr(lib, f"ur_{_kind}_trainer_free").argtypes = [_P]
    getattr(lib, f"ur_{_kind}_trainer_free").restype = None

lib.ur_sft_trainer_set_tasks.argtypes = [_P, _P, _STRINGS, ctypes.c_size_t]
lib.ur_sft_trainer_task_losses.argtypes = [_P, _P, ctypes.POINTER(ctypes.c_double), ctypes.c_size_t]
for _call in ("set_tasks", "task_losses"):
    getattr(lib, f"ur_sft_trainer_{_call}").restype = ctypes.c_int32

Record = Union[str, dict]
Path = Union[str, os.PathLike]


def _positive(who: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**63:
        raise ValueError(f"unireward.{who}: `{name}` must be an integer >= 1, got {value!r}")
    return value


def _finite(who: str, name: str, value, low: float, low_ok: bool = True) -> float:
    value = float(value)
    if not (math.isfinite(value) and (value >= low if low_ok else value > low)):
        raise ValueError(f"unireward.{who}: `{name}` must be finite and {'>=' if low_ok else '>'} {low}, got {value}")
    return value


class _RecordTrainer:
    """What both trainers share: the `ur_trainer_config`, stepping on records, saving, freeing."""

    _KIND = ""  # "sft", "dpo" or "reward": the C functions' infix
    _METRICS = _SftMetrics

    def _configure(self, total_steps, lr, weight_decay, max_grad_norm, schedule, warmup_ratio, max_len, freeze,
                   media_folder, video_frames, device, resume_from):  # fmt: skip
        who = type(self).__name__
        self._handle = None
        config = lib.ur_trainer_config_default()
        config.total_steps = _positive(who, "total_steps", total_steps)
        config.max_len = _positive(who, "max_len", max_len)
        config.video_frames = _positive(who, "video_frames", video_frames)
        if schedule not in SCHEDULES:
            raise ValueError(f"unireward.{who}: `schedule` must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        config.schedule = SCHEDULES.index(schedule)
        config.lr = _finite(who, "lr", lr, 0.0)
        config.weight_decay = _finite(who, "weight_decay", weight_decay, 0.0)
        config.warmup_ratio = _finite(who, "warmup_ratio", warmup_ratio, 0.0)
        if config.warmup_ratio > 1:
            raise ValueError(f"unireward.{who}: `warmup_ratio` must be in [0, 1], got {warmup_ratio}")
        config.max_grad_norm = 0.0 if max_grad_norm is None else _finite(who, "max_grad_norm", max_grad_norm, 0, False)
        if isinstance(freeze, (str, bytes)):
            raise TypeError(f"unireward.{who}: `freeze` must be a list of names, not one string")
        freeze = [os.fsencode(f) for f in freeze]
        self._freeze = (ctypes.c_char_p * max(len(freeze), 1))(*freeze)
        config.freeze, config.num_freeze = ctypes.cast(self._freeze, _STRINGS), len(freeze)
        self._media_folder = None if media_folder is None else os.fsencode(media_folder)
        config.media_folder = self._media_folder
        self.device = torch.device(device)
        config.device = _dl_device(self.device)
        self.total_steps = total_steps
        #: Optimizer steps taken (the schedule's position): the checkpoint's step when resuming.
        self.steps_done = 0
        self._resume_from = None if resume_from is None else os.fsencode(resume_from)
        config.resume_from = self._resume_from
        if resume_from is not None:
            state = pathlib.Path(resume_from) / "trainer_state" / "state.json"
            try:
                self.steps_done = int(json.loads(state.read_text())["step"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ValueError(f"unireward.{who}: `resume_from` {resume_from} is not a checkpoint the trainer "
                                 f"saved ({state}: {e})") from e  # fmt: skip
        return config

    def _create(self, *args) -> None:
        handle = _P()
        name = f"ur_{self._KIND}_trainer_create"
        check(lib, name, getattr(lib, name)(_context, *args, ctypes.byref(handle)))
        self._handle = handle

    def _live(self):
        if self._handle is None:
            raise RuntimeError(f"unireward.{type(self).__name__}: the trainer was closed")
        return self._handle

    def _step(self, records: Sequence[Record], micro_batch_size: Optional[int]):
        who = f"{type(self).__name__}.step"
        if isinstance(records, (str, bytes, dict)) or not isinstance(records, Sequence):
            raise TypeError(f"unireward.{who}: `records` must be a list of records (dicts or JSON strings)")
        if not records:
            raise ValueError(f"unireward.{who}: `records` is empty")
        texts = []
        for i, r in enumerate(records):
            if isinstance(r, dict):
                texts.append(json.dumps(r).encode())
            elif isinstance(r, str):
                texts.append(r.encode())
            else:
                raise TypeError(f"unireward.{who}: `records[{i}]` must be a dict or a JSON string, "
                                f"got {type(r).__name__}")  # fmt: skip
        size = 0 if micro_batch_size is None else _positive(who, "micro_batch_size", micro_batch_size)
        array = (ctypes.c_char_p * len(texts))(*texts)
        metrics = self._METRICS(struct_size=ctypes.sizeof(self._METRICS))
        name = f"ur_{self._KIND}_trainer_step"
        check(lib, name, getattr(lib, name)(_context, self._live(), array, len(texts), size, ctypes.byref(metrics)))
        self.steps_done = metrics.step
        out = {f: getattr(metrics, f) for f, _ in self._METRICS._fields_[2:]}
        out["grad_norm"] = None if math.isnan(metrics.grad_norm) else metrics.grad_norm
        return out

    def save(self, out_dir: Path) -> pathlib.Path:
        """Writes `out_dir/checkpoint-<step>/` as the command line does (the weights in the source's layout, which
        transformers loads, and the optimizer state; no data-loader position) and returns it."""
        name = f"ur_{self._KIND}_trainer_save"
        check(lib, name, getattr(lib, name)(_context, self._live(), os.fsencode(out_dir)))
        return pathlib.Path(out_dir) / f"checkpoint-{self.steps_done}"

    def close(self) -> None:
        """Frees the trainer now (also done when it is garbage-collected)."""
        if getattr(self, "_handle", None) is not None:
            getattr(lib, f"ur_{self._KIND}_trainer_free")(self._handle)
            self._handle = None

    def __del__(self):
        self.close()


class SftTrainer(_RecordTrainer):
    """Supervised fine-tuning of the checkpoint in `model_dir` (a Qwen2 or LLaVA-OneVision judge: config, weights,
    tokenizer files, chat template) in float32 on `device`, with `unireward train-judge`'s recipe and defaults:
    AdamW (`lr`, `weight_decay`), clipping at `max_grad_norm` (`None`: off), the `schedule` ("cosine", "linear" or
    "constant") over `total_steps` optimizer steps after `ceil(total_steps * warmup_ratio)` warm-up steps, records
    of at most `max_len` tokens, parameters named by `freeze` left untrained ("vision", "projector" or a name
    fragment), media paths relative to `media_folder` (default: the current directory), `video_frames` frames a
    video. `resume_from`: a checkpoint `save` wrote, to continue from bitwise (its weights, optimizer state and
    step; the same settings). `tasks`: the names of the records' tasks (each record's `task` field, as in a
    `train-judge` data file), so that each step also returns every task's mean loss (`task_loss`, by name: the
    per-task losses of joint training); every record must then name one of them. Not thread-safe."""

    _KIND = "sft"
    _METRICS = _SftMetrics

    def __init__(self, model_dir: Path, total_steps: int, lr: float = 1e-5, weight_decay: float = 0.0,
                 max_grad_norm: Optional[float] = 1.0, schedule: str = "cosine", warmup_ratio: float = 0.03,
                 max_len: int = 2048, freeze: Sequence[str] = (), media_folder: Optional[Path] = None,
                 video_frames: int = 8, device: Union[str, torch.device] = "cpu",
                 resume_from: Optional[Path] = None, tasks: Optional[Sequence[str]] = None):  # fmt: skip
        if isinstance(tasks, (str, bytes)):
            raise TypeError("unireward.SftTrainer: `tasks` must be a list of names, not one string")
        config = self._configure(total_steps, lr, weight_decay, max_grad_norm, schedule, warmup_ratio, max_len,
                                 freeze, media_folder, video_frames, device, resume_from)  # fmt: skip
        self.model_dir = pathlib.Path(model_dir)
        self._create(os.fsencode(model_dir), ctypes.byref(config))
        #: The task names of `task_loss`, in order (`None`: every record counts as one task).
        self.tasks = None if tasks is None else [str(t) for t in tasks]
        if self.tasks is not None:
            names = (ctypes.c_char_p * max(len(self.tasks), 1))(*[t.encode() for t in self.tasks])
            check(lib, "ur_sft_trainer_set_tasks", lib.ur_sft_trainer_set_tasks(
                _context, self._live(), ctypes.cast(names, _STRINGS), len(self.tasks)))  # fmt: skip

    def step(self, records: Sequence[Record], micro_batch_size: Optional[int] = None) -> Dict[str, float]:
        """One optimizer step on `records` (LLaVA conversation records: dicts, or their JSON text), cut into
        micro-batches of `micro_batch_size` consecutive records (`None`: one micro-batch) whose gradients are
        accumulated — `train-judge --batch-size B --grad-accum K` on the same records in its batches. Every record
        is checked first; a bad one raises `UnirewardError` naming it (`micro_batches[i][j]`) and nothing changes.
        Returns the metrics `train-judge` logs: step, loss (before the update), tokens, grad_norm (`None` without
        clipping) and lr; with `tasks`, also task_loss: each task's mean loss by name (`None` for a task none of whose
        records was in the step)."""
        out = self._step(records, micro_batch_size)
        if self.tasks is not None:
            losses = (ctypes.c_double * len(self.tasks))()
            check(lib, "ur_sft_trainer_task_losses",
                  lib.ur_sft_trainer_task_losses(_context, self._live(), losses, len(self.tasks)))  # fmt: skip
            out["task_loss"] = {t: None if math.isnan(v) else v for t, v in zip(self.tasks, losses)}
        return out


class DpoTrainer(_RecordTrainer):
    """DPO of the policy checkpoint in `policy_dir` (Qwen2 or LLaVA-OneVision) in float32 on `device` against the
    reference in `reference_dir` (`None`: a frozen copy of the policy as it starts; not loaded for SimPO, ORPO or
    `reference_free`), with `unireward dpo`'s loss options — `loss_type` (one of `DPO_LOSS_TYPES`, or a list mixed
    with `loss_weights`), `beta`, `label_smoothing`, `reference_free`, `rpo_alpha`, `ld_alpha` (LD-DPO),
    `use_weighting` (WPO), `simpo_gamma` — and the training options of `SftTrainer` (`unireward dpo`'s defaults). Not
    thread-safe."""

    _KIND = "dpo"
    _METRICS = _DpoMetrics

    def __init__(self, policy_dir: Path, total_steps: int, reference_dir: Optional[Path] = None,
                 loss_type: Union[str, Sequence[str]] = "sigmoid", loss_weights: Optional[Sequence[float]] = None,
                 beta: float = 0.1, label_smoothing: float = 0.0, reference_free: bool = False,
                 rpo_alpha: Optional[float] = None, ld_alpha: Optional[float] = None, use_weighting: bool = False,
                 simpo_gamma: float = 0.5, lr: float = 1e-5,
                 weight_decay: float = 0.0, max_grad_norm: Optional[float] = 1.0, schedule: str = "cosine",
                 warmup_ratio: float = 0.03, max_len: int = 2048, freeze: Sequence[str] = (),
                 media_folder: Optional[Path] = None, video_frames: int = 8,
                 device: Union[str, torch.device] = "cpu", resume_from: Optional[Path] = None):  # fmt: skip
        config = self._configure(total_steps, lr, weight_decay, max_grad_norm, schedule, warmup_ratio, max_len,
                                 freeze, media_folder, video_frames, device, resume_from)  # fmt: skip
        names = [loss_type] if isinstance(loss_type, str) else list(loss_type)
        for name in names:
            if name not in DPO_LOSS_TYPES:
                raise ValueError(f"unireward.DpoTrainer: `loss_type` {name!r} is not one of {', '.join(DPO_LOSS_TYPES)}")
        weights = [1.0] * len(names) if loss_weights is None else [float(w) for w in loss_weights]
        if not names or len(weights) != len(names):
            raise ValueError(f"unireward.DpoTrainer: {len(weights)} `loss_weights` for {len(names)} loss types")
        loss = lib.ur_dpo_config_default()
        loss.loss_type = DPO_LOSS_TYPES.index(names[0])
        if len(names) > 1 or weights[0] != 1.0:
            self._types = (ctypes.c_int32 * len(names))(*(DPO_LOSS_TYPES.index(n) for n in names))
            self._weights = (ctypes.c_float * len(names))(*weights)
            loss.num_loss_types, loss.loss_types, loss.loss_weights = len(names), self._types, self._weights
        loss.beta = _finite("DpoTrainer", "beta", beta, 0.0, False)
        loss.label_smoothing = _finite("DpoTrainer", "label_smoothing", label_smoothing, 0.0)
        loss.reference_free = int(bool(reference_free))
        loss.use_rpo_alpha, loss.rpo_alpha = int(rpo_alpha is not None), 0.0 if rpo_alpha is None else rpo_alpha
        loss.use_ld_alpha, loss.ld_alpha = int(ld_alpha is not None), 1.0 if ld_alpha is None else ld_alpha
        loss.use_weighting = int(bool(use_weighting))
        loss.simpo_gamma = simpo_gamma
        self.policy_dir = pathlib.Path(policy_dir)
        reference = None if reference_dir is None else os.fsencode(reference_dir)
        self._create(os.fsencode(policy_dir), reference, ctypes.byref(config), ctypes.byref(loss))

    def step(self, records: Sequence[Record], micro_batch_size: Optional[int] = None) -> Dict[str, float]:
        """One optimizer step on `records` (preference pairs: dicts with `prompt`, `chosen`, `rejected` and optional
        media, or their JSON text), cut into micro-batches of `micro_batch_size` consecutive records (`None`: one
        micro-batch). A bad record raises `UnirewardError` naming it and nothing changes. Returns the metrics
        `unireward dpo` logs: step, loss, pairs, tokens, grad_norm, lr, and TRL's rewards_chosen, rewards_rejected,
        rewards_accuracies, rewards_margins, logps_chosen, logps_rejected."""
        return self._step(records, micro_batch_size)


class RewardTrainer(_RecordTrainer):
    """A scalar reward model (TRL's `RewardTrainer`, `unireward train-reward`) trained from the checkpoint in
    `model_dir` — a Qwen2 or LLaVA-OneVision model, or a reward checkpoint holding `score.weight` (one without it
    gets a fresh head) — in float32 on `device`, with `loss` "bradley-terry" on pairs (with TRL's
    `center_rewards_coefficient`, `None`: off), "kwise" (Plackett–Luce) or "kwise-all-pairs" on ranked lists, and
    the training options of `SftTrainer` (`unireward train-reward`'s defaults). `save` writes a checkpoint that
    transformers loads (a Qwen2 one as `Qwen2ForSequenceClassification`). Not thread-safe."""

    _KIND = "reward"
    _METRICS = _RewardMetrics

    def __init__(self, model_dir: Path, total_steps: int, loss: str = "bradley-terry",
                 center_rewards_coefficient: Optional[float] = None, lr: float = 1e-5, weight_decay: float = 0.0,
                 max_grad_norm: Optional[float] = 1.0, schedule: str = "cosine", warmup_ratio: float = 0.03,
                 max_len: int = 2048, freeze: Sequence[str] = (), media_folder: Optional[Path] = None,
                 video_frames: int = 8, device: Union[str, torch.device] = "cpu",
                 resume_from: Optional[Path] = None):  # fmt: skip
        config = self._configure(total_steps, lr, weight_decay, max_grad_norm, schedule, warmup_ratio, max_len,
                                 freeze, media_folder, video_frames, device, resume_from)  # fmt: skip
        if loss not in REWARD_LOSSES:
            raise ValueError(f"unireward.RewardTrainer: `loss` must be one of {', '.join(REWARD_LOSSES)}, got {loss!r}")
        config_loss = lib.ur_reward_loss_config_default()
        config_loss.loss = REWARD_LOSSES.index(loss)
        if center_rewards_coefficient is not None:
            c = _finite("RewardTrainer", "center_rewards_coefficient", center_rewards_coefficient, 0.0, False)
            config_loss.center_rewards_coefficient = c
        self.model_dir = pathlib.Path(model_dir)
        self._create(os.fsencode(model_dir), ctypes.byref(config), ctypes.byref(config_loss))

    def step(self, records: Sequence[Record], micro_batch_size: Optional[int] = None) -> Dict[str, float]:
        """One optimizer step on `records` — pairs (`prompt`, `chosen`, `rejected`, optional `margin` and media) for
        Bradley–Terry, ranked lists (`prompt`, `responses` best first, all of one length) for the K-wise losses:
        dicts or their JSON text — cut into micro-batches of `micro_batch_size` consecutive records (`None`: one
        micro-batch). A bad record raises `UnirewardError` naming it and nothing changes. Returns the metrics
        `unireward train-reward` logs: step, loss, accuracy, rewards_chosen, rewards_rejected, margin, groups,
        tokens, grad_norm (`None` without clipping) and lr."""
        return self._step(records, micro_batch_size)
