"""`unireward.Qwen2Model` on the Qwen2 fixture checkpoint against its float64 reference
(tests/fixtures/qwen2/gqa_untied/reference.safetensors, written by tests/reference/qwen2_model.py from transformers'
Qwen2ForCausalLM; transformers itself is not in the test environment): logits, the causal-LM loss's gradient of
every parameter and of the input embeddings (the loss taken by torch on our logits, its logits gradient sent back
through `backward`), greedy generation, and the errors."""

import json
import pathlib

import pytest
import torch
import torch.nn.functional as F

import unireward
from unireward import UnirewardError

FIXTURES = pathlib.Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "qwen2"
MODEL = FIXTURES / "gqa_untied"
_SAFETENSORS_DTYPES = {"F64": torch.float64, "I64": torch.int64}


def load_safetensors(path) -> dict:
    """A safetensors file's tensors (float64 and int64 only: what the reference holds), read without the
    safetensors package: an 8-byte header length, a JSON header, then the raw little-endian data."""
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    data = raw[8 + size :]
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        flat = torch.frombuffer(bytearray(data[start:end]), dtype=_SAFETENSORS_DTYPES[entry["dtype"]])
        out[name] = flat.reshape(entry["shape"])
    return out


@pytest.fixture(scope="module")
def reference():
    return load_safetensors(MODEL / "reference.safetensors")


@pytest.fixture(scope="module")
def model():
    return unireward.Qwen2Model(MODEL)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want|."""
    return ((got.double() - want).abs().max() / want.abs().max()).item()


def causal_lm_loss(logits, input_ids, attention_mask):
    """transformers' ForCausalLMLoss: token t predicts token t + 1; padding does not count; mean over tokens."""
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    shifted = F.pad(labels, (0, 1), value=-100)[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), shifted.reshape(-1), ignore_index=-100)


def test_config_and_parameters(model):
    c = model.config
    assert (c["vocab_size"], c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]) == (128, 32, 64, 2)
    assert (c["num_attention_heads"], c["num_key_value_heads"], c["tie_word_embeddings"]) == (4, 2, False)
    names = [name for name, _ in model.parameters]
    assert names[0] == "model.embed_tokens.weight" and names[-1] == "lm_head.weight" and len(names) == 27
    assert dict(model.parameters)["model.layers.1.self_attn.k_proj.weight"] == (16, 32)
    assert sum(torch.Size(shape).numel() for _, shape in model.parameters) == c["num_parameters"]


def test_logits_loss_and_gradients_match_the_reference(model, reference):
    ids, mask = reference["input_ids"], reference["attention_mask"]
    logits = model.forward(ids, mask)
    assert logits.dtype == torch.float32 and logits.shape == (3, 7, 128)
    real = mask.bool()
    assert relative_error(logits[real], reference["logits"][real]) < 1e-5

    leaf = logits.detach().requires_grad_()
    loss = causal_lm_loss(leaf, ids, mask)
    loss.backward()
    assert abs(loss.item() - reference["loss"].item()) < 1e-5 * reference["loss"].item()
    grads = model.backward(leaf.grad)
    expected = {name.removeprefix("grad."): t for name, t in reference.items() if name.startswith("grad.")}
    assert set(grads) == set(expected)
    for name, want in expected.items():
        got = grads[name]
        assert got.shape == want.shape and got.dtype == torch.float32, name
        assert relative_error(got, want) < 1e-4, (name, relative_error(got, want))


def test_backward_consumes_the_pass(model, reference):
    ids, mask = reference["input_ids"], reference["attention_mask"]
    logits = model.forward(ids, mask.bool())  # a bool mask works too
    model.backward(torch.zeros_like(logits))
    with pytest.raises(UnirewardError, match="ur_model_forward") as e:
        model.backward(torch.zeros_like(logits))
    assert e.value.status_name == "UR_ERROR_INVALID_ARGUMENT"


def test_greedy_generation_matches_the_reference(model, reference):
    for i in range(3):
        prompt, tokens = reference[f"generate.{i}.prompt"].tolist(), reference[f"generate.{i}.tokens"].tolist()
        assert model.generate(prompt, max_new_tokens=len(tokens)) == tokens
    eos = reference["generate.stop.eos"].tolist()
    stopped = model.generate(reference["generate.0.prompt"].tolist(), max_new_tokens=12, stop_tokens=eos)
    assert stopped == reference["generate.stop.tokens"].tolist()


def test_sampling_is_reproducible(model, reference):
    prompt = reference["generate.0.prompt"].tolist()
    first = model.generate(prompt, max_new_tokens=10, temperature=1.0, top_p=0.9, seed=3)
    assert first == model.generate(prompt, max_new_tokens=10, temperature=1.0, top_p=0.9, seed=3)
    assert len(first) == 10 and all(0 <= t < 128 for t in first)


