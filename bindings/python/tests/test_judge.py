"""`unireward.Judge` on a tiny LLaVA-OneVision judge (the random model of tests/fixtures/llava/hf with its vocabulary
widened to the Qwen2 tokenizer fixture's, as tests/judge_checkpoint does for the Rust tests): pairwise, pointwise and
batched judgments equal the Rust `Judge`'s (run through `unireward judge --json`, built next to the library), and so
do reasoned judgments and judgments with a user's template; pixels in memory (numpy, torch, PIL) judge bit for bit as
the PNG files holding them, and bad input is refused by name."""

import binascii
import dataclasses
import json
import pathlib
import shutil
import struct
import subprocess
import zlib

import numpy as np
import PIL.Image  # Pillow comes with the test environment (diffusers needs it)
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
    with pytest.raises(TypeError, match="candidates\\[1\\] must be a path, a PIL image"):
        judge.pairwise("image_generation", a, 7, caption="x")
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


def write_png(path, pixels):
    """`pixels` (H x W x 3 uint8) as an 8-bit RGB PNG, with the standard library alone (no decoder under test)."""
    h, w, _ = pixels.shape
    rows = b"".join(b"\x00" + pixels[y].tobytes() for y in range(h))
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data
                                + struct.pack(">I", binascii.crc32(kind + data)))  # fmt: skip
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))  # fmt: skip
    return path


def test_pixels_in_memory_judge_bit_for_bit_as_their_files(judge, tmp_path):
    rng = np.random.default_rng(12)
    a, b = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8), rng.integers(0, 256, (31, 9, 3), dtype=np.uint8)
    a_png, b_png = write_png(tmp_path / "a.png", a), write_png(tmp_path / "b.png", b)
    files = judge.pairwise("image_generation", a_png, b_png, caption="a red square")
    b_transposed = torch.from_numpy(np.ascontiguousarray(b.transpose(1, 0, 2))).transpose(0, 1)
    assert not b_transposed.is_contiguous() and not np.asfortranarray(b).flags.c_contiguous
    for a_mem, b_mem in [(a, b), (torch.from_numpy(a), torch.from_numpy(b)),
                         (PIL.Image.fromarray(a), np.asfortranarray(b)), (str(a_png), b_transposed)]:  # fmt: skip
        assert judge.pairwise("image_generation", a_mem, b_mem, caption="a red square").probs == files.probs
    # PIL images of other modes are converted to RGB: grey levels repeated over the channels.
    grey = PIL.Image.fromarray(a[:, :, 0], "L")
    grey_png = write_png(tmp_path / "grey.png", np.repeat(a[:, :, :1], 3, axis=2))
    converted = judge.pointwise("image_generation", grey, caption="x")
    assert converted.probs == judge.pointwise("image_generation", grey_png, caption="x").probs

    # A context image alone (anyres tiles), in one batch with its file.
    question = "What color is the square?"
    requests = [JudgeRequest("image_understanding", "pointwise", ["It is red."], question=question, images=[m])
                for m in (a_png, a, torch.from_numpy(a))]  # fmt: skip
    results = judge.judge_many(requests)
    assert results[0].probs == results[1].probs == results[2].probs and results[0].score == results[2].score

    # A video: a folder of PNG frames, and its F x H x W x 3 frames (every frame; the judge samples them).
    frames = rng.integers(0, 256, (5, 12, 14, 3), dtype=np.uint8)
    folder = tmp_path / "video"
    folder.mkdir()
    for k, frame in enumerate(frames):
        write_png(folder / f"frame_{k}.png", frame)
    from_folder = judge.pointwise("video_generation", folder, caption="a square").probs
    for video in (frames, torch.from_numpy(frames), [PIL.Image.fromarray(f) for f in frames], list(frames)):
        assert judge.pointwise("video_generation", video, caption="a square").probs == from_folder
    understood = judge.pointwise("video_understanding", "It moves.", question="What moves?", videos=[folder])
    assert judge.pointwise("video_understanding", "It moves.", question="What moves?",
                           videos=[torch.from_numpy(frames)]).probs == understood.probs  # fmt: skip


