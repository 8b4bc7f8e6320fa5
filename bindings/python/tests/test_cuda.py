"""CUDA tensors: every op on the GPU against the same op on the CPU, run on a non-default stream (the ops use
torch's current stream). Skipped without a CUDA device (scripts/gpu_check.sh machines run them)."""

import pytest
import torch

import unireward
from test_train import model_dir  # noqa: F401 (the fixture)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def on_side_stream(f, *args):
    """Runs `f` on a fresh stream and its outputs' gradients too, then waits for it."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = f(*args)
    stream.synchronize()
    return out


def both(f, *cpu_args):
    """`f` on the CPU arguments and on CUDA copies of them (leaves that require grad get gradients on both)."""
    cuda_args = [a.detach().cuda().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
                 for a in cpu_args]  # fmt: skip
    return f(*cpu_args), on_side_stream(f, *cuda_args), cuda_args


def assert_same(cpu, cuda, tol=1e-4):
    torch.testing.assert_close(cuda.cpu().double(), cpu.double(), rtol=tol, atol=tol, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logprobs_and_dpo_on_cuda(dtype):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(4, 9, 50, generator=g) * 2).to(dtype).requires_grad_()
    labels = torch.randint(0, 50, (4, 9), generator=g)
    labels[:, :3] = -100
    ref = -torch.rand(4, generator=g) * 20

    def f(x, y, r):
        lp = unireward.sequence_logprobs(x, y).logps
        loss = unireward.dpo_loss(lp[:2], lp[2:], r[:2], r[2:])[0].mean()
        loss.backward()
        return loss

    cpu, cuda, (x_cuda, _, _) = both(f, logits, labels, ref)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert_same(cpu, cuda, tol)
    assert_same(logits.grad, x_cuda.grad, tol)


def test_fused_linear_and_heads_on_cuda():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 5, 8, generator=g, requires_grad=True)
    weight = torch.randn(30, 8, generator=g, requires_grad=True)
    labels = torch.randint(0, 30, (2, 5), generator=g)
    ends = torch.tensor([4, 2])

    def f(h, w, y, e):
        lp = unireward.fused_linear_logprobs(h, w, y, chunk_tokens=3).logps
        rewards = unireward.scalar_reward(h, e, w[:3])
        verdict = unireward.verdict_head(h[:, -1] @ w.T, [[1, 2], [5]], values=[1.0, 5.0])
        (lp.sum() + rewards.sum() + verdict.expected_score.sum()).backward()
        return torch.cat([lp, rewards.flatten(), verdict.log_probs.flatten()])

    cpu, cuda, (h_cuda, w_cuda, _, _) = both(f, hidden, weight, labels, ends)
    assert_same(cpu, cuda)
    assert_same(hidden.grad, h_cuda.grad)
    assert_same(weight.grad, w_cuda.grad)


def test_losses_and_compare_on_cuda():
    g = torch.Generator().manual_seed(2)
    scores = torch.randn(5, 4, generator=g)
    pointwise = torch.randn(5, 4, generator=g)
    preds = [torch.randn(2, 3, 4, generator=g, requires_grad=i < 2) for i in range(6)]

    def f(s, p, *d):
        bt, _ = unireward.bradley_terry_loss(s[:, 0], s[:, 1])
        kw, _ = unireward.kwise_loss(s)
        dd, _ = unireward.diffusion_dpo_loss(*d, beta=10.0)
        c = unireward.compare(scores=s)
        sel = unireward.select_pairs(p, scores=s)
        return torch.cat([torch.stack([bt, kw, dd]), c.preference.flatten(), c.strengths.flatten(),
                          c.ranks.flatten().float(), sel.chosen.float(), sel.kept.float()])  # fmt: skip

    cpu, cuda, _ = both(f, scores, pointwise, *preds)
    assert_same(cpu, cuda)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_adamw_on_cuda(dtype):
    """The fused optimizer on CUDA parameters (one launch over both, the second past a chunk) on a side stream,
    against the same steps on the CPU."""
    g = torch.Generator().manual_seed(3)
    params = [torch.randn(37, 5, generator=g).to(dtype), torch.randn(70_001, generator=g).to(dtype)]
    grads = [[torch.randn(p.shape, generator=g).to(dtype) for p in params] for _ in range(3)]

    def run(ps):
        ps = [p.clone().requires_grad_() for p in ps]
        opt = unireward.AdamW(ps, lr=1e-2, weight_decay=0.1, max_grad_norm=1.0, schedule="cosine", warmup_steps=1,
                              total_steps=3)  # fmt: skip
        for step in grads:
            for p, grad in zip(ps, step):
                p.grad = grad.to(p.device)
            opt.step()
        return [p.detach() for p in ps], opt.last_step

    cpu, cpu_report = run(params)
    cuda, cuda_report = on_side_stream(run, [p.cuda() for p in params])
    assert cuda_report["grad_norm"] == pytest.approx(cpu_report["grad_norm"], rel=1e-5)
    for a, b in zip(cpu, cuda):
        # f32: the same update to rounding; bf16: the fp32 masters agree, so the stored values within one ulp.
        tol = 1e-6 if dtype == torch.float32 else torch.finfo(dtype).eps
        assert (b.cpu().double() - a.double()).abs().max() <= tol * a.double().abs().max()


def test_trainers_on_cuda(model_dir):
    """The SFT and DPO trainers on CUDA against the CPU: the same losses (1e-5) over two steps."""
    from test_train import pairs, records

    for make, data in ((unireward.SftTrainer, records(3)), (unireward.DpoTrainer, pairs(3))):
        cpu, cuda = (make(model_dir, total_steps=2, lr=1e-3, device=d) for d in ("cpu", "cuda"))
        for _ in range(2):
            a, b = cpu.step(data), cuda.step(data)
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), make.__name__
