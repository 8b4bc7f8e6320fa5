"""Float64 reference for the SFT trainer: 10 optimizer steps on the tiny tied Qwen2 checkpoint (mha_tied), each over
two micro-batches (gradient accumulation), with the loss on labelled tokens only (-100 on a random prompt prefix and
on padding), the mean over all labelled tokens of the step, torch.optim.AdamW + clip_grad_norm_ + transformers'
cosine schedule with warm-up. The model runs with qwen2_model.py's float64 ops (a true float64 forward).

Run: ~/.cache/unireward/torch-venv/bin/python tests/reference/train_sft.py
Writes tests/fixtures/train_sft/steps.json (config, the micro-batches as SequenceBatch fields, per-step loss, tokens,
grad norm, learning rate, per-task loss) and tests/fixtures/train_sft/final.safetensors (every parameter after the
10 steps, float64, under its checkpoint name).
"""
import json
import math
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import get_cosine_schedule_with_warmup

from qwen2_model import causal_lm_loss, load, use_float64_ops

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "train_sft")
STEPS, MICRO, ROWS, TASKS = 10, 2, 2, 2
FROZEN = "k_proj.bias"
CONFIG = {"lr": 5e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01, "max_grad_norm": 1.0,
          "warmup_ratio": 0.1, "total_steps": STEPS, "tasks": TASKS,
          "frozen": FROZEN}


def micro_batch(g, vocab):
    """Right-padded rows of random lengths; labels on a random suffix of each row (the 'assistant' tokens)."""
    lengths = [int(torch.randint(3, 10, (1,), generator=g)) for _ in range(ROWS)]
    width = max(lengths)
    ids = torch.randint(0, vocab, (ROWS, width), generator=g)
    mask = torch.zeros(ROWS, width, dtype=torch.long)
    labels = torch.full((ROWS, width), -100)
    for r, n in enumerate(lengths):
        mask[r, :n] = 1
        prompt = int(torch.randint(1, n - 1, (1,), generator=g))
        labels[r, prompt:n] = ids[r, prompt:n]
    tasks = torch.randint(0, TASKS, (ROWS,), generator=g)
    return {"rows": ROWS, "len": width, "ids": ids.reshape(-1).tolist(), "mask": mask.reshape(-1).tolist(),
            "labels": labels.reshape(-1).tolist(), "tasks": tasks.tolist()}


def tensors(b):
    shape = (b["rows"], b["len"])
    return (torch.tensor(b["ids"]).view(shape), torch.tensor(b["mask"]).view(shape),
            torch.tensor(b["labels"]).view(shape), b["tasks"])


def row_nll(logits, labels):
    shifted = F.pad(labels, (0, 1), value=-100)[:, 1:]
    per_token = F.cross_entropy(logits.transpose(1, 2), shifted, ignore_index=-100, reduction="none")
    return per_token.sum(1), (shifted != -100).sum(1)


def main():
    torch.set_num_threads(1)
    use_float64_ops(True)
    model = load("mha_tied", torch.float64).train()
    g = torch.Generator().manual_seed(13)
    batches = [[micro_batch(g, model.config.vocab_size) for _ in range(MICRO)] for _ in range(STEPS)]
    # The key biases get a gradient of pure rounding noise (a bias on every key adds the same q·b to a query's
    # scores: softmax ignores it), which AdamW's normalisation turns into full-size steps of random sign: frozen.
    for name, p in model.named_parameters():
        p.requires_grad_(FROZEN not in name)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=CONFIG["lr"], betas=tuple(CONFIG["betas"]), eps=CONFIG["eps"],
                            weight_decay=CONFIG["weight_decay"], foreach=False)
    sched = get_cosine_schedule_with_warmup(opt, math.ceil(STEPS * CONFIG["warmup_ratio"]), STEPS)
    steps = []
    for step in batches:
        opt.zero_grad()
        total = sum(int((tensors(b)[2][:, 1:] != -100).sum()) for b in step)
        nll, task_nll, task_tokens = 0.0, [0.0] * TASKS, [0] * TASKS
        for b in step:
            ids, mask, labels, tasks = tensors(b)
            logits = model(input_ids=ids, attention_mask=mask).logits
            rows, counts = row_nll(logits, labels)
            # The step's loss is the mean over all its labelled tokens: each micro-batch adds its share.
            (rows.sum() / total).backward()
            # The same loss through qwen2_model.py's mean, as a check of the per-row sums.
            assert abs(causal_lm_loss(logits, labels).item() * counts.sum().item() - rows.sum().item()) < 1e-9
            nll += rows.sum().item()
            for r, t in enumerate(tasks):
                task_nll[t] += rows[r].item()
                task_tokens[t] += int(counts[r])
        lr = opt.param_groups[0]["lr"]
        norm = float(torch.nn.utils.clip_grad_norm_(params, CONFIG["max_grad_norm"]))
        opt.step()
        sched.step()
        steps.append({"loss": nll / total, "tokens": total, "grad_norm": norm, "lr": lr,
                      "task_loss": [l / n if n else None for l, n in zip(task_nll, task_tokens)]})
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "steps.json"), "w") as f:
        json.dump({"config": CONFIG, "batches": batches, "steps": steps}, f)
    final = {n: p.detach().clone().contiguous() for n, p in model.named_parameters()}
    save_file(final, os.path.join(OUT, "final.safetensors"))
    print("losses", ["%.4f" % s["loss"] for s in steps])


if __name__ == "__main__":
    main()
