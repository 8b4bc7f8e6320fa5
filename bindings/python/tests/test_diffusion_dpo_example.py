"""bindings/python/examples/diffusion_dpo.py: a diffusers UNet aligned with `unireward.diffusion_dpo_loss` trains,
its gradients reach the UNet and equal those of diffusers' formula in float64 PyTorch, and bad pairs files are
refused with the line and field named."""

import importlib.util
import json
import math
import pathlib
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import close

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "diffusion_dpo.py"
_spec = importlib.util.spec_from_file_location("diffusion_dpo_example", EXAMPLE)
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)


def diffusers_loss(preds, beta_dpo):
    """diffusers' train_diffusion_dpo.py (sigmoid loss) in float64: `beta_dpo` is unireward's β / 2."""
    mse = lambda pred: ((pred.double() - preds.target.double()) ** 2).mean(dim=[1, 2, 3])
    model_w, model_l = mse(preds.model).chunk(2)
    ref_w, ref_l = mse(preds.reference).chunk(2)
    logits = (ref_w - ref_l) - (model_w - model_l)
    return -F.logsigmoid(beta_dpo * logits).mean()


def unet_grads(trainer):
    return [p.grad.clone() for p in trainer.unet.parameters()]


def test_example_runs_and_loss_is_finite(tmp_path, gen):
    seed = int(torch.randint(0, 2**31 - 1, (), generator=gen))
    history = example.main(["--steps", "3", "--seed", str(seed), "--pairs", example.draw_demo_pairs(str(tmp_path))])
    assert len(history) == 3
    for metrics in history:
        assert all(math.isfinite(v) for v in metrics.values()), metrics
        assert metrics["grad_norm"] > 0


def test_step_updates_the_unet_only(tmp_path, gen):
    seed = int(torch.randint(0, 2**31 - 1, (), generator=gen))
    pairs = example.read_pairs(example.draw_demo_pairs(str(tmp_path)))
    trainer = example.make_trainer(16, beta=200.0, lr=1e-3, seed=seed)
    before = [p.detach().clone() for p in trainer.unet.parameters()]
    ref_before = [p.clone() for p in trainer.ref_unet.parameters()]
    trainer.step(*example.load_batch(pairs[:2], 16), torch.Generator().manual_seed(seed))
    for name, p in trainer.unet.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reached {name}"
    assert all(not torch.equal(a, p) for a, p in zip(before, trainer.unet.parameters()))
    assert all(torch.equal(a, p) for a, p in zip(ref_before, trainer.ref_unet.parameters()))


def test_loss_and_unet_gradients_equal_diffusers_formula(tmp_path, gen):
    seed = int(torch.randint(0, 2**31 - 1, (), generator=gen))
    beta = float(torch.empty(()).uniform_(50.0, 500.0, generator=gen))
    pairs = example.read_pairs(example.draw_demo_pairs(str(tmp_path)))
    trainer = example.make_trainer(16, beta=beta, lr=1e-3, seed=seed)
    # One step first, so the UNet differs from its reference (at the start the two predict alike).
    trainer.step(*example.load_batch(pairs[:2], 16), torch.Generator().manual_seed(seed))
    chosen, rejected, captions = example.load_batch(pairs[1:4], 16)
    hidden = trainer.encoder(captions)

    def backward(loss_of):
        trainer.unet.zero_grad()
        preds = example.predictions(trainer.unet, trainer.ref_unet, trainer.scheduler, chosen, rejected, hidden,
                                    torch.Generator().manual_seed(seed + 1))  # fmt: skip
        loss = loss_of(preds)
        loss.backward()
        return loss.detach(), unet_grads(trainer)

    loss, grads = backward(lambda preds: example.dpo_loss(preds, beta)[0])
    expected, expected_grads = backward(lambda preds: diffusers_loss(preds, beta / 2))
    assert 0.0 < expected.item() and math.isfinite(expected.item())
    close(loss, expected)
    for (name, _), g, e in zip(trainer.unet.named_parameters(), grads, expected_grads):
        assert e.abs().sum() > 0, f"no gradient reached {name}"
        torch.testing.assert_close(g.double(), e.double(), rtol=1e-4, atol=1e-5 * e.abs().max().item(), msg=name)


def write_pairs(tmp_path, records):
    (tmp_path / "media").mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "media" / name).write_bytes(b"")
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


@pytest.mark.parametrize(
    "records, message",
    [
        ([{"caption": "x", "chosen_image": "a.png", "rejected_image": "b.png"}, "{oops"], ":2: not JSON"),
        ([{"chosen_image": "a.png", "rejected_image": "b.png"}], ":1: `caption`"),
        ([{"caption": "x", "chosen_image": "a.png"}], ":1: `rejected_image`"),
        ([{"caption": "x", "chosen_image": "missing.png", "rejected_image": "b.png"}], "`chosen_image` image"),
        ([{"caption": "x", "chosen_video": "a.mp4", "rejected_video": "b.mp4"}], ":1: a video pair"),
        ([[1, 2]], ":1: a pair is a JSON object"),
        (["", "  "], "no pairs"),
    ],
)
def test_bad_pairs_file_is_refused(tmp_path, records, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        example.read_pairs(write_pairs(tmp_path, records), str(tmp_path / "media"))


def test_reads_the_filters_generation_pairs(tmp_path):
    """A line as `unireward filter` writes it for image generation; paths relative to --media-folder."""
    line = {"id": "c1", "index": 0, "task": "image_generation", "strategy": "pair-rank+point-sift",
            "caption": "a cat", "chosen_image": "a.png", "rejected_image": "b.png", "chosen_index": 3,
            "rejected_index": 7, "chosen_score": 4.5, "rejected_score": None}  # fmt: skip
    (pair,) = example.read_pairs(write_pairs(tmp_path, [line]), str(tmp_path / "media"))
    assert (pair.caption, pair.chosen, pair.rejected) == ("a cat", str(tmp_path / "media/a.png"),
                                                          str(tmp_path / "media/b.png"))  # fmt: skip
