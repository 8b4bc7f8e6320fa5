"""Float64 fixtures for the optimizer: 10 steps of torch.optim.AdamW + torch.nn.utils.clip_grad_norm_ + transformers'
warm-up schedules (through LambdaLR), on a few parameters with awkward shapes, two groups (one with its own learning
rate and no weight decay) and a frozen parameter that the optimizer never sees.

Parameters and gradients are drawn in float64 and rounded through float32, so that the Rust f32 run starts from
exactly the values the reference used; everything after is float64. Gradients change scale from step to step, so
that clipping is active on some steps and not on others.

Run: ~/.cache/unireward/torch-venv/bin/python tests/reference/optim.py  (writes tests/fixtures/optim/*.json)
"""
import json
import math
import pathlib

import torch
from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

OUT = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "optim"
STEPS = 10


def rnd(g, *shape, scale=1.0):
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).float().double()


def case(name, seed, schedule, warmup_ratio, lr, betas, eps, weight_decay, max_norm, group_lr, shapes):
    g = torch.Generator().manual_seed(seed)
    names = [n for n, _ in shapes]
    params = {n: rnd(g, *s).requires_grad_(not n.startswith("frozen.")) for n, s in shapes}
    initial = [params[n].detach().reshape(-1).tolist() for n in names]
    grads = [{n: rnd(g, *s, scale=0.3 * 3.0 ** (k % 3 - 1)) for n, s in shapes} for k in range(STEPS)]
    trainable = [n for n in names if not n.startswith("frozen.")]
    default = [params[n] for n in trainable if "bias" not in n]
    biases = [params[n] for n in trainable if "bias" in n]
    opt = torch.optim.AdamW(
        [{"params": default}, {"params": biases, "lr": group_lr, "weight_decay": 0.0}],
        lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=False,
    )
    warmup = math.ceil(STEPS * warmup_ratio)
    make = {"cosine": get_cosine_schedule_with_warmup, "linear": get_linear_schedule_with_warmup}[schedule]
    sched = make(opt, num_warmup_steps=warmup, num_training_steps=STEPS)
    norms, lrs = [], []
    for k in range(STEPS):
        for n in trainable:
            params[n].grad = grads[k][n].clone()
        lrs.append(opt.param_groups[0]["lr"])
        if max_norm is not None:
            norms.append(float(torch.nn.utils.clip_grad_norm_([params[n] for n in trainable], max_norm)))
        opt.step()
        sched.step()
    fixture = {
        "config": {
            "lr": lr, "betas": list(betas), "eps": eps, "weight_decay": weight_decay, "max_grad_norm": max_norm,
            "schedule": schedule, "warmup_ratio": warmup_ratio, "total_steps": STEPS, "bias_lr": group_lr,
        },
        "names": names,
        "shapes": [list(s) for _, s in shapes],
        "initial": initial,
        "grads": [[grads[k][n].reshape(-1).tolist() for n in names] for k in range(STEPS)],
        "expected": [params[n].detach().reshape(-1).tolist() for n in names],
        "norms": norms,
        "lrs": lrs,
    }
    (OUT / f"{name}.json").write_text(json.dumps(fixture))
    print(f"{name}: norms {['%.3f' % x for x in norms]}, lrs {['%.2e' % x for x in lrs]}")


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    shapes = [("w.weight", (7, 5)), ("w.bias", (7,)), ("frozen.weight", (3, 4)), ("v.weight", (2, 3, 13)),
              ("v.bias", (1,))]
    case("cosine_clip", 1, "cosine", 0.03, 2e-2, (0.9, 0.999), 1e-8, 0.1, 1.0, 5e-2, shapes)
    case("linear_noclip", 2, "linear", 0.3, 1e-2, (0.8, 0.95), 1e-6, 0.3, None, 3e-3, shapes)