def test_bfloat16_model_agrees_with_float32(model, reference):
    ids, mask = reference["input_ids"], reference["attention_mask"]
    bf16 = unireward.Qwen2Model(MODEL, dtype=torch.bfloat16)
    logits = bf16.forward(ids, mask)
    assert logits.dtype == torch.bfloat16
    real = mask.bool()
    assert relative_error(logits.float()[real], reference["logits"][real]) < 5e-2
    bf16.close()
    with pytest.raises(RuntimeError, match="closed"):
        bf16.forward(ids, mask)


def test_errors_carry_the_library_message(model, tmp_path):
    with pytest.raises(UnirewardError, match="config.json") as e:
        unireward.Qwen2Model(tmp_path)
    assert e.value.status_name == "UR_ERROR_CHECKPOINT"
    with pytest.raises(TypeError, match="int32"):
        unireward.Qwen2Model(MODEL, dtype=torch.int32)
    with pytest.raises(UnirewardError, match="ids"):
        model.forward(torch.tensor([[1, 2, 128]]))
    with pytest.raises(UnirewardError, match="temperature"):
        model.generate([1, 2], temperature=-1.0)
    with pytest.raises(UnirewardError, match="token id -4"):
        model.generate([1, -4])
    with pytest.raises(UnirewardError, match="prompt_len"):
        model.generate([])
    model.forward(torch.tensor([[1, 2, 3]]))
    with pytest.raises(UnirewardError, match="grad_logits") as e:
        model.backward(torch.zeros(1, 2, 128))
    assert e.value.status_name == "UR_ERROR_SHAPE"


def write_safetensors(path, tensors: dict) -> None:
    """`tensors` (name -> float32 tensor) as a safetensors file, written without the safetensors package."""
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        data = t.detach().to(torch.float32).contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"".join(blobs))


def copy_with_weights(tmp_path, change) -> pathlib.Path:
    """The fixture checkpoint copied to `tmp_path`, its weights passed through `change(dict) -> dict` first."""
    weights = {name: t.clone() for name, t in read_f32_safetensors(MODEL / "model.safetensors").items()}
    (tmp_path / "config.json").write_text((MODEL / "config.json").read_text())
    write_safetensors(tmp_path / "model.safetensors", change(weights))
    return tmp_path


def read_f32_safetensors(path) -> dict:
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    data = raw[8 + size :]
    return {name: torch.frombuffer(bytearray(data[e["data_offsets"][0] : e["data_offsets"][1]]),
                                   dtype=torch.float32).reshape(e["shape"])
            for name, e in header.items() if name != "__metadata__"}  # fmt: skip


def test_lenient_load_reports_the_tensors_it_ignored(tmp_path):
    extra = lambda w: {**w, "score.weight": torch.ones(2, 32), "model.extra.bias": torch.zeros(3)}
    path = copy_with_weights(tmp_path, extra)
    with pytest.raises(UnirewardError, match="score.weight") as e:
        unireward.Model(path)
    assert e.value.status_name == "UR_ERROR_CHECKPOINT"
    model = unireward.Model(path, lenient=True)
    assert model.ignored == ["model.extra.bias", "score.weight"]
    assert unireward.Model(MODEL, lenient=True).ignored == []
    strict = unireward.Model(MODEL)
    ids = torch.tensor([[3, 9, 27]])
    assert torch.equal(model.forward(ids), strict.forward(ids))


def test_check_finite_names_the_non_finite_weight(tmp_path):
    def poison(w):
        w["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")
        return w

    path = copy_with_weights(tmp_path, poison)
    with pytest.raises(UnirewardError, match="model.layers.1.mlp.up_proj.weight") as e:
        unireward.Model(path, check_finite=True)
    assert e.value.status_name == "UR_ERROR_CHECKPOINT"
    assert unireward.Model(path).architecture == "qwen2"  # unchecked, it loads


def test_generation_reports_why_it_ended(model, reference):
    prompt = reference["generate.0.prompt"].tolist()
    expected = reference["generate.0.tokens"].tolist()
    tokens, reason = model.generate(prompt, max_new_tokens=len(expected), return_finish_reason=True)
    assert tokens == expected and reason == "max_new_tokens"
    stop = expected[2]
    tokens, reason = model.generate(prompt, max_new_tokens=len(expected), stop_tokens=[stop], return_finish_reason=True)
    assert tokens == expected[: expected.index(stop) + 1] and reason == "stop"
    room = model.config["max_position_embeddings"] - len(prompt)
    tokens, reason = model.generate(prompt, max_new_tokens=room + 10, return_finish_reason=True)
    assert len(tokens) == room and reason == "context_length"


def test_architecture_is_checked():
    assert unireward.Model(MODEL).architecture == "qwen2"
    with pytest.raises(ValueError, match="not llava_onevision"):
        unireward.LlavaOnevisionModel(MODEL)
