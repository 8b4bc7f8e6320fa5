"""`unireward.LlavaOnevisionModel` on the tiny LLaVA-OneVision fixture (tests/fixtures/llava/hf) against
transformers' float64 reference (tests/fixtures/llava/reference.safetensors, written by
tests/reference/llava_onevision_model.py): the five-row batch (anyres image, down-sampled image, two images, a
video, text) given as pixel values, its logits, the causal-LM loss's gradient of every parameter, greedy generation;
the same images and video given as files; placeholder counts and their expansion; bad media as clear errors."""

import pathlib
import re

import pytest
import torch
import torch.nn.functional as F

import unireward
from unireward import UnirewardError

from test_model import load_safetensors, relative_error

ROOT = pathlib.Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "llava"
HF = ROOT / "hf"
IMAGE, VIDEO = 90, 91
# The fixture stores transformers 4.x's file names; the reference names the parameters as the model holds them
# (LlavaOnevisionForConditionalGeneration._checkpoint_conversion_mapping).
RENAMES = {"^language_model.model": "model.language_model", "^vision_tower": "model.vision_tower",
           "^multi_modal_projector": "model.multi_modal_projector", "^image_newline": "model.image_newline",
           "^language_model.lm_head": "lm_head"}  # fmt: skip


def parameter_name(stored: str) -> str:
    for pattern, replacement in RENAMES.items():
        stored = re.sub(pattern, replacement, stored)
    return stored


@pytest.fixture(scope="module")
def reference():
    import json

    raw = (ROOT / "reference.safetensors").read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    data = raw[8 + size :]
    dtypes = {"F64": torch.float64, "I64": torch.int64, "F32": torch.float32}
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        flat = torch.frombuffer(bytearray(data[start:end]), dtype=dtypes[entry["dtype"]])
        out[name] = flat.reshape(entry["shape"])
    return out


@pytest.fixture(scope="module")
def model():
    return unireward.LlavaOnevisionModel(HF)


def media(reference):
    """The reference batch's images as (pixel values, (height, width)) and its video's frames."""
    tiles = torch.split(reference["pixel_values"], reference["image_tiles"].tolist())
    sizes = [tuple(s) for s in reference["image_sizes"].tolist()]
    return list(zip(tiles, sizes)), [reference["pixel_values_videos"][0]]


def test_config(model):
    assert model.architecture == "llava_onevision"
    assert model.config["image_token_id"] == IMAGE and model.config["video_token_id"] == VIDEO
    names = [name for name, _ in model.parameters]
    assert "image_newline" in names and "language_model.lm_head.weight" in names
    assert sum(torch.Size(shape).numel() for _, shape in model.parameters) == model.config["num_parameters"]


def test_logits_and_every_gradient_match_transformers(model, reference):
    ids, mask = reference["input_ids"], reference["attention_mask"]
    images, videos = media(reference)
    logits = model.forward(ids, mask, images=images, videos=videos)
    real = mask.bool()
    assert relative_error(logits[real], reference["logits"][real].double()) < 1e-4

    # The loss of the reference: placeholders and padding do not count; token t predicts t + 1.
    leaf = logits.detach().requires_grad_()
    labels = ids.masked_fill((mask == 0) | (ids == IMAGE) | (ids == VIDEO), -100)
    shifted = F.pad(labels, (0, 1), value=-100)[:, 1:]
    loss = F.cross_entropy(leaf.reshape(-1, leaf.shape[-1]), shifted.reshape(-1), ignore_index=-100)
    assert abs(loss.item() - reference["loss"].item()) <= 1e-4 * abs(reference["loss"].item())
    loss.backward()
    grads = model.backward(leaf.grad)
    assert grads["inputs_embeds"].shape == (*ids.shape, model.config["hidden_size"])
    for name, _ in model.parameters:
        want = reference[f"grad.{parameter_name(name)}"]
        if "vision_model" in name and "k_proj.bias" in name:
            # Zero in exact arithmetic (softmax ignores a shift shared by every key): rounding noise on both sides.
            assert max(grads[name].abs().max(), want.abs().max()) < 1e-4, name
        else:
            assert relative_error(grads[name], want.double()) < 1e-4, name