def test_bad_pixels_are_refused_by_name(judge):
    image = np.zeros((8, 8, 3), np.uint8)
    pair = lambda b: judge.pairwise("image_generation", image, b, caption="x")  # noqa: E731
    with pytest.raises(TypeError, match="candidates\\[1\\] is a torch.float32 tensor.*permute"):
        pair(torch.rand(3, 8, 8))
    with pytest.raises(TypeError, match="candidates\\[1\\] is a numpy array of int16"):
        pair(np.zeros((8, 8, 3), np.int16))
    with pytest.raises(ValueError, match="candidates\\[1\\] has shape \\(3, 8, 8\\).*H x W x 3"):
        pair(torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="candidates\\[1\\] has shape \\(8, 8\\)"):
        pair(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="candidates\\[1\\] has shape \\(0, 8, 3\\)"):
        pair(np.zeros((0, 8, 3), np.uint8))
    with pytest.raises(TypeError, match="candidates\\[1\\] must be .*H x W x 3 image.*got list"):
        pair([image])
    with pytest.raises(TypeError, match="images\\[0\\] must be a path, a PIL image"):
        judge.pointwise("image_understanding", "r", question="q", images=[None])
    video = lambda v: judge.pointwise("video_generation", v, caption="x")  # noqa: E731
    with pytest.raises(ValueError, match="candidates\\[0\\] has shape \\(8, 8, 3\\).*F x H x W x 3"):
        video(image)
    with pytest.raises(ValueError, match="candidates\\[0\\]'s frames differ in size"):
        video([image, np.zeros((4, 8, 3), np.uint8)])
    with pytest.raises(ValueError, match="candidates\\[0\\]\\[1\\] has shape \\(2, 8, 8, 3\\)"):
        video([image, np.zeros((2, 8, 8, 3), np.uint8)])
    with pytest.raises(TypeError, match="candidates\\[0\\] must be .*a list of frames"):
        video([])
    with pytest.raises(ValueError, match="candidates\\[0\\] has shape \\(8, 8, 3\\).*F x H x W x 3"):
        video(PIL.Image.new("RGB", (8, 8)))


def test_reasoned_equals_the_rust_judge(judge, judge_dir, tmp_path):
    image = IMAGES / "anyres_0.png"
    request = JudgeRequest("image_generation", "pointwise", [image], caption="a red square")
    result = judge.reasoned(request, max_new_tokens=4)
    expected = rust(judge_dir, "--task", "image-generation", "--point", image, "--caption", "a red square",
                    "--reasoned", "--max-new-tokens", 4)  # fmt: skip
    assert (result.text, result.generated_tokens) == (expected["answer"], expected["generated_tokens"])
    assert_same(result, expected)
    # A random model's answer holds no "Final Score": unparsable, never a score of 0.
    assert (result.parse_status, result.parse_error) == ("unparsable", expected["parse_error"])
    assert result.parsed_score is None and result.parsed_verdict is None
    assert 0 <= result.reasoning_tokens <= result.generated_tokens <= 4
    # Pixels in memory reason as their file; a sampled answer is the seed's.
    untimed = lambda r: dataclasses.replace(r, seconds=0.0)  # noqa: E731
    pixels = np.random.default_rng(5).integers(0, 256, (19, 13, 3), dtype=np.uint8)
    png = JudgeRequest("image_generation", "pointwise", [write_png(tmp_path / "p.png", pixels)], caption="x")
    in_memory = JudgeRequest("image_generation", "pointwise", [torch.from_numpy(pixels)], caption="x")
    assert untimed(judge.reasoned(in_memory, max_new_tokens=4)) == untimed(judge.reasoned(png, max_new_tokens=4))
    sampled = [judge.reasoned(request, max_new_tokens=6, temperature=1.5, top_p=0.9, seed=s) for s in (3, 3, 4)]
    assert untimed(sampled[0]) == untimed(sampled[1]) and untimed(sampled[0]) != untimed(sampled[2])


