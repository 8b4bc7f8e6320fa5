"""The ctypes mirrors against include/unireward.h: every config and metrics struct field by field, every declared
export's parameter count and kinds, and the enum codes the wrappers use. A drift here would corrupt memory
silently (metrics structs are written by the library), so it fails loudly."""

import ctypes
import pathlib
import re

import pytest

import unireward
from unireward import _lib, comparisons, heads, judge, logprobs, losses, media, model, optim, train
from unireward._dlpack import DLDataType, DLDevice, DLTensor

HEADER = pathlib.Path(__file__).resolve().parents[3] / "include" / "unireward.h"
pytestmark = pytest.mark.skipif(not HEADER.is_file(), reason="include/unireward.h is not generated yet")

C_SCALARS = {
    "uint32_t": ctypes.c_uint32,
    "int32_t": ctypes.c_int32,
    "int64_t": ctypes.c_int64,
    "uint64_t": ctypes.c_uint64,
    "uint8_t": ctypes.c_uint8,
    "float": ctypes.c_float,
    "size_t": ctypes.c_size_t,
    # Passed or stored by value.
    "DLDataType": DLDataType,
    "DLDevice": DLDevice,
    "const int32_t *": ctypes.POINTER(ctypes.c_int32),
    "const float *": ctypes.POINTER(ctypes.c_float),
    "const DLTensor *": ctypes.POINTER(DLTensor),
    "const char *": ctypes.c_char_p,
    # Addresses the wrappers pass as integers: an item's value, a pixel buffer.
    "const void *": ctypes.c_void_p,
    "const uint8_t *": ctypes.c_void_p,
    "double": ctypes.c_double,
    "const char *const *": ctypes.POINTER(ctypes.c_char_p),
    "const struct ur_judge_item *": ctypes.POINTER(judge._JudgeItem),
    "const struct ur_judge_context *": ctypes.POINTER(judge._JudgeContext),
}


def header():
    text = HEADER.read_text()
    return re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.S)


def c_structs():
    """{name: [(field, C type)]} of the header's structs."""
    out = {}
    for m in re.finditer(r"struct\s+(ur_\w+)\s*\{(.*?)\}", header(), flags=re.S):
        fields = [f.strip().rsplit(None, 1) for f in m.group(2).split(";") if f.strip()]
        # A pointer field reads `const int32_t *name`: the star belongs to the type.
        out[m.group(1)] = [(name.lstrip("*"), f"{ctype} *" if name.startswith("*") else ctype) for ctype, name in fields]
    return out


def c_functions():
    """{name: [parameter C types]} of the header's functions."""
    out = {}
    for m in re.finditer(r"\b(ur_\w+)\s*\(([^;{]*?)\)\s*;", header(), flags=re.S):
        params = [p.strip() for p in m.group(2).split(",") if p.strip() and p.strip() != "void"]
        out[m.group(1)] = [c_type(p) for p in params]
    return out


def c_type(param: str) -> str:
    """A parameter's type: a scalar type name, or `*` and the pointee's name (`*DLTensor`, `*ur_dpo_config`)."""
    if "*" not in param:
        return param.rsplit(None, 1)[0]
    pointee = param[: param.index("*")].replace("const", "").replace("struct", "").strip()
    return "*" + pointee


def c_defines():
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"#define\s+(UR_\w+)\s+\(?(-?\d+)", header())}


MIRRORS = {
    "ur_logprobs_config": logprobs._LogprobsConfig,
    "ur_fused_linear_config": logprobs._FusedLinearConfig,
    "ur_dpo_config": losses._DpoConfig,
    "ur_dpo_metrics": losses._DpoMetrics,
    "ur_bradley_terry_config": losses._BradleyTerryConfig,
    "ur_bradley_terry_metrics": losses._BradleyTerryMetrics,
    "ur_kwise_config": losses._KwiseConfig,
    "ur_diffusion_dpo_config": losses._DiffusionDpoConfig,
    "ur_diffusion_dpo_metrics": losses._DiffusionDpoMetrics,
    "ur_compare_config": comparisons._CompareConfig,
    "ur_select_config": comparisons._SelectConfig,
    "ur_model_info": model._ModelInfo,
    "ur_generation_config": model._GenerationConfig,
    "ur_generation_result": model._GenerationResult,
    "ur_load_options": model._LoadOptions,
    "ur_media": model._Media,
    "ur_judge_item": judge._JudgeItem,
    "ur_judge_pixels": judge._JudgePixels,
    "ur_judge_context": judge._JudgeContext,
    "ur_judge_request": judge._JudgeRequest,
    "ur_judge_result": judge._JudgeResult,
    "ur_judge_batch_info": judge._JudgeBatchInfo,
    "ur_judge_reasoning": judge._JudgeReasoning,
    "ur_judge_template": judge._JudgeTemplate,
    "ur_adamw_config": optim._Config,
    "ur_adamw_step_report": optim._StepReport,
    "ur_trainer_config": train._Config,
    "ur_sft_step_metrics": train._SftMetrics,
    "ur_dpo_step_metrics": train._DpoMetrics,
    "ur_reward_loss_config": train._RewardLoss,
    "ur_reward_step_metrics": train._RewardMetrics,
}


