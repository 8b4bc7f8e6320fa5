#!/usr/bin/env python3
"""Preference losses in PyTorch eager, as TRL and diffusers compute them: the baseline for unireward's loss kernels.

- DPO sigmoid (TRL's `dpo_loss`, loss_type="sigmoid"): from per-sequence log-probs of policy and reference on
  --pairs pairs (default 4,096), -logsigmoid(beta * ((pi_c - pi_r) - (ref_c - ref_r))).mean(), with the rewards
  metrics TRL logs; backward to the policy log-probs.
- Diffusion-DPO (the authors' code; diffusers' train_diffusion_dpo.py with beta_dpo = beta / 2): from the model's and the reference's noise predictions and the
  targets, winners then losers, --batch pairs of --dim elements each (default B = 8, D = 4*64*64, SD latents):
  per-sample MSE, -logsigmoid(-beta/2 * (model_diff - ref_diff)).mean() at beta = 5000; backward to the model's
  prediction.

Times are per call (forward alone under no_grad, and forward + backward), the median of --repeats timings of
--inner calls each, after a warm-up (on CUDA, --device cuda, synchronised after each timing). Any python with torch
works:

    python3 scripts/bench_torch_losses.py
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def dpo_sigmoid(pc, pr, rc, rr, beta=0.1):
    logits = (pc - pr) - (rc - rr)
    loss = -F.logsigmoid(beta * logits).mean()
    chosen_rewards = beta * (pc - rc).detach()
    rejected_rewards = beta * (pr - rr).detach()
    metrics = (chosen_rewards.mean(), rejected_rewards.mean(), (chosen_rewards > rejected_rewards).float().mean(),
               (chosen_rewards - rejected_rewards).mean())
    return loss, metrics


def diffusion_dpo(model_pred, ref_pred, target, beta=5000.0):
    model_losses = (model_pred - target).pow(2).mean(dim=1)
    model_w, model_l = model_losses.chunk(2)
    with torch.no_grad():
        ref_losses = (ref_pred - target).pow(2).mean(dim=1)
        ref_w, ref_l = ref_losses.chunk(2)
    inside = -0.5 * beta * ((model_w - model_l) - (ref_w - ref_l))
    return -F.logsigmoid(inside).mean(), model_losses


def time_per_call(fn, repeats, inner, sync):
    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        times.append((time.perf_counter() - start) / inner)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=4096)
    p.add_argument("--batch", type=int, default=8, help="Diffusion-DPO pairs")
    p.add_argument("--dim", type=int, default=4 * 64 * 64, help="Diffusion-DPO elements per sample")
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--inner", type=int, default=200, help="calls per timing")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(0)

    # Sequence log-probs of a few hundred tokens: around -200.
    pc, pr, rc, rr = [(-200 + 20 * torch.randn(args.pairs, generator=gen)).to(device, dtype) for _ in range(4)]
    pc.requires_grad_(True)
    pr.requires_grad_(True)

    def dpo_fwd():
        with torch.no_grad():
            return dpo_sigmoid(pc, pr, rc, rr)

    def dpo_fwdbwd():
        pc.grad = pr.grad = None
        loss, metrics = dpo_sigmoid(pc, pr, rc, rr)
        loss.backward()
        return metrics

    shape = (2 * args.batch, args.dim)
    target = torch.randn(shape, generator=gen)
    ref_pred = (target + 0.1 * torch.randn(shape, generator=gen)).to(device, dtype)
    model_pred = (target + 0.1 * torch.randn(shape, generator=gen)).to(device, dtype).requires_grad_(True)
    target = target.to(device, dtype)

    def ddpo_fwd():
        with torch.no_grad():
            return diffusion_dpo(model_pred, ref_pred, target)

    def ddpo_fwdbwd():
        model_pred.grad = None
        loss, _ = diffusion_dpo(model_pred, ref_pred, target)
        loss.backward()
        return loss

    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"PyTorch eager, {where}, {args.dtype}: median of {args.repeats} timings of {args.inner} calls, per call")
    rows = [
        (f"DPO sigmoid, {args.pairs} pairs", dpo_fwd, dpo_fwdbwd),
        (f"Diffusion-DPO, B={args.batch}, D={args.dim}, beta=5000", ddpo_fwd, ddpo_fwdbwd),
    ]
    print(f"{'loss':<44} {'forward':>12} {'forward+backward':>18}")
    for name, fwd, fwdbwd in rows:
        f = time_per_call(fwd, args.repeats, args.inner, sync)
        fb = time_per_call(fwdbwd, args.repeats, args.inner, sync)
        print(f"{name:<44} {f * 1e6:>9.1f} us {fb * 1e6:>15.1f} us")
    print(f"torch {torch.__version__}")


if __name__ == "__main__":
    main()