def test_reasoned_pairwise_reports_the_verdict_it_read(judge_dir):
    # A user's template whose verdict phrases are single letters: the sampled answer states one.
    template = json.loads((pathlib.Path(__file__).resolve().parents[3] / "templates" / "demo"
                           / "image_understanding.pairwise.json").read_text())  # fmt: skip
    template["answer"]["verdict"] = {"first": ["e"], "second": ["a"], "tie": ["o"]}
    lettered = Judge(judge_dir)
    lettered.set_template("image_understanding", "pairwise", json=json.dumps(template))
    request = JudgeRequest("image_understanding", "pairwise", ["It is red.", "Blue, I think."],
                           question="What color is the square?", images=[IMAGES / "anyres_0.png"])  # fmt: skip
    result = lettered.reasoned(request, max_new_tokens=12, temperature=1.5, top_p=0.9, seed=3)
    assert result.parse_status == "ok" and result.parsed_verdict in ("A", "B", "tie"), result.text
    assert result.parse_error is None and result.parsed_score is None and result.position_consistent is None
    assert len(result.probs) == 3 and result.verdict in ("A", "B", "tie")


def test_user_template_changes_the_prompt_as_the_rust_override_does(judge, judge_dir, tmp_path):
    template = json.loads((pathlib.Path(__file__).resolve().parents[3] / "templates" / "demo"
                           / "image_generation.pointwise.json").read_text())  # fmt: skip
    template["answer"]["score"]["max"] = 10
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(template))
    image = IMAGES / "anyres_0.png"
    expected = rust(judge_dir, "--task", "image-generation", "--point", image, "--caption", "x", "--template", path)
    built_in = judge.pointwise("image_generation", image, caption="x")
    for source in ({"path": path}, {"json": json.dumps(template)}):
        mine = Judge(judge_dir)
        mine.set_template("image-generation", "pointwise", **source)
        result = mine.pointwise("image_generation", image, caption="x")
        assert_same(result, expected)
        assert len(result.probs) == 10 and result.prompt_tokens != built_in.prompt_tokens
    # Bad templates are refused by name, the judge unchanged.
    with pytest.raises(ValueError, match="unknown task 'image'"):
        mine.set_template("image", "pointwise", path=path)
    with pytest.raises(ValueError, match="unknown mode 'pointed'"):
        mine.set_template("image_generation", "pointed", path=path)
    with pytest.raises(UnirewardError, match="/no/such/template.json"):
        mine.set_template("image_generation", "pointwise", path="/no/such/template.json")
    with pytest.raises(UnirewardError, match="both set"):
        mine.set_template("image_generation", "pointwise", path=path, json="{}")
    with pytest.raises(UnirewardError, match="both NULL"):
        mine.set_template("image_generation", "pointwise")
    with pytest.raises(UnirewardError, match="say image_generation.pairwise, the template is image_generation.point"):
        mine.set_template("image_generation", "pairwise", path=path)
    with pytest.raises(UnirewardError, match="`user_template->json`"):
        mine.set_template("image_generation", "pointwise", json="{not json")
    assert mine.pointwise("image_generation", image, caption="x").probs == result.probs


def test_bad_generation_options_are_refused_by_name(judge):
    request = JudgeRequest("image_generation", "pointwise", [IMAGES / "anyres_0.png"], caption="x")
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1"):
        judge.reasoned(request, max_new_tokens=0)
    for options, field in [({"temperature": -1.0}, "temperature"), ({"top_p": 0.0}, "top_p"),
                           ({"top_p": 2.0}, "top_p"), ({"stop_tokens": [VOCAB]}, "stop_tokens")]:  # fmt: skip
        with pytest.raises(UnirewardError, match=f"`cfg->{field}`"):
            judge.reasoned(request, **options)
    with pytest.raises(UnirewardError, match="caption"):
        judge.reasoned(JudgeRequest("image_generation", "pointwise", [IMAGES / "anyres_0.png"]))
