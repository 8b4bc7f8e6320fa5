"""Float64 reference for the DPO trainer: 10 optimizer steps on the tiny tied Qwen2 checkpoint (mha_tied), each over
two micro-batches of two pairs (gradient accumulation), for TRL's sigmoid loss (with label smoothing: cDPO), its
IPO loss, RPO (sigmoid + `rpo_alpha` times the chosen completions' NLL, TRL's `nll_loss`: the cross-entropy over
every chosen token of the micro-batch) and a loss mixture (list-valued `loss_type` with `loss_weights`: the weighted
sum of the losses and of the rewards), LD-DPO (`ld_alpha`) and WPO (`use_weighting`), written out by hand as TRL's
DPOTrainer computes them (v0.24-v0.27 `dpo_loss` and `concatenated_forward`): per-sequence log-probs summed over the
completion tokens (averaged over them for IPO, for the policy and the reference alike), the reference a frozen copy
of the initial policy, the loss the mean over the step's pairs; torch.optim.AdamW + clip_grad_norm_ + transformers'
cosine schedule with warm-up. The model runs with qwen2_model.py's float64 ops (a true float64 forward).

LD-DPO (arXiv 2409.06411): a completion's log-prob is the sum over its first min(chosen, rejected token count) tokens
plus ld_alpha times the sum over the rest, for the policy and the reference alike, positions counted within the
completion (the paper's definition; TRL compares whole-row positions with the completion lengths and leaves the
reference whole). WPO (arXiv 2406.11827, TRL's `use_weighting`): each pair's loss times the detached
min(exp(w_chosen + w_rejected), 1), w the mean over a completion's tokens of log p(token) - log sum_v p_v^2, both at
the position that predicts the token (TRL subtracts the next position's logsumexp from each log-prob after rolling
them by one).

Run: ~/.cache/unireward/torch-venv/bin/python tests/reference/train_dpo.py
Writes tests/fixtures/train_dpo/steps.json (config, the micro-batches as SequenceBatch fields (2P rows: chosen then
rejected, labels on the completions only), and per loss type: the reference log-probs of every micro-batch, per-step
loss, TRL's metrics, grad norm and learning rate) and tests/fixtures/train_dpo/final_<loss>.safetensors (every
parameter after the 10 steps, rounded to float32 — far inside the test's tolerance — under its checkpoint name).
"""
import copy
import json
import math
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import get_cosine_schedule_with_warmup

from qwen2_model import load, use_float64_ops

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "train_dpo")
STEPS, MICRO, PAIRS = 10, 2, 2
FROZEN = "k_proj.bias"
CONFIG = {"lr": 5e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01, "warmup_ratio": 0.1,
          "total_steps": STEPS, "frozen": FROZEN}
# Clipping is active on some steps and not on others.
# Each run's options as `unireward dpo` spells them (TrlDpoOptions), keyed by the run's name.
LOSSES = {"sigmoid": {"loss_type": "sigmoid", "beta": 0.5, "label_smoothing": 0.1, "max_grad_norm": 1.5},
          "ipo": {"loss_type": "ipo", "beta": 0.5, "label_smoothing": 0.0, "max_grad_norm": 6.0},
          "rpo": {"loss_type": "sigmoid", "beta": 0.5, "label_smoothing": 0.0, "rpo_alpha": 0.7,
                  "max_grad_norm": 1.5},
          "mixture": {"loss_type": "sigmoid,hinge", "loss_weights": [0.8, 0.4], "beta": 0.5,
                      "label_smoothing": 0.1, "max_grad_norm": 1.5},
          "ld": {"loss_type": "sigmoid", "beta": 0.5, "label_smoothing": 0.0, "ld_alpha": 0.5, "max_grad_norm": 1.5},
          "wpo": {"loss_type": "sigmoid", "beta": 0.5, "label_smoothing": 0.0, "use_weighting": True,
                  "max_grad_norm": 1.5}}