@pytest.mark.parametrize("name", sorted(MIRRORS))
def test_struct_mirrors_match_the_header(name):
    c_fields = c_structs()[name]
    mirror = MIRRORS[name]._fields_
    assert len(mirror) == len(c_fields), f"{name}: {len(mirror)} fields here, {len(c_fields)} in the header"
    for (py_name, py_type), (c_name, c_type) in zip(mirror, c_fields):
        assert C_SCALARS[c_type] is py_type, f"{name}.{c_name}: {c_type} in the header"
    assert [f for f, _ in mirror] == [f for f, _ in c_fields]


def test_declared_exports_match_the_header():
    functions = c_functions()
    declared = [n for n in functions if getattr(unireward._c.lib, n).argtypes is not None]
    ops = [n for n in functions if n.endswith(("_forward", "_backward", "_loss")) or n in ("ur_compare", "ur_select_pairs")]
    assert set(ops) <= set(declared), f"exports the package does not bind: {sorted(set(ops) - set(declared))}"
    for name in declared:
        argtypes = getattr(unireward._c.lib, name).argtypes
        params = functions[name]
        assert len(argtypes) == len(params), f"{name}: {len(argtypes)} arguments here, {len(params)} in the header"
        for i, (py, c) in enumerate(zip(argtypes, params)):
            assert matches(py, c), f"{name} argument {i}: {py} here, {c} in the header"


# Opaque handles, passed as `void*`.
HANDLES = ("void", "ur_context", "ur_model", "ur_image_processor", "ur_judge", "ur_adamw", "ur_sft_trainer",
           "ur_dpo_trainer", "ur_reward_trainer")


def matches(t, c: str) -> bool:
    """Whether the argtype `t` is the header's type `c` (in the notation of `c_type`, which keeps one `*`)."""
    if t is ctypes.c_void_p:
        return c in ["*" + h for h in HANDLES]
    if t is ctypes.c_char_p:
        return c == "*char"
    if hasattr(t, "contents"):
        pointee = t._type_
        names = {DLTensor: "DLTensor", ctypes.c_float: "float", ctypes.c_char_p: "char",
                 **{v: k for k, v in MIRRORS.items()}}  # fmt: skip
        if pointee is ctypes.c_void_p:  # an `ur_model**` output
            return c in ["*" + h for h in HANDLES]
        return c.startswith("*") and (names.get(pointee) == c[1:] or C_SCALARS.get(c[1:]) is pointee)
    return C_SCALARS.get(c) is t


def test_enum_codes_match_the_header():
    d = c_defines()
    assert d["UR_ABI_VERSION"] == _lib.ABI_VERSION
    for i, name in enumerate(losses.DPO_LOSS_TYPES):
        assert d[f"UR_DPO_{name.upper()}"] == i
    assert [d["UR_KWISE_ALL_PAIRS"], d["UR_KWISE_PLACKETT_LUCE"]] == [0, 1]
    assert [d["UR_REDUCTION_SUM"], d["UR_REDUCTION_MEAN"]] == [0, 1]
    assert [d["UR_IMAGE_LAYOUT_" + name.upper()] for name in media.LAYOUTS] == [0, 1]
    for prefix, names in [("UR_VERDICTS_", comparisons.VERDICT_KINDS), ("UR_SCORE_LINK_", comparisons.SCORE_LINKS),
                          ("UR_PAIRING_", comparisons.PAIRINGS), ("UR_TIES_", comparisons.TIES), ("UR_NANS_", comparisons.NANS)]:
        for i, name in enumerate(names):
            assert d[prefix + name.upper()] == i
    for code, name in _lib.STATUS_NAMES.items():
        assert re.search(rf"\b{name}\s*=\s*{code}\b", header()), name
    assert [d["UR_TASK_" + name.upper()] for name in judge.TASKS] == [0, 1, 2, 3]
    assert [d["UR_JUDGE_" + name.upper()] for name in judge.MODES] == [0, 1]
    assert [d["UR_JUDGE_TEXT"], d["UR_JUDGE_IMAGE"], d["UR_JUDGE_VIDEO"]] == [judge._TEXT, judge._IMAGE, judge._VIDEO]
    assert [d["UR_JUDGE_IMAGE_PIXELS"], d["UR_JUDGE_VIDEO_PIXELS"]] == [judge._PIXELS[judge._IMAGE], judge._PIXELS[judge._VIDEO]]
    assert [d["UR_REWARD_LOSS_" + name.upper().replace("-", "_")] for name in train.REWARD_LOSSES] == [0, 1, 2]
    assert [d["UR_VERDICT_FIRST"], d["UR_VERDICT_SECOND"], d["UR_VERDICT_TIE"], d["UR_VERDICT_NONE"]] == [0, 1, 2, -1]
    assert [d["UR_PARSE_" + name.upper()] for name in judge.PARSE_STATUSES] == [0, 1, 2, 3]
    assert heads  # the heads take no enums; their exports are checked above


def test_the_host_cache_keeps_large_freed_buffers_until_released():
    import torch

    unireward.release_host_cache()
    assert unireward.host_cache_bytes() == 0
    # A bf16 head's gradient is summed in an f32 scratch of V·H floats (1 MiB here), freed into the cache.
    hidden = torch.randn(1, 4, 256, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(1024, 256, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, 1024, (1, 4))
    unireward.fused_linear_logprobs(hidden, weight, labels).logps.sum().backward()
    held = unireward.host_cache_bytes()
    assert held >= 1 << 20
    assert unireward.release_host_cache() == held
    assert unireward.host_cache_bytes() == 0
