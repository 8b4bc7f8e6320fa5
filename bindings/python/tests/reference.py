"""PyTorch float64 reference implementations of every unireward op, written from the formulas the library
follows (TRL's DPO family and reward trainer, diffusers' Diffusion-DPO, Liger's fused linear DPO). Autograd of
these is the reference for the library's backward kernels."""

import math

import torch
import torch.nn.functional as F


def sequence_logprobs(logits, labels, mask=None, ignore_index=-100, average=False):
    """(logps, token_counts, mean_logits, entropy) per sequence, TRL-style."""
    logits = logits.double()
    counted = labels != ignore_index
    if mask is not None:
        counted = counted & (mask != 0)
    logp = logits.log_softmax(-1)
    safe = torch.where(counted, labels, torch.zeros_like(labels)).long()
    token_logps = logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1) * counted
    counts = counted.sum(-1).double()
    per_token = lambda x: torch.where(counts > 0, (x * counted).sum(-1) / counts.clamp(min=1), torch.zeros_like(counts))
    logps = per_token(token_logps) if average else token_logps.sum(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return logps, counts, per_token(logits.mean(-1)), per_token(entropy)


def fused_linear_logprobs(hidden, weight, bias, labels, mask=None, ignore_index=-100, average=False):
    logits = hidden.double() @ weight.double().T
    if bias is not None:
        logits = logits + bias.double()
    return sequence_logprobs(logits, labels, mask, ignore_index, average)


def dpo_losses(pc, pr, rc, rr, loss_type="sigmoid", beta=0.1, label_smoothing=0.0, simpo_gamma=0.5, bco_delta=0.0,
               reference_free=False, discopop_tau=0.05):
    """TRL v0.27.2's per-pair losses (`DPOTrainer.dpo_loss`, `CPOTrainer` for simpo, `ORPOTrainer` for orpo) and the
    chosen / rejected rewards. Log-probs are already length-normalised where TRL does it (ipo, simpo, orpo).
    `reference_free` is TRL's: only the `logits` losses and APO drop the reference."""
    pc, pr = pc.double(), pr.double()
    if rc is None or loss_type in ("simpo", "orpo"):
        rc, rr = torch.zeros_like(pc), torch.zeros_like(pr)
    rc, rr = rc.double(), rr.double()
    a, b = pc - rc, pr - rr
    af, bf = (pc, pr) if reference_free else (a, b)
    logits = af - bf
    ls = label_smoothing
    smoothed = lambda x: -F.logsigmoid(beta * x) * (1 - ls) - F.logsigmoid(-beta * x) * ls
    if loss_type == "sigmoid":
        losses = smoothed(logits)
    elif loss_type == "robust":
        losses = (-F.logsigmoid(beta * logits) * (1 - ls) + F.logsigmoid(-beta * logits) * ls) / (1 - 2 * ls)
    elif loss_type == "exo_pair":
        eps = ls if ls > 0 else 1e-3
        losses = (beta * logits).sigmoid() * (F.logsigmoid(beta * logits) - math.log(1 - eps)) + (
            -beta * logits
        ).sigmoid() * (F.logsigmoid(-beta * logits) - math.log(eps))
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * logits)
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    elif loss_type == "bco_pair":
        losses = -F.logsigmoid(beta * a - bco_delta) - F.logsigmoid(-(beta * b - bco_delta))
    elif loss_type == "nca_pair":
        losses = -F.logsigmoid(beta * a) - 0.5 * F.logsigmoid(-beta * a) - 0.5 * F.logsigmoid(-beta * b)
    elif loss_type == "sppo_hard":
        losses = (a - 0.5 / beta) ** 2 + (b + 0.5 / beta) ** 2
    elif loss_type == "apo_zero":
        losses = 1 - (beta * af).sigmoid() + (beta * bf).sigmoid()
    elif loss_type == "apo_down":
        losses = (beta * af).sigmoid() + 1 - (beta * (af - bf)).sigmoid()
    elif loss_type == "aot":
        losses = smoothed(torch.sort(pc - pr, stable=True)[0] - torch.sort(rc - rr, stable=True)[0])
    elif loss_type == "aot_pair":
        losses = smoothed(torch.sort(a, stable=True)[0] - torch.sort(b, stable=True)[0])
    elif loss_type == "discopop":
        u = beta * (a - b)
        m = torch.sigmoid(u / discopop_tau)
        losses = -F.logsigmoid(u) * (1 - m) + torch.exp(-u) * m
    elif loss_type == "simpo":
        losses = smoothed(logits - simpo_gamma / beta)
    elif loss_type == "orpo":
        log_odds = (pc - pr) - (torch.log1p(-torch.exp(pc)) - torch.log1p(-torch.exp(pr)))
        losses = -beta * F.logsigmoid(log_odds)
    else:
        raise ValueError(loss_type)
    return losses, beta * a.detach(), beta * b.detach()