def micro_batch(g, vocab):
    """P pairs, each a random prompt and two random completions, as collate_pairs lays them out."""
    rows = []
    for _ in range(PAIRS):
        prompt = torch.randint(0, vocab, (int(torch.randint(1, 5, (1,), generator=g)),), generator=g).tolist()
        completions = [torch.randint(0, vocab, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist()
                       for _ in range(2)]
        rows.append((prompt, completions))
    seqs = [(p, c[0]) for p, c in rows] + [(p, c[1]) for p, c in rows]
    width = max(len(p) + len(c) for p, c in seqs)
    ids, mask, labels = [], [], []
    for p, c in seqs:
        pad = width - len(p) - len(c)
        ids += p + c + [0] * pad
        mask += [1] * (len(p) + len(c)) + [0] * pad
        labels += [-100] * len(p) + c + [-100] * pad
    return {"rows": 2 * PAIRS, "len": width, "ids": ids, "mask": mask, "labels": labels, "tasks": [0] * (2 * PAIRS)}


def tensors(b):
    shape = (b["rows"], b["len"])
    return torch.tensor(b["ids"]).view(shape), torch.tensor(b["mask"]).view(shape), torch.tensor(b["labels"]).view(shape)


def completion_logps(model, b, average, ld_alpha=None):
    """TRL's concatenated_forward: summed (or averaged) log-probs of the labelled tokens, chosen rows then rejected
    (LD-DPO-weighted with `ld_alpha`), their count and WPO's per-row log weight (detached)."""
    ids, mask, labels = tensors(b)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    target = labels[:, 1:]
    counted = target != -100
    log_probs = logits.log_softmax(-1)
    per_token = torch.gather(log_probs, 2, target.clamp(min=0).unsqueeze(2)).squeeze(2)
    weight = counted.double()
    if ld_alpha is not None:
        lengths = counted.sum(1)
        public = torch.minimum(lengths[:PAIRS], lengths[PAIRS:]).repeat(2)
        ordinal = counted.cumsum(1) - 1
        weight = torch.where(counted & (ordinal >= public[:, None]), ld_alpha, 1.0) * counted
    logps = (per_token * weight).sum(1)
    if average:
        logps = logps / counted.sum(1)
    with torch.no_grad():
        collision = torch.logsumexp(2 * log_probs, -1)  # log sum_v p_v^2 at each position
        wpo = ((per_token - collision) * counted).sum(1) / counted.sum(1)
    return logps[:PAIRS], logps[PAIRS:], int(counted.sum()), wpo


def one_loss(loss_type, beta, eps, logits):
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * logits) * (1 - eps) - F.logsigmoid(-beta * logits) * eps
    if loss_type == "hinge":
        return torch.relu(1 - beta * logits)
    return (logits - 1 / (2 * beta)) ** 2


def dpo_loss(cfg, pc, pr, rc, rr):
    """TRL's loop over a list-valued loss_type: losses and rewards each summed with the loss weights."""
    types = cfg["loss_type"].split(",")
    weights = cfg.get("loss_weights", [1.0] * len(types))
    logits = (pc - rc) - (pr - rr)
    beta = cfg["beta"]
    losses = sum(w * one_loss(t, beta, cfg["label_smoothing"], logits) for t, w in zip(types, weights))
    total = sum(weights)
    return losses, total * beta * (pc - rc).detach(), total * beta * (pr - rr).detach()


