"""The preference and reward-model losses against TRL's and diffusers' formulas in float64, with their gradients
against autograd of those formulas, and `opcheck` on each op."""

import pytest
import torch

import reference as ref
import unireward
from conftest import close

LOSS_TYPES = ["sigmoid", "hinge", "ipo", "robust", "bco_pair", "exo_pair", "nca_pair", "sppo_hard", "apo_zero",
              "apo_down", "simpo", "orpo", "aot", "aot_pair", "discopop"]


def logps(gen, p, scale=1.0):
    # ORPO needs log-probs below 0 (probabilities below 1).
    return -(torch.rand(p, generator=gen, dtype=torch.float64) * 3 + 0.1) * scale


# SimPO and ORPO have no reference to leave out.
WITH_REFERENCE_FREE = [(t, free) for t in LOSS_TYPES for free in (False, True) if not (free and t in ("simpo", "orpo"))]


@pytest.mark.parametrize(("loss_type", "reference_free"), WITH_REFERENCE_FREE)
def test_dpo_loss_matches_trl(loss_type, reference_free, gen):
    """TRL's `dpo_loss` per pair: losses, their Jacobian (through a weighted sum), rewards; TRL's reference_free."""
    p = 37
    pc, pr, rc, rr = (logps(gen, p) for _ in range(4))
    w = torch.rand(p, generator=gen, dtype=torch.float64)
    kw = dict(beta=0.3, label_smoothing=0.1 if loss_type in ("sigmoid", "robust", "exo_pair", "aot") else 0.0,
              reference_free=reference_free)
    running = unireward.RunningMean(0.2, 3.0)
    # TRL's running mean, updated with this batch before use
    delta = (0.2 * 3.0 + 0.3 * torch.cat([pc - rc, pr - rr]).mean().item()) / 4.0
    pc64, pr64 = pc.clone().requires_grad_(), pr.clone().requires_grad_()
    losses, c_rew, r_rew = ref.dpo_losses(pc64, pr64, rc, rr, loss_type, bco_delta=delta, **kw)
    (losses * w).sum().backward()

    pc32, pr32 = pc.float().requires_grad_(), pr.float().requires_grad_()
    got, chosen_rewards, rejected_rewards = unireward.dpo_loss(pc32, pr32, rc.float(), rr.float(), loss_type,
                                                               running=running, **kw)  # fmt: skip
    (got * w.float()).sum().backward()
    close(got, losses)
    # Absolute tolerance on the gradients' own scale: f32 rounds (pc - rc) - (pr - rr) to ~1e-7 of the log-probs,
    # which IPO's gradient 2 (h - 1/(2β)) carries at full size even where it crosses zero.
    close(pc32.grad, pc64.grad, scale=max(1e-2, pc64.grad.abs().max().item()))
    close(pr32.grad, pr64.grad, scale=max(1e-2, pr64.grad.abs().max().item()))
    close(chosen_rewards, c_rew)
    close(rejected_rewards, r_rew)
    if loss_type == "bco_pair":
        assert running.count == 4.0
        close(torch.tensor(running.mean), torch.tensor(delta))


def test_fused_dpo_loss_length_normalised_and_rpo(gen):
    p = 16
    pc, pr, rc, rr = (logps(gen, p, scale=20.0) for _ in range(4))
    lc = torch.randint(1, 30, (p,), generator=gen)
    lr = torch.randint(1, 30, (p,), generator=gen)
    pc64 = pc.clone().requires_grad_()
    losses, _, _ = ref.dpo_losses(pc64 / lc, pr / lr, rc / lc, rr / lr, "ipo", beta=0.5)
    nll = -pc64.sum() / lc.sum()
    (losses.mean() + 0.7 * nll).backward()
    pc32 = pc.float().requires_grad_()
    loss, metrics = unireward.ops.fused_dpo_loss(
        pc32, pr.float(), rc.float(), rr.float(), beta=0.5, loss_type="ipo", chosen_lengths=lc, rejected_lengths=lr,
        rpo_alpha=0.7,
    )
    loss.backward()
    close(loss, losses.mean() + 0.7 * nll)
    close(pc32.grad, pc64.grad, scale=1e-2)
    close(metrics["nll_loss"], nll)