def bradley_terry_loss(chosen, rejected, margin=None, center_rewards_coefficient=None):
    """TRL's RewardTrainer loss."""
    chosen, rejected = chosen.double(), rejected.double()
    diff = chosen - rejected if margin is None else chosen - rejected - margin.double()
    loss = -F.logsigmoid(diff).mean()
    if center_rewards_coefficient:
        loss = loss + center_rewards_coefficient * ((chosen + rejected) ** 2).mean()
    return loss


def kwise_loss(rewards, order=None, method="all_pairs"):
    """Rewards [G, K] listed best first (or reordered by `order`): mean over groups."""
    r = rewards.double()
    if order is not None:
        r = r.gather(1, order.long())
    k = r.shape[1]
    if method == "all_pairs":
        i, j = torch.triu_indices(k, k, offset=1)
        per_group = -F.logsigmoid(r[:, i] - r[:, j]).mean(1)
    else:  # Plackett-Luce
        tails = torch.stack([torch.logsumexp(r[:, s:], dim=1) for s in range(k)], dim=1)
        per_group = -(r - tails).sum(1)
    return per_group.mean()


def diffusion_dpo_loss(mw, ml, rw, rl, tw, tl, beta=2500.0):
    """The Diffusion-DPO authors' code (diffusers' train_diffusion_dpo.py with its beta_dpo = beta / 2)."""
    mse = lambda p, t: ((p.double() - t.double()) ** 2).flatten(1).mean(1)
    model_diff = mse(mw, tw) - mse(ml, tl)
    ref_diff = mse(rw, tw) - mse(rl, tl)
    inside = -0.5 * beta * (model_diff - ref_diff)
    return -F.logsigmoid(inside).mean()


def scalar_reward(hidden, ends, weight, bias=None):
    rows = hidden.double()[torch.arange(hidden.shape[0]), ends.long()]
    out = rows @ weight.double().T
    return out if bias is None else out + bias.double()


def verdict_head(logits, class_sets, values=None):
    """(probs, log_probs, expected_score) from the logsumexp over each class's token ids."""
    x = logits.double()
    class_lse = torch.stack([torch.logsumexp(x[:, ids], dim=1) for ids in class_sets], dim=1)
    log_probs = class_lse - torch.logsumexp(class_lse, dim=1, keepdim=True)
    probs = log_probs.exp()
    expected = None if values is None else probs @ torch.tensor(values, dtype=torch.float64)
    return probs, log_probs, expected


def compare_scores(scores):
    """For scores [G, K] with the sigmoid link: preference P, wins, Copeland scores and ranks."""
    s = scores.double()
    margin = s[:, :, None] - s[:, None, :]
    preference = margin.sigmoid()
    k = s.shape[1]
    eye = torch.eye(k, dtype=torch.bool)
    preference = torch.where(eye, torch.full_like(preference, 0.5), preference)
    won = ((margin > 0) & ~eye).double() + 0.5 * ((margin == 0) & ~eye).double()
    wins = won.sum(2)
    copeland = (margin > 0).sum(2) - (margin < 0).sum(2)
    ranks = 1 + (copeland[:, None, :] > copeland[:, :, None]).sum(2)
    return preference, wins, copeland, ranks


def select_pairs_adjacent(scores, pointwise):
    """UnifiedReward's rule with adjacent pairing, ties skipped: (chosen, rejected, kept) per group."""
    out = []
    for s, p in zip(scores.tolist(), pointwise.tolist()):
        winners, losers = [], []
        for i in range(0, len(s) - 1, 2):
            if s[i] > s[i + 1]:
                winners.append(i), losers.append(i + 1)
            elif s[i + 1] > s[i]:
                winners.append(i + 1), losers.append(i)
        if not winners:
            out.append((-1, -1, 0))
            continue
        chosen = max(winners, key=lambda i: (p[i], -i))
        rejected = min(losers, key=lambda i: (p[i], i))
        out.append((chosen, rejected, int(p[chosen] > p[rejected])))
    return out
