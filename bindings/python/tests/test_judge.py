"""`unireward.Judge` on a tiny LLaVA-OneVision judge (the random model of tests/fixtures/llava/hf with its vocabulary
widened to the Qwen2 tokenizer fixture's, as tests/judge_checkpoint does for the Rust tests): pairwise, pointwise and
batched judgments equal the Rust `Judge`'s (run through `unireward judge --json`, built next to the library), and
bad input is refused by name."""

import json
import pathlib
import shutil
import subprocess

import pytest
import torch
from safetensors.torch import load_file, save_file

import unireward
from unireward import Judge, JudgeRequest, UnirewardError

FIXTURES = pathlib.Path(__file__).resolve().parents[3] / "tests" / "fixtures"
IMAGES = FIXTURES / "llava" / "images"
VOCAB = 365  # the tokenizer fixture's 363 tokens, then the image and video placeholders


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("judge")
    hf = FIXTURES / "llava" / "hf"
    config = json.loads((hf / "config.json").read_text())
    config["text_config"]["vocab_size"] = VOCAB
    config["text_config"]["max_position_embeddings"] = 4096
    config["image_token_index"], config["video_token_index"] = VOCAB - 2, VOCAB - 1
    (out / "config.json").write_text(json.dumps(config))
    weights = load_file(hf / "model.safetensors")
    for name, w in weights.items():
        if name.endswith(("embed_tokens.weight", "lm_head.weight")):
            extra = 0.5 * torch.sin(torch.arange((VOCAB - w.shape[0]) * w.shape[1], dtype=torch.float32) * 0.37)
            weights[name] = torch.cat([w, extra.view(-1, w.shape[1])])
    save_file(weights, out / "model.safetensors")
    shutil.copy(hf / "preprocessor_config.json", out)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(FIXTURES / "qwen2" / "tokenizer" / f, out)
    return out


@pytest.fixture(scope="module")
def judge(judge_dir):
    return Judge(judge_dir)


def rust(judge_dir, *args):
    """The Rust `Judge`'s result, from the command line built with the library."""
    cli = pathlib.Path(unireward.library_path()).parent / "unireward"
    assert cli.is_file(), f"{cli} is missing: build it with `cargo build --release` (scripts/test.sh does)"
    done = subprocess.run([str(cli), "judge", "--model", str(judge_dir), "--json", *map(str, args)],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def assert_same(result, expected):
    assert len(result.probs) == len(expected["probs"])
    for p, e in zip(result.probs, expected["probs"]):
        assert abs(p - e) <= 1e-6, (result.probs, expected["probs"])
    assert result.prompt_tokens == expected["prompt_tokens"]
    assert result.verdict == expected.get("verdict")
    assert result.position_consistent == expected.get("position_consistent")
    for key in ("score", "argmax_score"):
        if key in expected:
            assert abs(getattr(result, key) - expected[key]) <= 1e-5
        else:
            assert getattr(result, key) is None
    assert result.seconds > 0


def test_pairwise_generation_equals_the_rust_judge(judge, judge_dir):
    a, b = IMAGES / "two_images_0.png", IMAGES / "two_images_1.png"
    result = judge.pairwise("image-generation", a, b, caption="a red square")
    assert_same(result, rust(judge_dir, "--task", "image-generation", "--pair", a, b, "--caption", "a red square"))
    assert abs(sum(result.probs) - 1) <= 1e-5
    swapped = judge.pairwise("image_generation", str(b), str(a), caption="a red square")
    assert abs(swapped.probs[0] - result.probs[1]) <= 1e-6 and abs(swapped.probs[2] - result.probs[2]) <= 1e-6


def test_pointwise_understanding_and_video_equal_the_rust_judge(judge, judge_dir):
    image = IMAGES / "anyres_0.png"
    result = judge.pointwise("image_understanding", "It is red.", question="What color is the square?", images=[image])
    expected = rust(judge_dir, "--task", "image-understanding", "--point", "It is red.", "--question",
                    "What color is the square?", "--image", image)  # fmt: skip
    assert_same(result, expected)
    assert len(result.probs) == 101 and 0 <= result.score <= 100
    video = FIXTURES / "llava" / "video"
    result = judge.pointwise("video_generation", video, caption="a square")
    assert_same(result, rust(judge_dir, "--task", "video-generation", "--point", video, "--caption", "a square"))


def test_judge_many_equals_each_alone(judge):
    image = str(IMAGES / "anyres_0.png")
    question = "What color is the square?"
    requests = [JudgeRequest("image_understanding", "pointwise", [r], question=question, images=[image])
                for r in ("It is red.", "Blue, I think.")]  # fmt: skip
    requests.append(JudgeRequest("image_understanding", "pairwise", ["It is red.", "Blue."], question=question,
                                 images=[image]))  # fmt: skip
    results, info = judge.judge_many(requests, return_info=True)
    assert info["prefill_tokens"] > 0 and info["prefill_tokens_saved"] > 0
    for request, together in zip(requests, results):
        if request.mode == "pointwise":
            alone = judge.pointwise(request.task, request.candidates[0], question=question, images=[image])
        else:
            alone = judge.pairwise(request.task, *request.candidates, question=question, images=[image])
        assert len(together.probs) == len(alone.probs)
        assert all(abs(p - q) <= 1e-5 * max(q, 1e-3) for p, q in zip(together.probs, alone.probs))
        assert together.prompt_tokens == alone.prompt_tokens


def test_bad_input_is_refused_by_name(judge, judge_dir):
    a, b = IMAGES / "two_images_0.png", IMAGES / "two_images_1.png"
    with pytest.raises(ValueError, match="unknown task 'image-gen'"):
        judge.pairwise("image-gen", a, b, caption="x")
    with pytest.raises(UnirewardError, match="caption") as e:
        judge.pairwise("image_generation", a, b)
    assert e.value.status_name == "UR_ERROR_INVALID_ARGUMENT"
    with pytest.raises(UnirewardError, match="no_such.png"):
        judge.pointwise("image_generation", IMAGES / "no_such.png", caption="x")
    with pytest.raises(TypeError, match="candidates\\[1\\] must be a file path"):
        judge.pairwise("image_generation", a, torch.zeros(3, 8, 8), caption="x")
    with pytest.raises(TypeError, match="images\\[0\\] must be a file path"):
        judge.pointwise("image_understanding", "r", question="q", images=[torch.zeros(3, 8, 8)])
    with pytest.raises(TypeError, match="response text"):
        judge.pointwise("image_understanding", a, question="q", images=[a])
    with pytest.raises(UnirewardError, match="candidates"):
        judge.judge_many([JudgeRequest("image_generation", "pairwise", [a], caption="x")])
    with pytest.raises(ValueError, match="unknown mode"):
        judge.judge_many([JudgeRequest("image_generation", "both", [a], caption="x")])
    with pytest.raises(UnirewardError, match="/no/such/judge"):
        Judge("/no/such/judge")
    with pytest.raises(TypeError, match="int32"):
        Judge(judge_dir, dtype=torch.int32)
    closed = Judge(judge_dir)
    closed.close()
    with pytest.raises(RuntimeError, match="closed"):
        closed.pointwise("image_generation", a, caption="x")