def test_fused_dpo_loss_mixture_weights_and_ld(gen):
    """TRL's loss_type list with loss_weights, WPO pair weights and LD-DPO in one call, against the per-type sum."""
    p = 8
    pc, pr, rc, rr = (logps(gen, p, scale=10.0) for _ in range(4))
    cv, rv = pc * 0.3, pr * 0.6  # the verbose parts' log-probs
    w = torch.rand(p, generator=gen, dtype=torch.float64)
    pc64, pr64, cv64, rv64 = (t.clone().requires_grad_() for t in (pc, pr, cv, rv))
    c, r = pc64 - 0.5 * cv64, pr64 - 0.5 * rv64  # ld_alpha = 0.5
    terms = [ref.dpo_losses(c, r, rc, rr, t, beta=0.2)[0] * wt for t, wt in [("sigmoid", 0.8), ("aot_pair", 0.4)]]
    expected = ((terms[0] + terms[1]) * w).mean()
    expected.backward()
    ins = [t.float().requires_grad_() for t in (pc, pr, cv, rv)]
    loss, metrics = unireward.ops.fused_dpo_loss(
        ins[0], ins[1], rc.float(), rr.float(), loss_type=["sigmoid", "aot_pair"], loss_weights=[0.8, 0.4], beta=0.2,
        ld_alpha=0.5, policy_chosen_verbose=ins[2], policy_rejected_verbose=ins[3], pair_weights=w.float(),
    )
    loss.backward()
    close(loss, expected)
    for got, want in zip(ins, (pc64, pr64, cv64, rv64)):
        close(got.grad, want.grad, scale=1e-2)
    close(metrics["rewards/chosen"], 1.2 * 0.2 * (c - rc).mean())


def test_dpo_gradient_scales_with_upstream(gen):
    pc, pr, rc, rr = (logps(gen, 5).float() for _ in range(4))
    pc.requires_grad_()
    loss, _ = unireward.ops.fused_dpo_loss(pc, pr, rc, rr)
    (3.0 * loss).backward()
    g3 = pc.grad.clone()
    pc.grad = None
    unireward.ops.fused_dpo_loss(pc, pr, rc, rr)[0].backward()
    close(g3, 3.0 * pc.grad)


def test_dpo_bf16(gen):
    pc, pr, rc, rr = (logps(gen, 9) for _ in range(4))
    losses, _, _ = unireward.dpo_loss(*(t.bfloat16() for t in (pc, pr, rc, rr)))
    assert losses.dtype == torch.bfloat16
    expected = ref.dpo_losses(*(t.bfloat16().double() for t in (pc, pr, rc, rr)))[0]
    close(losses, expected, torch.bfloat16)


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
    f = lambda c, r: unireward.ops.fused_dpo_loss(c, r, rc, rr, beta=0.5)[0]
    assert torch.autograd.gradcheck(f, (pc.requires_grad_(), pr.requires_grad_()), **kw)
    bt = lambda c, r: unireward.bradley_terry_loss(c, r)[0]
    assert torch.autograd.gradcheck(bt, (rc.clone().requires_grad_(), rr.clone().requires_grad_()), **kw)


def test_bad_input_raises_with_status(gen):
    pc = torch.randn(4)
    with pytest.raises(unireward.UnirewardError) as info:
        unireward.ops.fused_dpo_loss(pc, torch.randn(5), pc, pc)
    assert info.value.status_name == "UR_ERROR_SHAPE"
    assert "policy_rejected" in str(info.value)
    with pytest.raises(unireward.UnirewardError) as info:
        unireward.ops.fused_dpo_loss(pc, pc, pc, pc, beta=-1.0)
    assert info.value.status_name == "UR_ERROR_INVALID_ARGUMENT"
    assert "beta" in str(info.value)


def test_opcheck_losses(gen):
    pc, pr, rc, rr = (logps(gen, 4).float() for _ in range(4))
    ops = torch.ops.unireward
    lengths = torch.tensor([1, 2, 3, 4])
    cases = [
        (ops.fused_dpo_loss, (pc.requires_grad_(), pr, rc, rr, None, None, None, None, None, "sigmoid", [1.0], 0.1,
                              0.0, False, "reverse_kl", 1.0, None, None, 0.5, 0.05, 0.0, 0.0)),
        (ops.fused_dpo_loss, (pc, pr, None, None, lengths, lengths, None, None, None, "simpo", [1.0], 2.0, 0.0, False,
                              "reverse_kl", 1.0, None, None, 0.5, 0.05, 0.0, 0.0)),
        (ops.dpo_pair_losses, (pc, pr, rc, rr, "aot", 0.1, 0.0, False, "reverse_kl", 1.0, 0.5, 0.05, 0.0, 0.0)),
        (ops.bradley_terry_loss, (rc.clone().requires_grad_(), rr, None, 0.0)),
        (ops.kwise_loss, (torch.randn(2, 3, requires_grad=True), None, "plackett_luce")),
        (ops.diffusion_dpo_loss, (*(torch.randn(2, 3, requires_grad=i < 2) for i in range(6)), 10.0)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)
