"""`unireward.SftTrainer`, `unireward.DpoTrainer` and `unireward.RewardTrainer` against `unireward train-judge`,
`unireward dpo --ref-on-the-fly` and `unireward train-reward` (the command line built with the library) on the same
records in the same batches: bitwise the same losses, metrics and saved checkpoint; and clear errors on bad input."""

import json
import pathlib
import shutil
import subprocess

import pytest
import torch

import unireward
from unireward import SftTrainer, UnirewardError

FIXTURES = pathlib.Path(__file__).resolve().parents[3] / "tests" / "fixtures"


@pytest.fixture
def model_dir(tmp_path):
    """A tiny Qwen2 chat checkpoint: the model fixture with the tokenizer and chat template fixtures."""
    out = tmp_path / "model"
    out.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(FIXTURES / "qwen2" / "chat_tied" / f, out)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(FIXTURES / "qwen2" / "tokenizer" / f, out)
    return out


def records(n):
    """`n` conversations, record `i` answering in `i + 1` words: strictly longer with `i`, so one batch of them all,
    grouped by length, is ordered longest first whatever the run's seed."""
    return [{"id": f"r{i}", "conversations": [{"from": "human", "value": f"Is {i} good?"},
                                              {"from": "gpt", "value": " ".join(["yes"] * (i + 1))}]}
            for i in range(n)]  # fmt: skip