def test_files_give_the_pixels_logits(model, reference):
    """Row 0 (one anyres image) and row 3 (a 4-frame video), the media given as files."""
    ids, mask = reference["input_ids"], reference["attention_mask"]
    images, videos = media(reference)
    for row, kwargs, files in [
        (0, {"images": images[:1]}, {"images": [ROOT / "images" / "anyres_0.png"]}),
        (3, {"videos": videos}, {"videos": [str(ROOT / "video")], "video_frames": 4}),
    ]:
        n = int(mask[row].sum())
        row_ids = ids[row : row + 1, :n]
        from_pixels = model.forward(row_ids, **kwargs)
        from_files = model.forward(row_ids, **files)
        assert relative_error(from_files, from_pixels.double()) < 1e-5
        assert relative_error(from_pixels, reference["logits"][row : row + 1, :n].double()) < 1e-4


def test_placeholder_counts_and_expansion(model, reference):
    ids, mask = reference["input_ids"], reference["attention_mask"]
    images, videos = media(reference)
    counts = model.placeholder_counts(images=images[:1], videos=videos)
    assert counts == [int((ids[0] == IMAGE).sum()), int((ids[3] == VIDEO).sum())]
    n = int(mask[0].sum())
    row = ids[0, :n].tolist()
    start = row.index(IMAGE)
    collapsed = row[:start] + [IMAGE] + row[start + counts[0] :]
    assert model.expand_placeholders(collapsed, images=images[:1]) == row
    assert model.placeholder_counts(images=[ROOT / "images" / "anyres_0.png"]) == counts[:1]
    with pytest.raises(ValueError, match="1 image placeholders"):
        model.expand_placeholders(collapsed, images=images[:2])


def test_greedy_generation_matches_transformers(model, reference):
    images, _ = media(reference)
    prompt = reference["generate.input_ids"].tolist()
    tokens, reason = model.generate(prompt, max_new_tokens=len(reference["generate.tokens"]), images=images[:1],
                                    return_finish_reason=True)  # fmt: skip
    assert tokens == reference["generate.tokens"].tolist() and reason == "max_new_tokens"
    from_file = model.generate(prompt, max_new_tokens=len(tokens), images=[ROOT / "images" / "anyres_0.png"])
    assert from_file == tokens


def test_bad_media_are_clear_errors(model, reference):
    ids, mask = reference["input_ids"][:1], reference["attention_mask"][:1]
    images, videos = media(reference)
    pixels, size = images[0]
    with pytest.raises(UnirewardError, match=r"media item 0 .* shape \[7, 3, 11, 12\]") as e:
        model.forward(ids, mask, images=[(pixels[:, :, :11], size)])
    assert e.value.status_name == "UR_ERROR_SHAPE"
    with pytest.raises(UnirewardError, match="media\\[0\\]: .*missing.png"):
        model.forward(ids, mask, images=[ROOT / "missing.png"])
    with pytest.raises(UnirewardError, match="image placeholder tokens"):
        model.forward(ids, mask, images=images[:2])
    with pytest.raises(UnirewardError, match="image placeholder tokens"):
        model.forward(ids, mask)
    with pytest.raises(TypeError, match="images\\[0\\]"):
        model.forward(ids, mask, images=[pixels])
    with pytest.raises(ValueError, match="image_layout"):
        model.forward(ids, mask, images=images[:1], image_layout="tiles")
    qwen2 = unireward.Qwen2Model(ROOT.parent / "qwen2" / "gqa_untied")
    with pytest.raises(UnirewardError, match="num_media"):
        qwen2.forward(torch.tensor([[1, 2]]), images=images[:1])
    with pytest.raises(ValueError, match="not qwen2"):
        unireward.Qwen2Model(HF)
