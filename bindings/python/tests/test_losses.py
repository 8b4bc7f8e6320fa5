"""The preference and reward-model losses against TRL's and diffusers' formulas in float64, with their gradients
against autograd of those formulas, and `opcheck` on each op."""

import pytest
import torch

import reference as ref
import unireward
from conftest import close

LOSS_TYPES = ["sigmoid", "hinge", "ipo", "robust", "bco_pair", "exo_pair", "nca_pair", "sppo_hard", "apo_zero",
              "apo_down", "simpo", "orpo"]


def logps(gen, p, scale=1.0):
    # ORPO needs log-probs below 0 (probabilities below 1).
    return -(torch.rand(p, generator=gen, dtype=torch.float64) * 3 + 0.1) * scale


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_dpo_loss_matches_trl(loss_type, gen):
    p = 37
    pc, pr, rc, rr = (logps(gen, p) for _ in range(4))
    kw = dict(beta=0.3, label_smoothing=0.1 if loss_type in ("sigmoid", "robust", "exo_pair") else 0.0)
    pc64, pr64 = pc.clone().requires_grad_(), pr.clone().requires_grad_()
    losses, c_rew, r_rew = ref.dpo_losses(pc64, pr64, rc, rr, loss_type, **kw)
    losses.mean().backward()

    pc32, pr32 = pc.float().requires_grad_(), pr.float().requires_grad_()
    loss, chosen_rewards, rejected_rewards, metrics = unireward.dpo_loss(
        pc32, pr32, rc.float(), rr.float(), loss_type=loss_type, **kw
    )
    loss.backward()
    close(loss, losses.mean())
    close(pc32.grad, pc64.grad, scale=1e-2)
    close(pr32.grad, pr64.grad, scale=1e-2)
    close(chosen_rewards, c_rew)
    close(rejected_rewards, r_rew)
    close(metrics["rewards/chosen"], c_rew.mean())
    close(metrics["rewards/rejected"], r_rew.mean())
    close(metrics["rewards/margins"], (c_rew - r_rew).mean())
    close(metrics["rewards/accuracies"], (c_rew > r_rew).double().mean())
    close(metrics["logps/chosen"], pc.mean())
    close(metrics["logps/rejected"], pr.mean())


def test_dpo_loss_length_normalised_and_rpo(gen):
    p = 16
    pc, pr, rc, rr = (logps(gen, p, scale=20.0) for _ in range(4))
    lc = torch.randint(1, 30, (p,), generator=gen)
    lr = torch.randint(1, 30, (p,), generator=gen)
    pc64 = pc.clone().requires_grad_()
    losses, _, _ = ref.dpo_losses(pc64 / lc, pr / lr, rc / lc, rr / lr, "ipo", beta=0.5)
    nll = -pc64.sum() / lc.sum()
    (losses.mean() + 0.7 * nll).backward()
    pc32 = pc.float().requires_grad_()
    loss, _, _, metrics = unireward.dpo_loss(
        pc32, pr.float(), rc.float(), rr.float(), beta=0.5, loss_type="ipo", chosen_lengths=lc, rejected_lengths=lr,
        rpo_alpha=0.7,
    )
    loss.backward()
    close(loss, losses.mean() + 0.7 * nll)
    close(pc32.grad, pc64.grad, scale=1e-2)
    close(metrics["nll_loss"], nll)


def test_dpo_gradient_scales_with_upstream(gen):
    pc, pr, rc, rr = (logps(gen, 5).float() for _ in range(4))
    pc.requires_grad_()
    loss, _ = unireward.ops.dpo_loss(pc, pr, rc, rr)
    (3.0 * loss).backward()
    g3 = pc.grad.clone()
    pc.grad = None
    unireward.ops.dpo_loss(pc, pr, rc, rr)[0].backward()
    close(g3, 3.0 * pc.grad)


def test_dpo_bf16(gen):
    pc, pr, rc, rr = (logps(gen, 9) for _ in range(4))
    loss, _, _, _ = unireward.dpo_loss(*(t.bfloat16() for t in (pc, pr, rc, rr)))
    expected = ref.dpo_losses(*(t.bfloat16().double() for t in (pc, pr, rc, rr)))[0].mean()
    close(loss, expected, torch.bfloat16)


