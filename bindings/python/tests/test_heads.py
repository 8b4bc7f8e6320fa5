"""The scalar reward head and the verdict head against float64 references, with their backward kernels."""

import pytest
import torch

import reference as ref
import unireward
from conftest import close


@pytest.mark.parametrize("with_bias", [False, True])
def test_scalar_reward(with_bias, gen):
    n, t, h, c = 4, 5, 6, 3
    hidden = torch.randn(n, t, h, generator=gen, dtype=torch.float64)
    weight = torch.randn(c, h, generator=gen, dtype=torch.float64)
    bias = torch.randn(c, generator=gen, dtype=torch.float64) if with_bias else None
    ends = torch.randint(0, t, (n,), generator=gen)
    leaves64 = [x.clone().requires_grad_() for x in (hidden, weight) + ((bias,) if with_bias else ())]
    expected = ref.scalar_reward(leaves64[0], ends, leaves64[1], leaves64[2] if with_bias else None)
    g = torch.randn(n, c, generator=gen, dtype=torch.float64)
    (expected * g).sum().backward()
    leaves = [x.detach().float().requires_grad_() for x in leaves64]
    rewards = unireward.scalar_reward(leaves[0], ends, leaves[1], leaves[2] if with_bias else None)
    (rewards * g.float()).sum().backward()
    close(rewards, expected)
    for got, want in zip(leaves, leaves64):
        close(got.grad, want.grad)


@pytest.mark.parametrize("values", [None, [1.0, 2.0, 5.0]])
def test_verdict_head(values, gen):
    b, v = 5, 20
    classes = [[3, 7], [11], [0, 15, 19]]
    logits = torch.randn(b, v, generator=gen, dtype=torch.float64) * 3
    x64 = logits.clone().requires_grad_()
    e_probs, e_logp, e_score = ref.verdict_head(x64, classes, values)
    g_logp = torch.randn(b, 3, generator=gen, dtype=torch.float64)
    g_probs = torch.randn(b, 3, generator=gen, dtype=torch.float64)
    objective = (e_logp * g_logp).sum() + (e_probs * g_probs).sum()
    if values is not None:
        objective = objective + e_score.sum()
    objective.backward()

    x = logits.float().requires_grad_()
    out = unireward.verdict_head(x, classes, values)
    objective = (out.log_probs * g_logp.float()).sum() + (out.probs * g_probs.float()).sum()
    if values is None:
        assert out.expected_score is None
    else:
        close(out.expected_score, e_score)
        objective = objective + out.expected_score.sum()
    objective.backward()
    close(out.probs, e_probs)
    close(out.log_probs, e_logp)
    close(x.grad, x64.grad)


def test_verdict_head_rejects_overlapping_classes():
    with pytest.raises(unireward.UnirewardError) as info:
        unireward.verdict_head(torch.randn(2, 5), [[1, 2], [2]])
    assert info.value.status_name == "UR_ERROR_INVALID_ARGUMENT"


def test_verdict_head_checks_values_against_the_classes():
    # One value for two classes: refused in Python, and by the library through the raw op with its own count.
    logits, offsets, ids = torch.randn(2, 5), torch.tensor([0, 1, 2]), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="1 entries for 2 classes"):
        unireward.verdict_head(logits, [[0], [1]], values=[1.0])
    with pytest.raises(unireward.UnirewardError, match="num_class_values") as info:
        torch.ops.unireward.verdict_head(logits, offsets, ids, [1.0])
    assert info.value.status_name == "UR_ERROR_INVALID_ARGUMENT"


def test_heads_gradcheck_float32(gen):
    hidden = torch.randn(2, 3, 4, generator=gen).requires_grad_()
    weight = torch.randn(2, 4, generator=gen).requires_grad_()
    ends = torch.tensor([2, 0])
    kw = dict(eps=1e-2, atol=2e-3, rtol=2e-2)
    assert torch.autograd.gradcheck(lambda h, w: unireward.scalar_reward(h, ends, w), (hidden, weight), **kw)
    logits = torch.randn(2, 6, generator=gen).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: unireward.verdict_head(x, [[0, 1], [4]]).log_probs, (logits,), **kw)


def test_opcheck_heads(gen):
    ops = torch.ops.unireward
    hidden = torch.randn(2, 3, 4, requires_grad=True)
    weight = torch.randn(2, 4, requires_grad=True)
    bias = torch.randn(2, requires_grad=True)
    ends = torch.tensor([2, 0])
    torch.library.opcheck(ops.scalar_reward, (hidden, ends, weight, bias))
    torch.library.opcheck(ops.scalar_reward, (hidden, ends, weight, None))
    offsets, ids = torch.tensor([0, 2, 3]), torch.tensor([0, 1, 4])
    logits = torch.randn(2, 6, requires_grad=True)
    torch.library.opcheck(ops.verdict_head, (logits, offsets, ids, None))
    torch.library.opcheck(ops.verdict_head, (logits, offsets, ids, [1.0, 3.0]))
    # The backward ops on their own (the checks above reach them through autograd); no double backward.
    hidden, weight, bias, logits = (t.detach() for t in (hidden, weight, bias, logits))
    torch.library.opcheck(ops.scalar_reward_backward, (hidden, ends, weight, bias, torch.randn(2, 2)))
    g = torch.randn(2, 2)
    torch.library.opcheck(ops.verdict_head_backward, (logits, offsets, ids, [1.0, 3.0], g, torch.randn(2)))
    torch.library.opcheck(ops.verdict_head_backward, (logits, offsets, ids, None, g, None))
