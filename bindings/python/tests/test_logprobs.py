"""Per-sequence log-probs, plain and fused with the LM head: forward against the float64 reference, the library's
backward against autograd of that reference, gradcheck in float32, and opcheck."""

import pytest
import torch

import reference as ref
import unireward
from conftest import close


def batch(gen, n=3, t=7, v=11, dtype=torch.float32):
    logits = torch.randn(n, t, v, generator=gen, dtype=torch.float64) * 2
    labels = torch.randint(0, v, (n, t), generator=gen)
    labels[:, :2] = -100  # a prompt
    labels[1, -1] = -100
    mask = (torch.rand(n, t, generator=gen) > 0.2).to(torch.int64)
    return logits.to(dtype), labels, mask


@pytest.mark.parametrize("average", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sequence_logprobs(average, dtype, gen):
    logits, labels, mask = batch(gen, dtype=dtype)
    x64 = logits.double().requires_grad_()
    e_logps, e_counts, e_mean, e_entropy = ref.sequence_logprobs(x64, labels, mask, average=average)
    g = torch.randn(e_logps.shape, generator=gen, dtype=torch.float64)
    (e_logps * g).sum().backward()

    x = logits.clone().requires_grad_()
    out = unireward.sequence_logprobs(x, labels, mask, average=average)
    (out.logps * g.float()).sum().backward()
    close(out.logps, e_logps, dtype, scale=10)
    torch.testing.assert_close(out.token_counts, e_counts.float())
    close(out.mean_logits, e_mean, dtype)
    close(out.entropy, e_entropy, dtype)
    assert x.grad.dtype == dtype
    close(x.grad, x64.grad, dtype)


def test_sequence_logprobs_gradcheck_float32(gen):
    logits, labels, _ = batch(gen, n=2, t=3, v=5)
    f = lambda x: unireward.sequence_logprobs(x, labels).logps
    assert torch.autograd.gradcheck(f, (logits.requires_grad_(),), eps=1e-2, atol=2e-3, rtol=2e-2)


@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_linear_logprobs(with_bias, gen):
    n, t, h, v = 4, 6, 8, 13
    hidden = torch.randn(n, t, h, generator=gen, dtype=torch.float64)
    weight = torch.randn(v, h, generator=gen, dtype=torch.float64) * 0.3
    bias = torch.randn(v, generator=gen, dtype=torch.float64) if with_bias else None
    labels = torch.randint(0, v, (n, t), generator=gen)
    labels[:, 0] = -100
    leaves64 = [x.clone().requires_grad_() for x in (hidden, weight) + ((bias,) if with_bias else ())]
    e_logps, e_counts, e_mean, _ = ref.fused_linear_logprobs(
        leaves64[0], leaves64[1], leaves64[2] if with_bias else None, labels
    )
    g = torch.randn(n, generator=gen, dtype=torch.float64)
    (e_logps * g).sum().backward()

    leaves = [x.float().requires_grad_() for x in (hidden, weight) + ((bias,) if with_bias else ())]
    out = unireward.fused_linear_logprobs(
        leaves[0], leaves[1], labels, bias=leaves[2] if with_bias else None, chunk_tokens=5
    )
    (out.logps * g.float()).sum().backward()
    close(out.logps, e_logps, scale=10)
    close(out.mean_logits, e_mean)
    for got, expected in zip(leaves, leaves64):
        close(got.grad, expected.grad, scale=10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_in_place_backward_overwrites_the_logits(dtype, gen):
    """Through an LM head: the same gradients as the out-of-place backward, and the logits' memory holds them."""
    hidden = torch.randn(3, 5, 8, generator=gen, dtype=dtype)
    head = torch.randn(13, 8, generator=gen, dtype=dtype)
    labels = torch.randint(0, 13, (3, 5), generator=gen)
    grads, kept = [], []
    for in_place in (False, True):
        h, w = hidden.clone().requires_grad_(), head.clone().requires_grad_()
        logits = h @ w.T
        unireward.sequence_logprobs(logits, labels, in_place_backward=in_place).logps.sum().backward()
        grads.append((h.grad, w.grad))
        kept.append(logits.detach())
    for out_of_place, in_place in zip(*grads):
        torch.testing.assert_close(in_place, out_of_place)
    x = kept[0].detach().requires_grad_()
    unireward.sequence_logprobs(x, labels).logps.sum().backward()
    torch.testing.assert_close(kept[1], x.grad)  # the logits now hold d(sum logps)/d logits


def test_bad_label_raises(gen):
    logits, labels, _ = batch(gen)
    labels[0, 3] = 11
    with pytest.raises(unireward.UnirewardError) as info:
        unireward.sequence_logprobs(logits, labels)
    assert info.value.status_name == "UR_ERROR_INVALID_ARGUMENT"
    assert info.value.message


def test_non_contiguous_inputs_are_made_contiguous(gen):
    logits, labels, _ = batch(gen)
    wide = torch.cat([logits, logits], dim=2)[:, :, ::2]
    assert not wide.is_contiguous()
    close(unireward.sequence_logprobs(wide, labels).logps,
          unireward.sequence_logprobs(wide.contiguous(), labels).logps)


def test_opcheck_logprobs(gen):
    logits, labels, mask = batch(gen, n=2, t=3, v=5)
    ops = torch.ops.unireward
    torch.library.opcheck(ops.sequence_logprobs, (logits.requires_grad_(), labels, mask, -100, False, False))
    torch.library.opcheck(ops.sequence_logprobs, (logits, labels, None, -100, True, False))
    hidden = torch.randn(2, 3, 4, requires_grad=True)
    weight = torch.randn(5, 4, requires_grad=True)
    bias = torch.randn(5, requires_grad=True)
    torch.library.opcheck(ops.fused_linear_logprobs, (hidden, weight, bias, labels, None, -100, False, 2))
    torch.library.opcheck(ops.fused_linear_logprobs, (hidden, weight, None, labels, mask, -100, True, 0))
    # The backward ops on their own (the checks above reach them through autograd); no double backward.
    logits, hidden, weight, bias = (t.detach() for t in (logits, hidden, weight, bias))
    _, counts, _, _, lse = ops.sequence_logprobs(logits, labels, mask, -100, False, False)
    g = torch.randn(2)
    torch.library.opcheck(ops.sequence_logprobs_backward, (logits, labels, mask, lse, counts, g, -100, False))
    torch.library.opcheck(ops.sequence_logprobs_backward_, (logits.clone(), labels, mask, lse, counts, g, -100, False))
    lse = ops.fused_linear_logprobs(hidden, weight, bias, labels, None, -100, True, 2)[4]
    torch.library.opcheck(ops.fused_linear_logprobs_backward, (hidden, weight, bias, labels, None, lse, g, -100, True, 2))


def test_torch_compile_traces_the_ops(gen):
    logits, labels, _ = batch(gen)

    @torch.compile(backend="aot_eager", fullgraph=True)
    def f(x):
        return unireward.sequence_logprobs(x, labels).logps.sum()

    x = logits.clone().requires_grad_()
    f(x).backward()
    y = logits.clone().requires_grad_()
    unireward.sequence_logprobs(y, labels).logps.sum().backward()
    close(x.grad, y.grad)
