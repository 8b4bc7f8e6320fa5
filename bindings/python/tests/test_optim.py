"""`unireward.AdamW` against `torch.optim.AdamW` + `clip_grad_norm_` + transformers' warm-up schedules, and its
refusals of bad arguments."""

import copy
import io
import math

import pytest
import torch

import unireward


def schedule_factor(kind: str, step: int, warmup: int, total: int) -> float:
    """transformers' `get_{constant,linear,cosine}_schedule_with_warmup` multiplier at `step` (0-based)."""
    if step < warmup:
        return step / max(1, warmup)
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def tiny_model(gen: torch.Generator, dtype=torch.float32) -> torch.nn.Module:
    model = torch.nn.Sequential(
        torch.nn.Linear(7, 13), torch.nn.LayerNorm(13), torch.nn.GELU(), torch.nn.Linear(13, 5, bias=False)
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model.to(dtype)


def assert_params_close(ours, reference, rel):
    """Each tensor within `rel` of its largest magnitude."""
    for (name, a), b in zip(ours, reference):
        err = (a.double() - b.double()).abs().max().item()
        scale = b.double().abs().max().item()
        assert err <= rel * scale, f"{name}: max error {err:.3e}, {err / scale:.3e} of its largest value {scale:.3e}"


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_ten_steps_equal_torch_adamw_with_clipping_and_schedule(gen, kind):
    steps, warmup, lr, max_norm = 10, 3, 5e-2, 0.5
    ours_model = tiny_model(gen)
    ref_model = copy.deepcopy(ours_model)
    data = [(torch.randn(6, 7, generator=gen), torch.randn(6, 5, generator=gen)) for _ in range(steps)]

    opt = unireward.AdamW(ours_model.named_parameters(), lr=lr, betas=(0.85, 0.99), eps=1e-7, weight_decay=0.1,
                          max_grad_norm=max_norm, schedule=kind, warmup_steps=warmup, total_steps=steps)  # fmt: skip
    ref = torch.optim.AdamW(ref_model.parameters(), lr=lr, betas=(0.85, 0.99), eps=1e-7, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(ref, lambda s: schedule_factor(kind, s, warmup, steps))

    clipped = 0
    for step, (x, y) in enumerate(data):
        for model in (ours_model, ref_model):
            torch.nn.functional.mse_loss(model(x), y).backward()
        ref_lr = ref.param_groups[0]["lr"]
        ref_norm = torch.nn.utils.clip_grad_norm_(ref_model.parameters(), max_norm).item()
        ref.step()
        sched.step()
        opt.step()
        report = opt.last_step
        assert report["step"] == step + 1
        assert report["lr"] == pytest.approx(ref_lr, rel=1e-12, abs=1e-15)
        assert report["grad_norm"] == pytest.approx(ref_norm, rel=1e-5)
        clipped += report["clip_coef"] < 1
        opt.zero_grad()
        ref.zero_grad()
    assert clipped > 0, "the test should exercise clipping"
    assert opt.steps_done == steps
    assert_params_close(list(ours_model.named_parameters()), list(ref_model.parameters()), 1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_parameters_are_their_fp32_masters_rounded(gen, dtype):
    """A bf16/f16 parameter follows torch's f32 AdamW on an f32 copy given the same gradients, rounded."""
    model = tiny_model(gen, dtype)
    masters = [p.detach().float().clone().requires_grad_() for p in model.parameters()]
    opt = unireward.AdamW(model.parameters(), lr=1e-2, max_grad_norm=1.0, schedule="cosine", warmup_steps=2,
                          total_steps=8)  # fmt: skip
    ref = torch.optim.AdamW(masters, lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(ref, lambda s: schedule_factor("cosine", s, 2, 8))
    for _ in range(8):
        x, y = torch.randn(4, 7, generator=gen).to(dtype), torch.randn(4, 5, generator=gen).to(dtype)
        torch.nn.functional.mse_loss(model(x).float(), y.float()).backward()
        for m, p in zip(masters, model.parameters()):
            m.grad = p.grad.float()
        torch.nn.utils.clip_grad_norm_(masters, 1.0)
        ref.step()
        sched.step()
        opt.step()
        opt.zero_grad()
    for p, m in zip(model.parameters(), masters):
        rounded = m.detach().to(dtype)
        ulp = torch.finfo(dtype).eps * rounded.float().abs().clamp_min(torch.finfo(dtype).tiny)
        # The master agrees to ~1e-7 relative, so a value may round the other way only at a tie.
        assert ((p.float() - rounded.float()).abs() <= ulp).all()
        assert (p == rounded).float().mean() > 0.99


def test_closure_loss_is_returned(gen):
    model = tiny_model(gen)
    opt = unireward.AdamW(model.parameters())
    x, y = torch.randn(3, 7, generator=gen), torch.randn(3, 5, generator=gen)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    before = [p.detach().clone() for p in model.parameters()]
    loss = opt.step(closure)
    assert loss is not None and loss.item() > 0
    assert all(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(lr=-1e-3), "`lr`"),
        (dict(lr=float("nan")), "`lr`"),
        (dict(betas=(0.9, 1.0)), "`betas[1]`"),
        (dict(eps=-1.0), "`eps`"),
        (dict(weight_decay=-0.1), "`weight_decay`"),
        (dict(max_grad_norm=0.0), "`max_grad_norm`"),
        (dict(schedule="step"), "`schedule`"),
        (dict(warmup_steps=-1), "`warmup_steps`"),
        (dict(schedule="cosine"), "`total_steps`"),
    ],
)
def test_bad_hyperparameters_name_the_argument(kwargs, argument):
    w = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match=argument.replace("[", r"\[").replace("]", r"\]")):
        unireward.AdamW([w], **kwargs)


def test_bad_parameters_name_the_parameter():
    leaf = torch.zeros(4, 4, requires_grad=True)
    with pytest.raises(ValueError, match="`params` is empty"):
        unireward.AdamW([])
    with pytest.raises(ValueError, match=r"`params\[1\]` is not a leaf"):
        unireward.AdamW([leaf, leaf * 2])
    with pytest.raises(ValueError, match="`w.t` is not contiguous"):
        unireward.AdamW([("w.t", torch.zeros(4, 3).t().requires_grad_())])
    with pytest.raises(TypeError, match=r"`params\[0\]` is torch.int64"):
        unireward.AdamW([torch.zeros(3, dtype=torch.int64)])
    with pytest.raises(TypeError, match=r"`params\[0\]` must be a tensor"):
        unireward.AdamW([3.0])
    with pytest.raises(ValueError, match=r"`params\[1\]` overlaps `params\[0\]`"):
        unireward.AdamW([leaf, leaf])
    with pytest.raises(ValueError, match=r"overlaps"):
        unireward.AdamW([("whole", leaf), ("row", leaf.detach()[1].requires_grad_())])


def test_bad_gradients_and_changed_parameters_are_refused_before_any_write():
    w = torch.ones(4, requires_grad=True)
    b = torch.ones(2, requires_grad=True)
    opt = unireward.AdamW([("w", w), ("b", b)], lr=0.1)
    w.grad = torch.ones(4)
    with pytest.raises(ValueError, match="`b` has no gradient"):
        opt.step()
    assert torch.equal(w.detach(), torch.ones(4))
    b.grad = torch.ones(2)
    b.data = b.data.to(torch.bfloat16)  # the parameter's dtype changed after the optimizer was made
    b.grad = torch.ones(2, dtype=torch.bfloat16)
    with pytest.raises(unireward.UnirewardError, match="`b`"):
        opt.step()
    assert torch.equal(w.detach(), torch.ones(4)), "a refused step wrote a parameter"
    opt.close()
    with pytest.raises(RuntimeError, match="closed"):
        opt.step()


def train_steps(model, opt, gen, steps):
    """`steps` optimizer steps of `model` on fresh random batches (a squared-output loss)."""
    for _ in range(steps):
        x = torch.randn(4, 7, generator=gen).to(next(model.parameters()).dtype)
        opt.zero_grad()
        model(x).float().pow(2).mean().backward()
        opt.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_resumes_bitwise_through_torch_save(gen, dtype):
    """3 steps, state saved (through torch.save), 3 more, against an optimizer rebuilt from the saved model and
    state doing the same 3 steps: bitwise the same parameters, steps and learning rates."""
    model = tiny_model(gen, dtype)
    kwargs = dict(lr=0.02, max_grad_norm=0.5, schedule="cosine", warmup_steps=2, total_steps=8)
    opt = unireward.AdamW(model.named_parameters(), **kwargs)
    train_steps(model, opt, gen, 3)
    state = opt.state_dict()
    assert state["step"] == 3 and opt.steps_done == 3
    masters = sum(p.numel() for p in model.parameters()) if dtype != torch.float32 else 0
    assert state["exp_avg"].numel() == state["exp_avg_sq"].numel() == sum(p.numel() for p in model.parameters())
    assert state["master"].numel() == masters
    assert (state["exp_avg_sq"] > 0).any() and torch.isfinite(state["exp_avg"]).all()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": state}, buffer)
    batches = torch.Generator().manual_seed(5)
    train_steps(model, opt, batches, 3)

    buffer.seek(0)
    saved = torch.load(buffer)
    twin = tiny_model(torch.Generator().manual_seed(99), dtype)
    twin.load_state_dict(saved["model"])
    resumed = unireward.AdamW(twin.named_parameters(), **kwargs)
    assert resumed.steps_done == 0
    resumed.load_state_dict(saved["opt"])
    assert resumed.steps_done == 3
    train_steps(twin, resumed, torch.Generator().manual_seed(5), 3)
    assert resumed.last_step == opt.last_step
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(a, b), name


def test_load_state_dict_refuses_another_optimizers_state_before_any_change(gen):
    model = tiny_model(gen)
    opt = unireward.AdamW(model.named_parameters(), lr=0.1)
    train_steps(model, opt, gen, 1)
    state = opt.state_dict()
    fresh = unireward.AdamW(tiny_model(gen).named_parameters(), lr=0.1)
    bad_cases = [
        ({**state, "names": state["names"][::-1]}, "names"),
        ({**state, "shapes": [(1,)] + state["shapes"][1:]}, "shapes"),
        ({**state, "exp_avg": state["exp_avg"][1:]}, "`exp_avg`"),
        ({**state, "exp_avg_sq": state["exp_avg_sq"].double()}, "`exp_avg_sq`"),
        ({**state, "step": -1}, "`step`"),
        ({k: v for k, v in state.items() if k != "master"}, "master"),
    ]
    for bad, fragment in bad_cases:
        with pytest.raises(ValueError, match=fragment):
            fresh.load_state_dict(bad)
        assert fresh.steps_done == 0
        assert torch.equal(fresh.state_dict()["exp_avg"], torch.zeros_like(state["exp_avg"]))
    with pytest.raises(TypeError, match="dict"):
        fresh.load_state_dict([state])
    fresh.load_state_dict(state)
    assert fresh.steps_done == 1 and torch.equal(fresh.state_dict()["exp_avg"], state["exp_avg"])