def run(run_name, batches):
    cfg = LOSSES[run_name]
    average = "ipo" in cfg["loss_type"].split(",")
    model = load("mha_tied", torch.float64).train()
    reference = copy.deepcopy(model).eval()
    # The key biases get a gradient of pure rounding noise (softmax ignores a bias added to every key): frozen.
    for name, p in model.named_parameters():
        p.requires_grad_(FROZEN not in name)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=CONFIG["lr"], betas=tuple(CONFIG["betas"]), eps=CONFIG["eps"],
                            weight_decay=CONFIG["weight_decay"], foreach=False)
    sched = get_cosine_schedule_with_warmup(opt, math.ceil(STEPS * CONFIG["warmup_ratio"]), STEPS)
    steps, references = [], []
    for step in batches:
        opt.zero_grad()
        loss, tokens, sums = 0.0, 0, {k: 0.0 for k in ["chosen", "rejected", "acc", "margin", "lc", "lr"]}
        step_refs = []
        for b in step:
            with torch.no_grad():
                rc, rr, _, _ = completion_logps(reference, b, average=False, ld_alpha=cfg.get("ld_alpha"))
            step_refs.append({"chosen": rc.tolist(), "rejected": rr.tolist()})
            ids, mask, labels = tensors(b)
            pc, pr, n, wpo = completion_logps(model, b, average, ld_alpha=cfg.get("ld_alpha"))
            if average:
                counts = (labels[:, 1:] != -100).sum(1)
                rc, rr = rc / counts[:PAIRS], rr / counts[PAIRS:]
            losses, chosen, rejected = dpo_loss(cfg, pc, pr, rc, rr)
            # TRL's nll_loss: the mean cross-entropy over the micro-batch's chosen tokens (summed log-probs here).
            nll = -pc.sum() / (labels[:PAIRS, 1:] != -100).sum() if "rpo_alpha" in cfg else torch.zeros(())
            micro_loss = losses.mean() + cfg.get("rpo_alpha", 0.0) * nll
            if cfg.get("use_weighting"):
                # TRL's use_weighting: each pair's loss (with the NLL term) times its detached weight, then the mean.
                weights = torch.clamp(torch.exp(wpo[:PAIRS] + wpo[PAIRS:]), max=1)
                micro_loss = ((losses + cfg.get("rpo_alpha", 0.0) * nll) * weights).mean()
            # Equal micro-batches: the step's loss is the mean over its micro-batches' (and so over its pairs').
            (micro_loss / MICRO).backward()
            loss += micro_loss.item() * PAIRS
            tokens += n
            sums["chosen"] += chosen.sum().item()
            sums["rejected"] += rejected.sum().item()
            sums["acc"] += (chosen > rejected).double().sum().item()
            sums["margin"] += (chosen - rejected).sum().item()
            sums["lc"] += pc.detach().sum().item()
            sums["lr"] += pr.detach().sum().item()
        lr = opt.param_groups[0]["lr"]
        norm = float(torch.nn.utils.clip_grad_norm_(params, cfg["max_grad_norm"]))
        opt.step()
        sched.step()
        pairs = MICRO * PAIRS
        steps.append({"loss": loss / pairs, "tokens": tokens, "grad_norm": norm, "lr": lr,
                      "rewards_chosen": sums["chosen"] / pairs, "rewards_rejected": sums["rejected"] / pairs,
                      "rewards_accuracies": sums["acc"] / pairs, "rewards_margins": sums["margin"] / pairs,
                      "logps_chosen": sums["lc"] / pairs, "logps_rejected": sums["lr"] / pairs})
        references.append(step_refs)
    final = {n: p.detach().float().contiguous() for n, p in model.named_parameters()}
    save_file(final, os.path.join(OUT, f"final_{run_name}.safetensors"))
    print(run_name, "losses", ["%.4f" % s["loss"] for s in steps], "norms", ["%.3f" % s["grad_norm"] for s in steps])
    return {**cfg, "references": references, "steps": steps}


def main():
    torch.set_num_threads(1)
    use_float64_ops(True)
    vocab = load("mha_tied", torch.float64).config.vocab_size
    g = torch.Generator().manual_seed(21)
    batches = [[micro_batch(g, vocab) for _ in range(MICRO)] for _ in range(STEPS)]
    # LD-DPO's split needs pairs whose chosen completion is the longer one and pairs whose rejected one is.
    counts = [[sum(l != -100 for l in b["labels"][r * b["len"] + 1:(r + 1) * b["len"]]) for r in range(2 * PAIRS)]
              for step in batches for b in step]
    assert any(c[p] > c[p + PAIRS] for c in counts for p in range(PAIRS))
    assert any(c[p] < c[p + PAIRS] for c in counts for p in range(PAIRS))
    os.makedirs(OUT, exist_ok=True)
    losses = {name: run(name, batches) for name in LOSSES}
    with open(os.path.join(OUT, "steps.json"), "w") as f:
        json.dump({"config": CONFIG, "batches": batches, "losses": losses}, f)


if __name__ == "__main__":
    main()