def test_python_steps_equal_train_judge_bitwise(model_dir, tmp_path):
    n, steps = 4, 5
    data = records(n)
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    cli = pathlib.Path(unireward.library_path()).parent / "unireward"
    assert cli.is_file(), f"{cli} is missing: build it with `cargo build --release` (scripts/test.sh does)"
    args = ["--epochs", str(steps), "--batch-size", str(n), "--lr", "1e-3", "--weight-decay", "0.01", "--seed", "3",
            "--freeze", "layers.0.mlp"]  # fmt: skip
    done = subprocess.run([str(cli), "train-judge", "--model", str(model_dir), "--data", str(tmp_path / "data.jsonl"),
                           "--out", str(tmp_path / "cli"), *args], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    logged = [json.loads(line) for line in (tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()]
    assert len(logged) == steps

    trainer = SftTrainer(model_dir, total_steps=steps, lr=1e-3, weight_decay=0.01, freeze=["layers.0.mlp"])
    for want in logged:
        got = trainer.step(list(reversed(data)))
        for key in ("step", "loss", "tokens", "grad_norm", "lr"):
            assert got[key] == want[key], f"step {want['step']} {key}: {got[key]!r} vs {want[key]!r}"
    assert logged[-1]["loss"] < logged[0]["loss"]
    saved = trainer.save(tmp_path / "py")
    assert saved == tmp_path / "py" / f"checkpoint-{steps}"
    theirs = tmp_path / "cli" / f"checkpoint-{steps}"
    for f in ("model.safetensors", "trainer_state/optimizer.safetensors", "config.json", "tokenizer.json"):
        assert (saved / f).read_bytes() == (theirs / f).read_bytes(), f"{f} differs from train-judge's"


def test_per_task_losses_equal_train_judge_bitwise(model_dir, tmp_path):
    n, steps = 4, 3
    data = [dict(r, task="ab"[i % 2]) for i, r in enumerate(records(n))]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    cli = pathlib.Path(unireward.library_path()).parent / "unireward"
    done = subprocess.run([str(cli), "train-judge", "--model", str(model_dir), "--data", str(tmp_path / "data.jsonl"),
                           "--out", str(tmp_path / "cli"), "--epochs", str(steps), "--batch-size", str(n), "--lr",
                           "1e-3", "--seed", "3"], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    logged = [json.loads(line) for line in (tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()]
    # train-judge numbers the tasks as its file first names them (a, b); the trainer as it is told (b, a).
    trainer = SftTrainer(model_dir, total_steps=steps, lr=1e-3, tasks=["b", "a"])
    for want in logged:
        got = trainer.step(list(reversed(data)))
        assert got["loss"] == want["loss"]
        assert got["task_loss"] == {"a": want["task_loss"][0], "b": want["task_loss"][1]}, (got, want)
    only_a = SftTrainer(model_dir, total_steps=1, tasks=["a", "b"]).step(data[::2])
    assert only_a["task_loss"]["b"] is None and only_a["task_loss"]["a"] == only_a["loss"]
    assert "task_loss" not in SftTrainer(model_dir, total_steps=1).step(data)

    with pytest.raises(UnirewardError, match=r"`micro_batches\[0\]\[1\]` is of task \"b\""):
        SftTrainer(model_dir, total_steps=1, tasks=["a"]).step(data)
    with pytest.raises(UnirewardError, match="named twice"):
        SftTrainer(model_dir, total_steps=1, tasks=["a", "a"])
    with pytest.raises(UnirewardError, match="the task list is empty"):
        SftTrainer(model_dir, total_steps=1, tasks=[])
    with pytest.raises(TypeError, match="`tasks` must be a list"):
        SftTrainer(model_dir, total_steps=1, tasks="ab")


def test_micro_batches_accumulate(model_dir):
    """Two micro-batches are one step on their concatenation (the token-weighted mean)."""
    data = records(3)
    whole = SftTrainer(model_dir, total_steps=1, lr=1e-3).step(data)
    parts = SftTrainer(model_dir, total_steps=1, lr=1e-3).step(data, micro_batch_size=2)
    assert whole["tokens"] == parts["tokens"]
    assert whole["loss"] == pytest.approx(parts["loss"], rel=1e-5)


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_a_saved_trainer_resumes_bitwise(model_dir, tmp_path, kind):
    """Two steps, `save`, a new trainer with `resume_from`, one more step: the uninterrupted trainer's third step."""
    make = {"sft": lambda **kw: SftTrainer(model_dir, total_steps=3, lr=1e-3, **kw),
            "dpo": lambda **kw: unireward.DpoTrainer(model_dir, total_steps=3, beta=0.5, lr=1e-3, **kw)}[kind]
    data = records(3) if kind == "sft" else pairs(3)
    whole = make()
    want = [whole.step(data[k:] + data[:k]) for k in range(3)]
    first = make()
    for k in range(2):
        first.step(data[k:] + data[:k])
    saved = first.save(tmp_path / "first")
    first.close()
    resumed = make(resume_from=saved)
    assert resumed.steps_done == 2
    assert resumed.step(data[2:] + data[:2]) == want[2]
    assert resumed.save(tmp_path / "resumed").joinpath("model.safetensors").read_bytes() == \
        whole.save(tmp_path / "whole").joinpath("model.safetensors").read_bytes()  # fmt: skip
    with pytest.raises(ValueError, match="`resume_from`"):
        make(resume_from=tmp_path / "no-such-checkpoint")


def test_bad_input_is_a_clear_error(model_dir, tmp_path):
    with pytest.raises(UnirewardError, match="no-such-model.*does not exist"):
        SftTrainer(tmp_path / "no-such-model", total_steps=3)
    with pytest.raises(TypeError, match="learning_rate"):
        SftTrainer(model_dir, total_steps=3, learning_rate=1e-3)
    with pytest.raises(ValueError, match="`total_steps`"):
        SftTrainer(model_dir, total_steps=0)
    with pytest.raises(ValueError, match="`lr`"):
        SftTrainer(model_dir, total_steps=3, lr=-1.0)
    with pytest.raises(ValueError, match="`schedule`"):
        SftTrainer(model_dir, total_steps=3, schedule="step")

    trainer = SftTrainer(model_dir, total_steps=1)
    good = records(1)[0]
    with pytest.raises(UnirewardError, match=r"`micro_batches\[0\]\[1\]`: not a JSON object"):
        trainer.step([good, "{not json"])
    with pytest.raises(UnirewardError, match=r"`micro_batches\[1\]\[0\]`: no assistant"):
        trainer.step([good, {"conversations": [{"from": "human", "value": "Hi?"}]}], micro_batch_size=1)
    with pytest.raises(UnirewardError, match="cat.png"):
        trainer.step([{"image": "cat.png", "conversations": [{"from": "human", "value": "<image> ok?"},
                                                             {"from": "gpt", "value": "Yes."}]}])  # fmt: skip
    with pytest.raises(TypeError, match=r"`records\[0\]`"):
        trainer.step([3])
    with pytest.raises(TypeError, match="list of records"):
        trainer.step(good)
    with pytest.raises(ValueError, match="`micro_batch_size`"):
        trainer.step([good], micro_batch_size=0)
    assert trainer.steps_done == 0
    assert trainer.step([good])["step"] == 1
    with pytest.raises(UnirewardError, match="`total_steps`"):
        trainer.step([good])
    trainer.close()
    with pytest.raises(RuntimeError, match="closed"):
        trainer.step([good])


def pairs(n):
    """`n` preference pairs, pair `i` with a chosen answer of `i + 1` words: strictly longer with `i` (see
    `records`)."""
    return [{"prompt": f"Is {i} good?", "chosen": " ".join(["yes"] * (i + 1)), "rejected": "No."} for i in range(n)]


# Plain sigmoid DPO, and LD-DPO with WPO (the chosen answers grow from one word, the rejected one is "No.": pairs of
# unequal lengths both ways), as `DpoTrainer` keywords and as `unireward dpo` flags.
DPO_OPTIONS = [({}, []), ({"ld_alpha": 0.5, "use_weighting": True}, ["--ld-alpha", "0.5", "--use-weighting"])]


@pytest.mark.parametrize("options,flags", DPO_OPTIONS)
def test_python_dpo_steps_equal_unireward_dpo_bitwise(model_dir, tmp_path, options, flags):
    n, steps = 3, 4
    data = pairs(n)
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    cli = pathlib.Path(unireward.library_path()).parent / "unireward"
    assert cli.is_file(), f"{cli} is missing: build it with `cargo build --release` (scripts/test.sh does)"
    args = ["--epochs", str(steps), "--batch-size", str(n), "--lr", "1e-3", "--beta", "0.5", "--label-smoothing",
            "0.1", "--seed", "9", "--ref-on-the-fly", *flags]  # fmt: skip
    done = subprocess.run([str(cli), "dpo", "--policy", str(model_dir), "--pairs", str(tmp_path / "pairs.jsonl"),
                           "--out", str(tmp_path / "cli"), *args], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    logged = [json.loads(line) for line in (tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()]
    assert len(logged) == steps

    trainer = unireward.DpoTrainer(model_dir, total_steps=steps, beta=0.5, label_smoothing=0.1, lr=1e-3, **options)
    f32 = lambda x: torch.tensor(x, dtype=torch.float32).item()  # the log's f32 metrics, as printed  # noqa: E731
    for want in logged:
        got = trainer.step(list(reversed(data)))
        for key in ("step", "loss", "tokens", "pairs", "grad_norm", "lr"):
            assert got[key] == want[key], f"step {want['step']} {key}: {got[key]!r} vs {want[key]!r}"
        for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                    "logps/rejected"):  # fmt: skip
            assert got[key.replace("/", "_")] == f32(want[key]), f"step {want['step']} {key}"
    assert logged[-1]["loss"] < logged[0]["loss"]
    saved = trainer.save(tmp_path / "py")
    theirs = tmp_path / "cli" / f"checkpoint-{steps}"
    for f in ("model.safetensors", "trainer_state/optimizer.safetensors", "config.json"):
        assert (saved / f).read_bytes() == (theirs / f).read_bytes(), f"{f} differs from unireward dpo's"


def test_dpo_bad_input_is_a_clear_error(model_dir, tmp_path):
    with pytest.raises(UnirewardError, match="no-ref.*does not exist"):
        unireward.DpoTrainer(model_dir, total_steps=2, reference_dir=tmp_path / "no-ref")
    with pytest.raises(ValueError, match="`loss_type` 'dpo'"):
        unireward.DpoTrainer(model_dir, total_steps=2, loss_type="dpo")
    with pytest.raises(ValueError, match="`beta`"):
        unireward.DpoTrainer(model_dir, total_steps=2, beta=0.0)
    with pytest.raises(UnirewardError, match=r"`ld_alpha` must be in \[0, 1\], got -1"):
        unireward.DpoTrainer(model_dir, total_steps=2, ld_alpha=-1.0)
    with pytest.raises(ValueError, match="1 `loss_weights` for 2 loss types"):
        unireward.DpoTrainer(model_dir, total_steps=2, loss_type=["sigmoid", "hinge"], loss_weights=[1.0])
    trainer = unireward.DpoTrainer(model_dir, total_steps=2, loss_type=["sigmoid", "hinge"], loss_weights=[0.8, 0.4])
    with pytest.raises(UnirewardError, match=r"`micro_batches\[0\]\[1\]`"):
        trainer.step([pairs(1)[0], {"prompt": "Hi?", "chosen": "Yes."}])
    assert trainer.steps_done == 0
    assert trainer.step(pairs(2), micro_batch_size=1)["pairs"] == 2


def rankings(n):
    """`n` ranked lists of 3 responses, the best of `i + 1` words (strictly longer with `i`, see `records`)."""
    return [{"prompt": f"Rank {i}?", "responses": [" ".join(["yes"] * (i + 1)), "maybe", "no"]} for i in range(n)]


# Bradley–Terry with margins and TRL's centring term on pairs; Plackett–Luce on ranked lists.
REWARD_CASES = [
    ("bradley-terry", {"center_rewards_coefficient": 0.01}, ["--center-rewards-coefficient", "0.01"], "--pairs",
     lambda n: [dict(p, margin=0.25 * i) for i, p in enumerate(pairs(n))]),
    ("kwise", {}, [], "--rankings", rankings),
]  # fmt: skip


@pytest.mark.parametrize("loss,options,flags,data_flag,make", REWARD_CASES)
def test_python_reward_steps_equal_train_reward_bitwise(model_dir, tmp_path, loss, options, flags, data_flag, make):
    n, steps = 3, 4
    data = make(n)
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    cli = pathlib.Path(unireward.library_path()).parent / "unireward"
    assert cli.is_file(), f"{cli} is missing: build it with `cargo build --release` (scripts/test.sh does)"
    args = ["--epochs", str(steps), "--batch-size", str(n), "--lr", "1e-3", "--weight-decay", "0.01", "--loss", loss,
            *flags]  # fmt: skip
    done = subprocess.run([str(cli), "train-reward", "--model", str(model_dir), data_flag, str(tmp_path / "data.jsonl"),
                           "--out", str(tmp_path / "cli"), *args], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    logged = [json.loads(line) for line in (tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()]
    assert len(logged) == steps

    trainer = unireward.RewardTrainer(model_dir, total_steps=steps, loss=loss, lr=1e-3, weight_decay=0.01, **options)
    for want in logged:
        got = trainer.step(list(reversed(data)))
        for key in ("step", "loss", "accuracy", "rewards/chosen", "rewards/rejected", "margin", "groups", "tokens",
                    "grad_norm", "lr"):  # fmt: skip
            assert got[key.replace("/", "_")] == want[key], f"step {want['step']} {key}"
    assert logged[-1]["loss"] < logged[0]["loss"]
    saved = trainer.save(tmp_path / "py")
    theirs = tmp_path / "cli" / f"checkpoint-{steps}"
    for f in ("model.safetensors", "trainer_state/optimizer.safetensors", "config.json"):
        assert (saved / f).read_bytes() == (theirs / f).read_bytes(), f"{f} differs from unireward train-reward's"


def test_reward_bad_input_is_a_clear_error(model_dir, tmp_path):
    with pytest.raises(ValueError, match="`loss` must be one of"):
        unireward.RewardTrainer(model_dir, total_steps=2, loss="hinge")
    with pytest.raises(ValueError, match="`center_rewards_coefficient`"):
        unireward.RewardTrainer(model_dir, total_steps=2, center_rewards_coefficient=-1.0)
    with pytest.raises(UnirewardError, match="Bradley"):
        unireward.RewardTrainer(model_dir, total_steps=2, loss="kwise", center_rewards_coefficient=0.1)
    trainer = unireward.RewardTrainer(model_dir, total_steps=2)
    with pytest.raises(UnirewardError, match=r"`micro_batches\[0\]\[1\]`"):
        trainer.step([pairs(1)[0], rankings(1)[0]])
    assert trainer.steps_done == 0
    assert trainer.step(pairs(2), micro_batch_size=1)["groups"] == 2
    kwise = unireward.RewardTrainer(model_dir, total_steps=2, loss="kwise-all-pairs")
    with pytest.raises(UnirewardError, match="ranks as many"):
        kwise.step([rankings(1)[0], {"prompt": "Rank?", "responses": ["a", "b"]}])
    assert kwise.step(rankings(2))["groups"] == 2
