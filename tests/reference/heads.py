"""Float64 fixtures for the reward-model heads (scalar reward head and verdict head).

Inputs are drawn in float64 and rounded through float32, so that the Rust f32 path sees exactly the values the
reference used; every output and gradient is then computed in float64, gradients by autograd.

Scalar head: rewards = hidden[n, ends[n]] @ weight.T + bias, backward of sum(grad * rewards).
Verdict head: log p_k = logsumexp(logits[:, S_k]) - logsumexp(logits[:, S_1 ∪ … ∪ S_K]), p = exp(log p),
expected = p @ values; backward of sum(grad_log_probs * log_probs) + sum(grad_expected * expected).

Run: /root/.cache/unireward/venv/bin/python tests/reference/heads.py  (writes tests/fixtures/heads/*.json)
"""
import json
import pathlib

import torch

OUT = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "heads"


def rnd(g, *shape, scale=1.0):
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).float().double()


def flat(x):
    return x.detach().reshape(-1).tolist()


def scalar_case(name, n, t, h, c, bias, seed, ends=None):
    g = torch.Generator().manual_seed(seed)
    hidden = rnd(g, n, t, h).requires_grad_()
    weight = rnd(g, c, h, scale=h**-0.5).requires_grad_()
    b = rnd(g, c, scale=0.5).requires_grad_() if bias else None
    ends = torch.tensor(ends) if ends is not None else torch.randint(0, t, (n,), generator=g)
    grad = rnd(g, n, c)
    rewards = hidden[torch.arange(n), ends] @ weight.T + (b if b is not None else 0.0)
    (rewards * grad).sum().backward()
    fixture = {
        "n": n, "t": t, "h": h, "c": c, "has_bias": bias,
        "hidden": flat(hidden), "ends": flat(ends), "weight": flat(weight), "bias": flat(b) if bias else [],
        "grad": flat(grad),
        "rewards": flat(rewards), "grad_hidden": flat(hidden.grad), "grad_weight": flat(weight.grad),
        "grad_bias": flat(b.grad) if bias else [],
    }
    (OUT / f"{name}.json").write_text(json.dumps(fixture))


def verdict_case(name, b, v, classes, seed, values=None, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = rnd(g, b, v, scale=scale).requires_grad_()
    k = len(classes)
    grad_log_probs = rnd(g, b, k)
    grad_expected = rnd(g, b) if values is not None else torch.zeros(b, dtype=torch.float64)
    union = [i for cls in classes for i in cls]
    lse_union = torch.logsumexp(logits[:, union], dim=1)
    log_probs = torch.stack([torch.logsumexp(logits[:, cls], dim=1) for cls in classes], dim=1) - lse_union[:, None]
    probs = log_probs.exp()
    objective = (grad_log_probs * log_probs).sum()
    expected = probs @ torch.tensor(values, dtype=torch.float64) if values is not None else None
    if expected is not None:
        objective = objective + (grad_expected * expected).sum()
    objective.backward()
    offsets = [0]
    for cls in classes:
        offsets.append(offsets[-1] + len(cls))
    fixture = {
        "b": b, "v": v, "offsets": offsets, "ids": union, "values": values or [],
        "logits": flat(logits), "grad_log_probs": flat(grad_log_probs), "grad_expected": flat(grad_expected),
        "log_probs": flat(log_probs), "probs": flat(probs), "expected": flat(expected) if values else [],
        "grad_logits": flat(logits.grad),
    }
    (OUT / f"{name}.json").write_text(json.dumps(fixture))


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    scalar_case("scalar_bt", n=4, t=5, h=8, c=1, bias=True, seed=1, ends=[0, 4, 2, 4])
    scalar_case("scalar_multi", n=3, t=6, h=16, c=4, bias=False, seed=2)
    scalar_case("scalar_t1", n=2, t=1, h=5, c=3, bias=True, seed=3)
    verdict_case("verdict_pair", b=4, v=37, classes=[[3, 5], [7], [11, 12, 13]], seed=4)
    verdict_case("verdict_scores", b=3, v=50, classes=[[10, 20], [11], [12, 22], [13], [14, 24, 34]], seed=5,
                 values=[1.0, 2.0, 3.0, 4.0, 5.0])
    verdict_case("verdict_large", b=2, v=100, classes=[[1], [2, 98], [99]], seed=6, values=[0.0, 0.5, 1.0],
                 scale=1e4)
    verdict_case("verdict_k1", b=2, v=9, classes=[[0, 8]], seed=7, values=[3.0])
    verdict_case("verdict_many_ids", b=2, v=300, classes=[list(range(0, 300, 2)), [1, 3, 299]], seed=8)
