"""Float64 reference for the reward-model trainer (src/train/reward), on the tiny tied Qwen2 checkpoint (mha_tied)
loaded as transformers' Qwen2ForSequenceClassification (num_labels=1: the decoder, then `score` [1, H] without bias
on each row's last real token), run in float64 with qwen2_model.py's float64 ops.

1. Bradley–Terry: 10 optimizer steps, each over two micro-batches of two pairs (gradient accumulation), with
   per-pair margins and TRL's center_rewards_coefficient, written out as TRL's RewardTrainer computes its loss
   (-logsigmoid(r_chosen - r_rejected - margin).mean() + c * ((r_chosen + r_rejected) ** 2).mean()), the step's loss
   the mean over all its pairs; torch.optim.AdamW + clip_grad_norm_ + transformers' cosine schedule with warm-up.
2. K-wise (Plackett–Luce): the loss -sum_k [r_k - logsumexp(r_k..r_{K-1})], mean over groups, and the gradient of
   every parameter for one batch of 2 ranked lists of 3 responses.

Run: ~/.cache/unireward/torch-venv/bin/python tests/reference/train_reward.py
Writes tests/fixtures/train_reward/steps.json (config, the initial head, the micro-batches as SequenceBatch fields
(response-major rows: chosen then rejected, or best..worst), margins, per-step loss, TRL's metrics, grad norm, lr;
the K-wise batch, loss and accuracy), final.safetensors (every parameter after the 10 steps, rounded to float32) and
kwise_grads.safetensors (the K-wise gradients, rounded to float32).

Checking a checkpoint written by unireward (the Rust tests cannot start Python):
    UNIREWARD_REWARD_CHECKPOINT_OUT=/tmp/ur-rm cargo test --test train_reward -- checkpoint
    ~/.cache/unireward/torch-venv/bin/python tests/reference/train_reward.py --check-checkpoint /tmp/ur-rm
loads /tmp/ur-rm/checkpoint with AutoModelForSequenceClassification (no num_labels given: the config says one label)
and compares its rewards on the padded batch in /tmp/ur-rm/expected.json with unireward's (1e-5 relative to the
largest). Outcome at the commit that added it (transformers 4.57.1, torch 2.10, CPU, float32), with no missing or
unexpected key reported: max |transformers - unireward| = 3.912e-08 (rewards up to 0.027) over 8 rows.
"""
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoModelForSequenceClassification, Qwen2ForSequenceClassification
from transformers import get_cosine_schedule_with_warmup

from qwen2_model import FIXTURES as QWEN2, use_float64_ops

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "train_reward")
STEPS, MICRO, PAIRS = 10, 2, 2
GROUPS, K = 2, 3
FROZEN = "k_proj.bias"
SCORE_STD = 0.3
CONFIG = {"lr": 5e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01, "warmup_ratio": 0.1,
          "total_steps": STEPS, "frozen": FROZEN, "max_grad_norm": 1.0, "center_rewards_coefficient": 0.05}


def load_model(score):
    model = Qwen2ForSequenceClassification.from_pretrained(os.path.join(QWEN2, "mha_tied"), num_labels=1,
                                                           attn_implementation="eager").to(torch.float64)
    assert model.score.bias is None
    with torch.no_grad():
        model.score.weight.copy_(score)
    return model