def test_bradley_terry(gen):
    p = 23
    c, r, m = (torch.randn(p, generator=gen, dtype=torch.float64) for _ in range(3))
    c64, r64 = c.clone().requires_grad_(), r.clone().requires_grad_()
    expected = ref.bradley_terry_loss(c64, r64, m, center_rewards_coefficient=0.01)
    expected.backward()
    c32, r32 = c.float().requires_grad_(), r.float().requires_grad_()
    loss, metrics = unireward.bradley_terry_loss(c32, r32, m.float(), center_rewards_coefficient=0.01)
    loss.backward()
    close(loss, expected)
    close(c32.grad, c64.grad)
    close(r32.grad, r64.grad)
    close(metrics["accuracy"], (c > r).double().mean())
    close(metrics["margins"], (c - r).mean())


@pytest.mark.parametrize("method", ["all_pairs", "plackett_luce"])
def test_kwise(method, gen):
    g, k = 6, 5
    rewards = torch.randn(g, k, generator=gen, dtype=torch.float64)
    order = torch.stack([torch.randperm(k, generator=gen) for _ in range(g)])
    r64 = rewards.clone().requires_grad_()
    expected = ref.kwise_loss(r64, order, method)
    expected.backward()
    r32 = rewards.float().requires_grad_()
    loss, accuracy = unireward.kwise_loss(r32, order, method=method)
    loss.backward()
    close(loss, expected)
    close(r32.grad, r64.grad)
    ranked = rewards.gather(1, order)
    i, j = torch.triu_indices(k, k, offset=1)
    close(accuracy, (ranked[:, i] > ranked[:, j]).double().mean())


def test_diffusion_dpo(gen):
    shape = (3, 4, 5, 6)
    mw, ml, rw, rl, tw, tl = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(6))
    mw64, ml64 = mw.clone().requires_grad_(), ml.clone().requires_grad_()
    expected = ref.diffusion_dpo_loss(mw64, ml64, rw, rl, tw, tl, beta=50.0)
    expected.backward()
    mw32, ml32 = mw.float().requires_grad_(), ml.float().requires_grad_()
    loss, metrics = unireward.diffusion_dpo_loss(mw32, ml32, rw.float(), rl.float(), tw.float(), tl.float(), beta=50.0)
    loss.backward()
    close(loss, expected)
    close(mw32.grad, mw64.grad, scale=1e-2)
    close(ml32.grad, ml64.grad, scale=1e-2)
    close(metrics["model_mse_winner"], ((mw - tw) ** 2).flatten(1).mean(1).mean())


def test_losses_gradcheck_float32(gen):
    """gradcheck in float32 (the library takes f32/bf16/f16): central differences with a large step."""
    pc, pr, rc, rr = (logps(gen, 4).float() for _ in range(4))
    kw = dict(eps=1e-2, atol=2e-3, rtol=2e-2, nondet_tol=0.0, fast_mode=False)
    f = lambda c, r: unireward.ops.dpo_loss(c, r, rc, rr, beta=0.5)[0]
    assert torch.autograd.gradcheck(f, (pc.requires_grad_(), pr.requires_grad_()), **kw)
    bt = lambda c, r: unireward.bradley_terry_loss(c, r)[0]
    assert torch.autograd.gradcheck(bt, (rc.clone().requires_grad_(), rr.clone().requires_grad_()), **kw)


def test_bad_input_raises_with_status(gen):
    pc = torch.randn(4)
    with pytest.raises(unireward.UnirewardError) as info:
        unireward.ops.dpo_loss(pc, torch.randn(5), pc, pc)
    assert info.value.status_name == "UR_ERROR_SHAPE"
    assert "policy_rejected" in str(info.value)
    with pytest.raises(unireward.UnirewardError) as info:
        unireward.ops.dpo_loss(pc, pc, pc, pc, beta=-1.0)
    assert info.value.status_name == "UR_ERROR_INVALID_ARGUMENT"
    assert "beta" in str(info.value)


def test_opcheck_losses(gen):
    pc, pr, rc, rr = (logps(gen, 4).float() for _ in range(4))
    ops = torch.ops.unireward
    lengths = torch.tensor([1, 2, 3, 4])
    cases = [
        (ops.dpo_loss, (pc.requires_grad_(), pr, rc, rr, None, None, "sigmoid", 0.1, 0.0, False, None, 0.5, 0.0)),
        (ops.dpo_loss, (pc, pr, None, None, lengths, lengths, "simpo", 2.0, 0.0, False, None, 0.5, 0.0)),
        (ops.bradley_terry_loss, (rc.clone().requires_grad_(), rr, None, 0.0)),
        (ops.kwise_loss, (torch.randn(2, 3, requires_grad=True), None, "plackett_luce")),
        (ops.diffusion_dpo_loss, (*(torch.randn(2, 3, requires_grad=i < 2) for i in range(6)), 10.0)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)
