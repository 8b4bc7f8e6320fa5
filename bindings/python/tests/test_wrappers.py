"""The drop-in conveniences: TRL-shaped `dpo_loss` metrics and the Liger-shaped `FusedLinearDPOLoss`, against
float64 references with materialised logits."""

import pytest
import torch
import torch.nn.functional as F

import reference as ref
import unireward
from conftest import close

TRL_KEYS = {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
            "logps/rejected"}


def test_dpo_loss_metric_keys(gen):
    pc, pr, rc, rr = (-torch.rand(3, generator=gen) * 5 for _ in range(4))
    _, metrics = unireward.ops.fused_dpo_loss(pc, pr, rc, rr)
    assert TRL_KEYS <= metrics.keys()
    losses, chosen_rewards, rejected_rewards = unireward.dpo_loss(pc, pr, rc, rr)
    assert losses.shape == chosen_rewards.shape == rejected_rewards.shape == (3,)
    assert not chosen_rewards.requires_grad
    with pytest.raises(ValueError, match="unknown DPO loss type 'nope'; known: sigmoid, hinge"):
        unireward.dpo_loss(pc, pr, rc, rr, loss_type="nope")
    with pytest.raises(ValueError, match="bco_pair needs `running`"):
        unireward.dpo_loss(pc, pr, rc, rr, loss_type="bco_pair")


def liger_reference(weight, hidden, target, bias, ref_hidden, ref_weight, beta, compute_nll, average, ignore=-100):
    """Liger's fused linear DPO (sigmoid) on materialised float64 logits."""
    def logps(h, w, b):
        logits = h @ w.T + (0 if b is None else b)
        logp = logits.log_softmax(-1)
        keep = target != ignore
        tok = logp.gather(-1, torch.where(keep, target, 0).unsqueeze(-1)).squeeze(-1) * keep
        return (tok.sum(-1) / keep.sum(-1)) if average else tok.sum(-1), tok, keep

    p = target.shape[0] // 2
    lp, tok, keep = logps(hidden, weight, bias)
    loss = -F.logsigmoid(beta * ((lp[:p] - lp[p:]) - 0)).mean()
    if ref_hidden is not None:
        with torch.no_grad():
            rlp, _, _ = logps(ref_hidden, ref_weight, None)
        loss = -F.logsigmoid(beta * ((lp[:p] - rlp[:p]) - (lp[p:] - rlp[p:]))).mean()
    nll = -tok[:p].sum() / keep[:p].sum()
    return loss + nll if compute_nll else loss, lp, nll


@pytest.mark.parametrize("use_ref_model,compute_nll_loss,average_log_prob", [
    (False, False, False), (True, True, False), (True, False, True),
])
def test_fused_linear_dpo_matches_liger_formula(use_ref_model, compute_nll_loss, average_log_prob, gen):
    pairs, t, h, v = 3, 6, 8, 17
    weight = torch.randn(v, h, generator=gen, dtype=torch.float64) * 0.5
    bias = torch.randn(v, generator=gen, dtype=torch.float64)
    hidden = torch.randn(2 * pairs, t, h, generator=gen, dtype=torch.float64)
    target = torch.randint(0, v, (2 * pairs, t), generator=gen)
    target[:, :2] = -100
    ref_hidden = torch.randn(2 * pairs, t, h, generator=gen, dtype=torch.float64) if use_ref_model else None
    ref_weight = weight + 0.1 if use_ref_model else None

    w64, h64, b64 = (x.clone().requires_grad_() for x in (weight, hidden, bias))
    e_loss, e_lp, e_nll = liger_reference(w64, h64, target, b64, ref_hidden, ref_weight, 0.2, compute_nll_loss,
                                          average_log_prob)
    e_loss.backward()

    module = unireward.FusedLinearDPOLoss(beta=0.2, compute_nll_loss=compute_nll_loss, use_ref_model=use_ref_model,
                                          average_log_prob=average_log_prob)
    w, hd, b = (x.float().requires_grad_() for x in (weight, hidden, bias))
    f = lambda x: None if x is None else x.float()
    loss, aux = module(w, hd, target, b, f(ref_hidden), f(ref_weight), None)
    loss.backward()
    chosen_logps, rejected_logps, _, _, nll, chosen_rewards, rejected_rewards = aux
    close(loss, e_loss)
    close(chosen_logps, e_lp[:pairs], scale=10)
    close(rejected_logps, e_lp[pairs:], scale=10)
    close(nll, e_nll)
    assert chosen_rewards.shape == rejected_rewards.shape == (pairs,)
    for got, want in ((w, w64), (hd, h64), (b, b64)):
        close(got.grad, want.grad, scale=10)


def test_fused_linear_dpo_under_torch_compile(gen):
    """The module traces into one graph (fake tensors for every op) and gives eager's loss and gradients."""
    weight = torch.randn(11, 6, generator=gen)
    hidden = torch.randn(4, 5, 6, generator=gen)
    target = torch.randint(0, 11, (4, 5), generator=gen)
    module = unireward.FusedLinearDPOLoss(beta=0.3, compute_nll_loss=True, use_ref_model=False)
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    results = []
    for f in (module, compiled):
        w, h = weight.clone().requires_grad_(), hidden.clone().requires_grad_()
        loss, _ = f(w, h, target)
        loss.backward()
        results.append((loss, w.grad, h.grad))
    for eager, traced in zip(*results):
        close(traced, eager)


@pytest.mark.parametrize("average_log_prob", [False, True])
def test_fused_linear_dpo_length_normalised_loss_type(average_log_prob, gen):
    """IPO averages over tokens whether the module sums (the op divides by the counts) or averages already."""
    weight = torch.randn(11, 6, generator=gen)
    hidden = torch.randn(4, 5, 6, generator=gen)
    target = torch.randint(0, 11, (4, 5), generator=gen)
    target[:, :2] = -100
    module = unireward.FusedLinearDPOLoss(beta=0.5, use_ref_model=False, loss_type="ipo",
                                          average_log_prob=average_log_prob)
    loss, _ = module(weight, hidden, target)
    logps = unireward.fused_linear_logprobs(hidden, weight, target, average=True).logps.double()
    expected = ref.dpo_losses(logps[:2], logps[2:], None, None, "ipo", beta=0.5)[0].mean()
    close(loss, expected)