def ranked_batch(g, vocab, groups, k):
    """`groups` prompts with k random responses each, response-major as collate_rankings lays them out."""
    lists = []
    for _ in range(groups):
        prompt = torch.randint(0, vocab, (int(torch.randint(1, 5, (1,), generator=g)),), generator=g).tolist()
        responses = [torch.randint(0, vocab, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist()
                     for _ in range(k)]
        lists.append((prompt, responses))
    seqs = [lists[i][0] + lists[i][1][j] for j in range(k) for i in range(groups)]
    width = max(len(s) for s in seqs)
    ids, mask, labels = [], [], []
    for (i, s) in enumerate(seqs):
        prompt_len = len(lists[i % groups][0])
        pad = width - len(s)
        ids += s + [0] * pad
        mask += [1] * len(s) + [0] * pad
        labels += [-100] * prompt_len + s[prompt_len:] + [-100] * pad
    return {"rows": len(seqs), "len": width, "ids": ids, "mask": mask, "labels": labels, "tasks": [0] * len(seqs)}


def rewards(model, b):
    """Qwen2ForSequenceClassification's pooled logits, with the last real token taken from the mask."""
    shape = (b["rows"], b["len"])
    ids, mask = torch.tensor(b["ids"]).view(shape), torch.tensor(b["mask"]).view(shape)
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    ends = mask.sum(1) - 1
    return model.score(hidden[torch.arange(b["rows"]), ends]).squeeze(-1)


def bradley_terry(model, batches):
    cfg = CONFIG
    for name, p in model.named_parameters():
        # The key biases get a gradient of pure rounding noise (softmax ignores a bias added to every key): frozen.
        p.requires_grad_(FROZEN not in name)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg["lr"], betas=tuple(cfg["betas"]), eps=cfg["eps"],
                            weight_decay=cfg["weight_decay"], foreach=False)
    sched = get_cosine_schedule_with_warmup(opt, math.ceil(STEPS * cfg["warmup_ratio"]), STEPS)
    steps = []
    c = cfg["center_rewards_coefficient"]
    for step in batches:
        opt.zero_grad()
        sums = {k: 0.0 for k in ["loss", "accuracy", "rewards_chosen", "rewards_rejected", "margin"]}
        tokens = 0
        for b in step:
            r = rewards(model, b)
            rc, rr = r[:PAIRS], r[PAIRS:]
            margin = torch.tensor(b["margin"], dtype=torch.float64)
            losses = -F.logsigmoid(rc - rr - margin) + c * (rc + rr) ** 2
            # Equal micro-batches: the step's loss is the mean over all its pairs.
            (losses.sum() / (MICRO * PAIRS)).backward()
            sums["loss"] += losses.sum().item()
            sums["accuracy"] += (rc > rr).double().sum().item()
            sums["rewards_chosen"] += rc.sum().item()
            sums["rewards_rejected"] += rr.sum().item()
            sums["margin"] += (rc - rr).sum().item()
            tokens += sum(b["mask"])
        lr = opt.param_groups[0]["lr"]
        norm = float(torch.nn.utils.clip_grad_norm_(params, cfg["max_grad_norm"]))
        opt.step()
        sched.step()
        steps.append({**{k: v / (MICRO * PAIRS) for k, v in sums.items()}, "grad_norm": norm, "lr": lr,
                      "tokens": tokens})
    final = {n: p.detach().float().contiguous() for n, p in model.named_parameters()}
    save_file(final, os.path.join(OUT, "final.safetensors"))
    print("bradley-terry losses", ["%.4f" % s["loss"] for s in steps], "norms", ["%.3f" % s["grad_norm"] for s in steps])
    return steps


def plackett_luce(model, b):
    r = rewards(model, b).view(K, GROUPS).t()  # [G, K], best first
    suffix = torch.stack([torch.logsumexp(r[:, k:], dim=1) for k in range(K)], dim=1)
    loss = (suffix - r).sum(1).mean()
    model.zero_grad()
    loss.backward()
    pairs = [(i, j) for i in range(K) for j in range(i + 1, K)]
    accuracy = sum((r[:, i] > r[:, j]).double().mean().item() for i, j in pairs) / len(pairs)
    grads = {"grad." + n: p.grad.detach().float().contiguous() for n, p in model.named_parameters()}
    save_file(grads, os.path.join(OUT, "kwise_grads.safetensors"))
    print("plackett-luce loss %.6f accuracy %.3f" % (loss.item(), accuracy))
    return {"batch": b, "loss": loss.item(), "accuracy": accuracy}


def check_checkpoint(root):
    with open(os.path.join(root, "expected.json")) as f:
        expected = json.load(f)
    model = AutoModelForSequenceClassification.from_pretrained(os.path.join(root, "checkpoint"),
                                                               dtype=torch.float32).eval()
    assert type(model).__name__ == "Qwen2ForSequenceClassification" and model.config.num_labels == 1, type(model)
    shape = (expected["rows"], expected["len"])
    ids, mask = torch.tensor(expected["ids"]).view(shape), torch.tensor(expected["mask"]).view(shape)
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).logits.squeeze(-1).double()
    want = torch.tensor(expected["rewards"], dtype=torch.float64)
    err = (got - want).abs().max().item()
    scale = want.abs().max().item()
    print("max |transformers - unireward| = %.3e (rewards up to %.3f, spread %.3e)" % (err, scale, want.std().item()))
    assert want.std().item() > 0 and err <= 1e-5 * max(scale, 1e-3), (got, want)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--check-checkpoint":
        check_checkpoint(sys.argv[2])
        return
    torch.set_num_threads(1)
    use_float64_ops(True)
    g = torch.Generator().manual_seed(26)
    hidden = load_model(torch.zeros(1, 16)).config.hidden_size
    score = (torch.randn(1, hidden, generator=g, dtype=torch.float64) * SCORE_STD)
    vocab = load_model(score).config.vocab_size
    batches = []
    for _ in range(STEPS):
        step = []
        for _ in range(MICRO):
            b = ranked_batch(g, vocab, PAIRS, 2)
            b["margin"] = (torch.rand(PAIRS, generator=g, dtype=torch.float64) * 0.5).tolist()
            step.append(b)
        batches.append(step)
    kwise_batch = ranked_batch(g, vocab, GROUPS, K)
    os.makedirs(OUT, exist_ok=True)
    kwise = plackett_luce(load_model(score), kwise_batch)
    steps = bradley_terry(load_model(score), batches)
    with open(os.path.join(OUT, "steps.json"), "w") as f:
        json.dump({"config": CONFIG, "score": score.flatten().tolist(), "batches": batches, "steps": steps,
                   "kwise": kwise}, f)


if __name__ == "__main__":
    main()
