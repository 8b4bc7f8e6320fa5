"""Fixtures for tests/logprobs.rs: per-sequence log-probabilities as TRL computes them, in torch float64.

TRL's formulation: per-token log-probs by `selective_log_softmax` (gather minus logsumexp), zeroed where the label
is the ignore index or the completion mask is 0, summed (or averaged over counted tokens) per sequence; the mean
logit and `entropy_from_logits` averaged over counted tokens. The gradient of sum_n g[n]·logps[n] comes from
autograd. Logits are multiples of 1/64, exact in f32 and short in JSON; `*_bf16` expectations are computed on the
logits rounded to bf16.

Run: /root/.cache/unireward/venv/bin/python tests/reference/logprobs.py
"""

import json
import pathlib

import torch

OUT = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "logprobs"


def selective_log_softmax(logits, index):
    return torch.gather(logits, -1, index.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits):
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def reference(logits, labels, mask, ignore_index, reduction, grad_logps):
    logits = logits.clone().requires_grad_(True)
    counted = labels != ignore_index
    if mask is not None:
        counted &= mask != 0
    safe_labels = torch.where(counted, labels, torch.zeros_like(labels))
    per_token = selective_log_softmax(logits, safe_labels) * counted
    counts = counted.sum(-1).double()
    logps = per_token.sum(-1)
    if reduction == "mean":
        logps = torch.where(counts > 0, logps / counts.clamp(min=1), torch.zeros_like(logps))
    (grad,) = torch.autograd.grad((logps * grad_logps).sum(), logits)
    with torch.no_grad():
        per_mean = lambda x: torch.where(counts > 0, (x * counted).sum(-1) / counts.clamp(min=1), torch.zeros_like(counts))
        mean_logits = per_mean(logits.mean(-1))
        entropy = per_mean(entropy_from_logits(logits))
        lse = torch.logsumexp(logits, -1) * counted
    return {
        "logps": logps.tolist(),
        "token_counts": counts.tolist(),
        "mean_logits": mean_logits.tolist(),
        "entropy": entropy.tolist(),
        "lse": lse.flatten().tolist(),
        "grad": grad.flatten().tolist(),
    }


def case(name, n, t, v, seed, reduction="sum", offset=0.0, ignore_frac=0.25, use_mask=False, masked_rows=(),
         with_grad=True):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randint(-512, 513, (n, t, v), generator=g).double() / 64 + offset
    labels = torch.randint(0, v, (n, t), generator=g)
    labels[torch.rand(n, t, generator=g) < ignore_frac] = -100
    mask = None
    if use_mask:
        mask = (torch.rand(n, t, generator=g) < 0.7).long()
        for r in masked_rows:
            mask[r] = 0
    grad_logps = torch.randint(-8, 9, (n,), generator=g).double() / 4
    expected = reference(logits, labels, mask, -100, reduction, grad_logps)
    bf16 = reference(logits.bfloat16().double(), labels, mask, -100, reduction, grad_logps)
    if not with_grad:
        expected["grad"] = None
    fixture = {
        "name": name,
        "shape": [n, t, v],
        "logits": logits.flatten().tolist(),
        "labels": labels.flatten().tolist(),
        "mask": None if mask is None else mask.flatten().tolist(),
        "ignore_index": -100,
        "reduction": reduction,
        "grad_logps": grad_logps.tolist(),
        "expected": expected,
        "expected_bf16": {k: bf16[k] for k in ("logps", "token_counts", "mean_logits", "entropy")},
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(fixture, separators=(",", ":")))


if __name__ == "__main__":
    case("basic_v37", 3, 4, 37, seed=1)
    case("mask_and_ignore_mean_v1000", 2, 3, 1000, seed=2, reduction="mean", use_mask=True, with_grad=False)
    case("t1_magnitude_1e4", 2, 1, 50, seed=3, offset=1e4, ignore_frac=0.0)
    case("masked_row_mean_v16", 3, 3, 16, seed=4, reduction="mean", use_mask=True, masked_rows=(1,))
    print("wrote", sorted(p.name for p in OUT.glob("*.json")))
