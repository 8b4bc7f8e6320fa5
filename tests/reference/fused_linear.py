"""Float64 fixtures for the fused linear log-prob path (hidden states and LM head, never materialised in Rust).

The reference materialises logits = hidden @ weight.T + bias in float64 and follows TRL: log_softmax, gather the
labels, masked sum (or mean) per sequence, entropy and mean logit per token averaged over counted tokens; gradients
by autograd of sum(grad_logps * logps).

Run: python tests/reference/fused_linear.py  (writes tests/fixtures/fused_linear/*.json)
"""
import json
import pathlib

import torch

OUT = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "fused_linear"
IGNORE = -100


def case(name, n, t, h, v, bias, reduction, seed, mask_rows=(), scale=1.0):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, t, h, generator=g, dtype=torch.float64) * scale).requires_grad_()
    weight = (torch.randn(v, h, generator=g, dtype=torch.float64) / h**0.5).requires_grad_()
    b = (torch.randn(v, generator=g, dtype=torch.float64) * 0.1).requires_grad_() if bias else None
    labels = torch.randint(0, v, (n, t), generator=g)
    labels[:, 0] = IGNORE  # a prompt token
    mask = (torch.rand(n, t, generator=g) > 0.2).long()
    for r in mask_rows:
        mask[r] = 0
    grad_logps = torch.randn(n, generator=g, dtype=torch.float64)

    logits = hidden @ weight.T + (b if b is not None else 0.0)
    counted = (labels != IGNORE) & (mask != 0)
    logp_all = torch.log_softmax(logits, dim=-1)
    token_logp = torch.gather(logp_all, 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    counts = counted.sum(-1).to(torch.float64)
    logps = (token_logp * counted).sum(-1)
    if reduction == "mean":
        logps = torch.where(counts > 0, logps / counts.clamp(min=1), torch.zeros_like(logps))
    probs = logp_all.exp()
    entropy_tok = -(probs * logp_all).sum(-1)
    denom = counts.clamp(min=1)
    entropy = (entropy_tok * counted).sum(-1) / denom
    mean_logits = (logits.mean(-1) * counted).sum(-1) / denom
    (logps * grad_logps).sum().backward()

    flat = lambda x: x.detach().reshape(-1).tolist()
    fixture = {
        "n": n, "t": t, "h": h, "v": v, "reduction": reduction, "has_bias": bias,
        "hidden": flat(hidden), "weight": flat(weight), "bias": flat(b) if bias else [],
        "labels": flat(labels), "mask": flat(mask), "grad_logps": flat(grad_logps),
        "logps": flat(logps), "token_counts": flat(counts), "entropy": flat(entropy), "mean_logits": flat(mean_logits),
        "grad_hidden": flat(hidden.grad), "grad_weight": flat(weight.grad), "grad_bias": flat(b.grad) if bias else [],
    }
    (OUT / f"{name}.json").write_text(json.dumps(fixture))


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    case("sum_bias", n=3, t=5, h=8, v=37, bias=True, reduction="sum", seed=1, mask_rows=(1,))
    case("mean_nobias", n=2, t=4, h=16, v=129, bias=False, reduction="mean", seed=2)
    case("single_token", n=1, t=1, h=4, v=11, bias=True, reduction="sum", seed=3)
    case("large_logits", n=2, t=3, h=8, v=50, bias=False, reduction="sum", seed=4, scale=300.0)
