"""Float64 reference for the preference losses (DPO family, reward models, Diffusion-DPO), as TRL and diffusers
implement them. Writes the JSON fixtures that tests/preference*.rs check against.

    /root/.cache/unireward/venv/bin/python tests/reference/preference.py

Inputs are drawn in float32 (what the library is fed) and computed on in float64; gradients come from autograd.
Conventions shared with the library (see src/ops/preference/):
- log-probs are per-sequence sums; IPO, SimPO and ORPO divide them (policy and reference) by the token counts, as
  TRL's `average_log_prob` does; the RPO NLL is -sum(chosen sums) / sum(chosen counts) (token-mean cross-entropy);
- reference-free mode is TRL's per loss type (see TrlDpo.dpo_loss); without reference log-probs they are 0;
- K-wise rewards are listed best first unless an `order` gives, for each rank, the candidate's index.
"""

import json
import math
import os

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "preference")
gen = torch.Generator().manual_seed(20261128)


def f32(t):
    """Round to float32 (the library's input), then compute in float64."""
    return t.float().double()


def uniform(shape, lo, hi):
    return f32(lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64))


def normal(shape, scale=1.0):
    return f32(scale * torch.randn(shape, generator=gen, dtype=torch.float64))


def as_list(t):
    return [float(v) for v in t.detach().reshape(-1)]


def inputs_list(t):
    """Float32 inputs in 9 significant digits: enough to round-trip to the same float32, and short."""
    return [float("%.9g" % float(v)) for v in t.detach().reshape(-1)]


# ----------------------------------------------------------------------------------------------------------------
# DPO family: TRL v0.27.2's DPOTrainer (trl/trainer/dpo_trainer.py; dpo_loss is the same code in v0.24.0-v0.27.2),
# transcribed: `dpo_loss`, the loss-type loop and weighting of `get_batch_loss_metrics`, and what
# `concatenated_forward` does to the per-sequence log-probs (IPO's averaging, LD-DPO). SimPO is CPOTrainer.cpo_loss,
# ORPO ORPOTrainer.odds_ratio_loss.


class RunningMoments:
    """trl.trainer.utils.RunningMoments.update on one scalar per call (one process): the running mean."""

    def __init__(self, mean=0.0, count=1e-24):
        self.mean, self.count = mean, count

    def update(self, xs):
        delta = xs.item() - self.mean
        tot_count = self.count + 1
        self.mean += delta * 1 / tot_count
        self.count = tot_count


def cap_exp(value, cap):
    return torch.exp(torch.clamp(value, max=cap))


class TrlDpo:
    def __init__(self, beta, label_smoothing, reference_free, f_divergence_type, f_alpha_divergence_coef,
                 discopop_tau, running, exp_cap):
        self.beta, self.label_smoothing, self.reference_free = beta, label_smoothing, reference_free
        self.f_divergence_type, self.alpha_coef = f_divergence_type, f_alpha_divergence_coef
        self.discopop_tau, self.running, self.exp_cap = discopop_tau, running, exp_cap

    def dpo_loss(self, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, loss_type="sigmoid"):
        chosen_logratios = chosen_logps - (not self.reference_free) * ref_chosen_logps
        rejected_logratios = rejected_logps - (not self.reference_free) * ref_rejected_logps
        if self.f_divergence_type == "alpha_divergence":
            alpha_coef = self.alpha_coef
            logits = (cap_exp(rejected_logratios * -alpha_coef, self.exp_cap)
                      - cap_exp(chosen_logratios * -alpha_coef, self.exp_cap)) / alpha_coef
        else:
            logratios = chosen_logps - rejected_logps
            if self.reference_free:
                ref_logratios = torch.tensor([0], dtype=logratios.dtype)
            else:
                ref_logratios = ref_chosen_logps - ref_rejected_logps
            logits = logratios - ref_logratios
            if self.f_divergence_type == "js_divergence":
                logits = logits - (F.softplus(chosen_logratios) - F.softplus(rejected_logratios))
        beta, ls = self.beta, self.label_smoothing
        if loss_type == "sigmoid":
            losses = -F.logsigmoid(beta * logits) * (1 - ls) - F.logsigmoid(-beta * logits) * ls
        elif loss_type == "robust":
            losses = (-F.logsigmoid(beta * logits) * (1 - ls) + F.logsigmoid(-beta * logits) * ls) / (1 - 2 * ls)
        elif loss_type == "exo_pair":
            # TRL sets self.label_smoothing = 1e-3 here for good when it is 0; the library uses 1e-3 for EXO only.
            ls = ls if ls != 0 else 1e-3
            losses = (beta * logits).sigmoid() * (F.logsigmoid(beta * logits) - math.log(1 - ls)) + (
                -beta * logits).sigmoid() * (F.logsigmoid(-beta * logits) - math.log(ls))
        elif loss_type == "hinge":
            losses = torch.relu(1 - beta * logits)
        elif loss_type == "ipo":
            losses = (logits - 1 / (2 * beta)) ** 2
        elif loss_type == "bco_pair":
            chosen_logratios = chosen_logps - ref_chosen_logps
            rejected_logratios = rejected_logps - ref_rejected_logps
            rewards = torch.cat((beta * chosen_logratios, beta * rejected_logratios), 0).mean().detach()
            self.running.update(rewards)
            delta = self.running.mean
            losses = -F.logsigmoid((beta * chosen_logratios) - delta) - F.logsigmoid(
                -(beta * rejected_logratios - delta))
        elif loss_type == "sppo_hard":
            a = chosen_logps - ref_chosen_logps
            b = rejected_logps - ref_rejected_logps
            losses = (a - 0.5 / beta) ** 2 + (b + 0.5 / beta) ** 2
        elif loss_type == "nca_pair":
            chosen_rewards = (chosen_logps - ref_chosen_logps) * beta
            rejected_rewards = (rejected_logps - ref_rejected_logps) * beta
            losses = (-F.logsigmoid(chosen_rewards) - 0.5 * F.logsigmoid(-chosen_rewards)
                      - 0.5 * F.logsigmoid(-rejected_rewards))
        elif loss_type == "aot_pair":
            chosen_logratios = chosen_logps - ref_chosen_logps
            rejected_logratios = rejected_logps - ref_rejected_logps
            chosen_logratios_sorted, _ = torch.sort(chosen_logratios, dim=0, stable=True)
            rejected_logratios_sorted, _ = torch.sort(rejected_logratios, dim=0, stable=True)
            delta = chosen_logratios_sorted - rejected_logratios_sorted
            losses = -F.logsigmoid(beta * delta) * (1 - ls) - F.logsigmoid(-beta * delta) * ls
        elif loss_type == "aot":
            logratios = chosen_logps - rejected_logps
            ref_logratios = ref_chosen_logps - ref_rejected_logps
            logratios_sorted, _ = torch.sort(logratios, dim=0, stable=True)
            ref_logratios_sorted, _ = torch.sort(ref_logratios, dim=0, stable=True)
            delta = logratios_sorted - ref_logratios_sorted
            losses = -F.logsigmoid(beta * delta) * (1 - ls) - F.logsigmoid(-beta * delta) * ls
        elif loss_type == "apo_zero":
            losses = (1 - F.sigmoid(beta * chosen_logratios)) + F.sigmoid(beta * rejected_logratios)
        elif loss_type == "apo_down":
            losses = F.sigmoid(beta * chosen_logratios) + (
                1 - F.sigmoid(beta * (chosen_logratios - rejected_logratios)))
        elif loss_type == "discopop":
            logratios = chosen_logps - rejected_logps
            ref_logratios = ref_chosen_logps - ref_rejected_logps
            logits = (logratios - ref_logratios) * beta
            log_ratio_modulation = torch.sigmoid(logits / self.discopop_tau)
            losses = -F.logsigmoid(logits) * (1 - log_ratio_modulation) + torch.exp(-logits) * log_ratio_modulation
        else:
            raise ValueError(loss_type)
        chosen_rewards = beta * (chosen_logps - ref_chosen_logps).detach()
        rejected_rewards = beta * (rejected_logps - ref_rejected_logps).detach()
        return losses, chosen_rewards, rejected_rewards


def cpo_or_orpo(loss_type, c, r, beta, ls, gamma):
    """SimPO (CPOTrainer.cpo_loss) and the ORPO term (ORPOTrainer.odds_ratio_loss): (losses, rewards, orpo logs)."""
    if loss_type == "simpo":
        logits = (c - r) - gamma / beta
        losses = -F.logsigmoid(beta * logits) * (1 - ls) - F.logsigmoid(-beta * logits) * ls
        return losses, beta * c.detach(), beta * r.detach(), None
    log_odds = (c - r) - (torch.log1p(-torch.exp(c)) - torch.log1p(-torch.exp(r)))
    ratio = F.logsigmoid(log_odds)
    return -beta * ratio, beta * c.detach(), beta * r.detach(), (ratio, log_odds)


EXP_CAP_F32 = math.floor(math.log(torch.finfo(torch.float32).max) * 1e4) / 1e4


def dpo_case(name, loss_type, pairs, beta=0.1, ls=0.0, reference_free=False, rpo_alpha=None, gamma=0.5,
             grad_output=1.0, spread=1.0, logp_scale=(20.0, 200.0), lengths=None, loss_weights=None,
             f_divergence_type="reverse_kl", f_alpha=1.0, tau=0.05, bco=None, ld_alpha=None, weighted=False,
             with_reference=True, ties=False):
    """One fixture case. `loss_type` is a name or a list (with `loss_weights`); `bco` is (mean, count) of the
    running mean before the batch, or ("fixed", delta)."""
    types = loss_type if isinstance(loss_type, list) else [loss_type]
    weights = loss_weights or [1.0] * len(types)
    trl_trainer = not any(t in ("simpo", "orpo") for t in types)
    normalised = not trl_trainer or "ipo" in types  # concatenated_forward: `if "ipo" in self.loss_type`
    uses_reference = trl_trainer and with_reference
    need_lengths = normalised or rpo_alpha is not None or ld_alpha is not None
    if lengths is None:
        lengths = (torch.randint(1, 64, (pairs,), generator=gen), torch.randint(1, 64, (pairs,), generator=gen))
    lc, lr = [l.double() for l in lengths]
    if normalised:
        # realistic sums: about -0.1 .. -3 nats per token
        c_raw = -lc * uniform(pairs, 0.05, 3.0)
        r_raw = -lr * uniform(pairs, 0.05, 3.0)
    else:
        c_raw = -uniform(pairs, *logp_scale)
        r_raw = -uniform(pairs, *logp_scale)
    c_raw, r_raw = f32(c_raw), f32(r_raw)
    if ties:  # equal log-ratio differences: AOT's sorts meet ties
        r_raw = f32(c_raw - 3.0)
    ref_c = f32(c_raw + spread * normal(pairs))
    ref_r = f32(r_raw + spread * normal(pairs))
    pc = c_raw.clone().requires_grad_()
    pr = r_raw.clone().requires_grad_()
    # LD-DPO: the verbose part of each sum (the tokens past the public length min(lc, lr)): a share of the sum.
    verbose = None
    if ld_alpha is not None:
        public = torch.minimum(lc, lr)
        share = lambda l: torch.where(l > public, (l - public) / l * uniform(pairs, 0.5, 1.5), 0.0).clamp(max=1.0)
        verbose = (f32(c_raw * share(lc)).requires_grad_(), f32(r_raw * share(lr)).requires_grad_())
        c = (pc - verbose[0]) + ld_alpha * verbose[0]  # front_logps + ld_alpha * rear_logps
        r = (pr - verbose[1]) + ld_alpha * verbose[1]
    else:
        c, r = (pc / lc, pr / lr) if normalised else (pc, pr)
    cref, rref = (ref_c / lc, ref_r / lr) if normalised else (ref_c, ref_r)
    if not uses_reference:
        cref, rref = torch.zeros(pairs, dtype=torch.float64), torch.zeros(pairs, dtype=torch.float64)
    running = None
    if bco is not None and bco[0] != "fixed":
        running = RunningMoments(bco[0], bco[1] if bco[1] > 0 else 1e-24)
    elif bco is not None:
        running = type("Fixed", (), {"update": lambda self, xs: None, "mean": bco[1]})()
    orpo = None
    if trl_trainer:
        trl = TrlDpo(beta, ls, reference_free, f_divergence_type, f_alpha, tau, running, EXP_CAP_F32)
        losses, rc, rr = 0, 0, 0
        for t, w in zip(types, weights):
            l, crw, rrw = trl.dpo_loss(c, r, cref, rref, t)
            losses, rc, rr = losses + l * w, rc + crw * w, rr + rrw * w
    else:
        losses, rc, rr, orpo = cpo_or_orpo(types[0], c, r, beta, ls, gamma)
    per_pair = losses.detach().clone()
    nll = None
    if rpo_alpha is not None:
        # TRL: nll_loss = token-mean cross-entropy of the chosen sequences; losses = losses + rpo_alpha * nll_loss
        nll = -pc.sum() / lc.sum()
        losses = losses + rpo_alpha * nll
    pair_weights = None
    if weighted:
        # WPO's policy_weights (clamped at 1), constants
        pair_weights = f32(torch.clamp(uniform(pairs, 0.2, 1.3), max=1.0))
        losses = losses * pair_weights
    loss = losses.mean()
    (loss * grad_output).backward()
    metrics = {
        "rewards_chosen": rc.mean().item(),
        "rewards_rejected": rr.mean().item(),
        "rewards_accuracies": (rc > rr).double().mean().item(),
        "rewards_margins": (rc - rr).mean().item(),
        "logps_chosen": c.detach().mean().item(),
        "logps_rejected": r.detach().mean().item(),
        "nll_loss": None if nll is None else nll.item(),
        "log_odds_ratio": None if orpo is None else orpo[0].mean().item(),
        "log_odds_chosen": None if orpo is None else orpo[1].mean().item(),
    }
    bco_out = None
    if bco is not None:
        bco_out = ["fixed", bco[1]] if bco[0] == "fixed" else [running.mean, bco[1] + 1]
    return {
        "name": name,
        "config": {"loss_type": types, "loss_weights": weights, "beta": beta, "label_smoothing": ls,
                   "reference_free": reference_free, "rpo_alpha": rpo_alpha, "simpo_gamma": gamma,
                   "f_divergence_type": f_divergence_type, "f_alpha_divergence_coef": f_alpha, "discopop_tau": tau,
                   "ld_alpha": ld_alpha, "bco": None if bco is None else list(bco), "grad_output": grad_output},
        "inputs": {
            "policy_chosen": inputs_list(c_raw),
            "policy_rejected": inputs_list(r_raw),
            "reference_chosen": inputs_list(ref_c) if uses_reference else None,
            "reference_rejected": inputs_list(ref_r) if uses_reference else None,
            "chosen_lengths": [int(v) for v in lengths[0]] if need_lengths else None,
            "rejected_lengths": [int(v) for v in lengths[1]] if need_lengths else None,
            "policy_chosen_verbose": None if verbose is None else inputs_list(verbose[0]),
            "policy_rejected_verbose": None if verbose is None else inputs_list(verbose[1]),
            "pair_weights": None if pair_weights is None else inputs_list(pair_weights),
        },
        "expected": {"loss": loss.item(), "losses": as_list(per_pair), "grad_policy_chosen": as_list(pc.grad),
                     "grad_policy_rejected": as_list(pr.grad),
                     "grad_policy_chosen_verbose": None if verbose is None else as_list(verbose[0].grad),
                     "grad_policy_rejected_verbose": None if verbose is None else as_list(verbose[1].grad),
                     "metrics": metrics, "bco": bco_out},
    }


ALL_TYPES = ["sigmoid", "hinge", "ipo", "robust", "bco_pair", "exo_pair", "nca_pair", "sppo_hard", "apo_zero",
             "apo_down", "simpo", "orpo", "aot", "aot_pair", "discopop"]


def dpo_cases():
    P = 6
    cases = []
    for t in ALL_TYPES:
        # beta 0.5 makes the margins matter at spread 1; ipo and sppo want small log-ratios
        cases.append(dpo_case(f"{t}", t, P, beta=0.5, bco=(0.3, 4.0) if t == "bco_pair" else None))
        if t not in ("simpo", "orpo"):
            # TRL's reference_free, per loss type (the reference still counts in some, and in the rewards)
            cases.append(dpo_case(f"{t}_reference_free", t, P, beta=0.5, reference_free=True,
                                  bco=(0.0, 0.0) if t == "bco_pair" else None))
    for f in ["js_divergence", "alpha_divergence"]:
        for t in ["sigmoid", "hinge", "ipo", "robust", "exo_pair", "apo_down", "discopop"]:
            cases.append(dpo_case(f"{t}_{f}", t, P, beta=0.5, f_divergence_type=f, f_alpha=0.7, spread=0.3))
        cases.append(dpo_case(f"sigmoid_{f}_reference_free", "sigmoid", P, beta=0.5, f_divergence_type=f,
                              reference_free=True, logp_scale=(0.1, 2.0), spread=0.3))
    cases += [
        dpo_case("sigmoid_forward_kl", "sigmoid", P, beta=0.5, f_divergence_type="alpha_divergence", f_alpha=1.0,
                 spread=0.3),
        dpo_case("sigmoid_alpha_capped", "sigmoid", P, beta=0.5, f_divergence_type="alpha_divergence", f_alpha=2.0,
                 spread=60.0),
        dpo_case("sigmoid_cdpo", "sigmoid", P, beta=0.2, ls=0.1),
        dpo_case("robust_ls", "robust", P, beta=0.2, ls=0.2),
        dpo_case("exo_pair_ls", "exo_pair", P, beta=0.7, ls=0.25),
        dpo_case("aot_ls", "aot", P, beta=0.7, ls=0.2),
        dpo_case("aot_pair_ls", "aot_pair", 9, beta=0.7, ls=0.2),
        dpo_case("aot_ties", "aot", 7, beta=0.5, ties=True),
        dpo_case("aot_pair_weighted", "aot_pair", 7, beta=0.5, weighted=True),
        dpo_case("discopop_tau", "discopop", P, beta=0.3, tau=0.5),
        dpo_case("simpo_ls", "simpo", P, beta=2.0, ls=0.1, gamma=1.2),
        dpo_case("sigmoid_no_reference", "sigmoid", P, beta=0.1, reference_free=True, with_reference=False),
        dpo_case("bco_pair_no_reference", "bco_pair", P, beta=0.01, reference_free=True, with_reference=False,
                 bco=(-1.5, 2.0)),
        dpo_case("bco_pair_first_step", "bco_pair", P, beta=0.1, bco=(0.0, 0.0)),
        dpo_case("bco_pair_fixed", "bco_pair", P, beta=0.1, bco=("fixed", 0.4)),
        dpo_case("sigmoid_rpo", "sigmoid", P, beta=0.1, rpo_alpha=0.5),
        dpo_case("ipo_rpo", "ipo", P, beta=0.3, rpo_alpha=1.0),
        dpo_case("orpo_nll", "orpo", P, beta=0.1, rpo_alpha=1.0),
        dpo_case("sigmoid_grad_output", "sigmoid", P, beta=0.1, grad_output=2.5),
        # TRL's loss_type lists with loss_weights (MPO), WPO weights, LD-DPO
        dpo_case("mixture_sigmoid_bco", ["sigmoid", "bco_pair"], P, beta=0.2, loss_weights=[0.8, 0.2],
                 bco=(0.1, 3.0)),
        dpo_case("mixture_with_ipo", ["sigmoid", "ipo", "aot"], P, beta=0.4, loss_weights=[1.0, 0.5, 0.25]),
        dpo_case("mixture_rpo_weighted", ["apo_zero", "nca_pair"], P, beta=0.3, loss_weights=[0.6, 0.6],
                 rpo_alpha=0.4, weighted=True),
        dpo_case("sigmoid_weighted", "sigmoid", P, beta=0.3, weighted=True),
        dpo_case("sigmoid_ld", "sigmoid", P, beta=0.2, ld_alpha=0.4),
        dpo_case("ipo_ld_rpo", "ipo", P, beta=0.3, ld_alpha=0.6, rpo_alpha=1.0),
        dpo_case("sppo_ld_reference_free", "sppo_hard", P, beta=0.05, ld_alpha=0.5, reference_free=True),
        dpo_case("single_pair", "sigmoid", 1, beta=0.1),
        dpo_case("single_pair_aot", "aot", 1, beta=0.1),
        dpo_case("single_pair_ipo", "ipo", 1, beta=0.1, lengths=(torch.tensor([1]), torch.tensor([1]))),
        dpo_case("beta_5000", "sigmoid", P, beta=5000.0, spread=1e-3),
        dpo_case("beta_5000_ls", "sigmoid", P, beta=5000.0, ls=0.1, spread=1e-3),
        dpo_case("beta_5000_ipo", "ipo", P, beta=5000.0, spread=1e-3),
        dpo_case("beta_5000_exo", "exo_pair", P, beta=5000.0, spread=1e-3),
        dpo_case("beta_5000_nca", "nca_pair", P, beta=5000.0, spread=1e-3),
        dpo_case("beta_5000_apo_down", "apo_down", P, beta=5000.0, spread=1e-3),
        dpo_case("beta_5000_aot_pair", "aot_pair", P, beta=5000.0, spread=1e-3),
    ]
    for t in ["sigmoid", "hinge", "robust", "bco_pair", "nca_pair", "apo_zero", "apo_down", "exo_pair", "aot"]:
        # log-probs of 1e4 and references 1e4 away: sigmoids saturate, log-sigmoids are linear
        cases.append(dpo_case(f"huge_{t}", t, P, beta=0.1, logp_scale=(1.0, 1e4), spread=1e4,
                              ls=0.1 if t in ("robust",) else 0.0, bco=(0.0, 0.0) if t == "bco_pair" else None))
    return cases


# ----------------------------------------------------------------------------------------------------------------
# Reward models


def bradley_terry_case(name, pairs, margin=False, coef=None, equal=False, scale=2.0):
    rc = normal(pairs, scale)
    rr = rc.clone() if equal else normal(pairs, scale)
    m = uniform(pairs, 0.0, 1.0) if margin else None
    rc.requires_grad_()
    rr.requires_grad_()
    # RewardTrainer.compute_loss: loss = -logsigmoid(rc - rr [- margin]).mean();
    # loss += center_rewards_coefficient * mean((rc + rr) ** 2)
    d = rc - rr - (m if m is not None else 0.0)
    loss = -F.logsigmoid(d).mean()
    if coef is not None:
        loss = loss + coef * torch.mean((rc + rr) ** 2)
    loss.backward()
    return {
        "name": name,
        "center_rewards_coefficient": coef,
        "inputs": {"rewards_chosen": inputs_list(rc), "rewards_rejected": inputs_list(rr),
                   "margin": None if m is None else inputs_list(m)},
        "expected": {"loss": loss.item(), "grad_chosen": as_list(rc.grad), "grad_rejected": as_list(rr.grad),
                     "accuracy": (rc > rr).double().mean().item()},
    }


def kwise_case(name, groups, k, method, permuted=False, equal=False, scale=2.0):
    rewards = torch.zeros(groups, k, dtype=torch.float64) if equal else normal((groups, k), scale)
    order = torch.stack([torch.randperm(k, generator=gen) for _ in range(groups)]) if permuted else None
    rewards.requires_grad_()
    ranked = rewards.gather(1, order) if order is not None else rewards  # ranked[g, i]: the i-th best
    total, correct = 0.0, 0.0
    pairs = k * (k - 1) // 2
    for g in range(groups):
        x = ranked[g]
        if method == "all_pairs":
            # mean over the K(K-1)/2 pairs (i ranked above j) of -logsigmoid(r_i - r_j)
            terms = [-F.logsigmoid(x[i] - x[j]) for i in range(k) for j in range(i + 1, k)]
            total = total + torch.stack(terms).sum() / pairs
        else:
            # Plackett-Luce negative log-likelihood of the ranking: -sum_i [x_i - logsumexp(x_i..x_{K-1})]
            total = total - sum(x[i] - torch.logsumexp(x[i:], 0) for i in range(k))
        correct += sum(float(x[i] > x[j]) for i in range(k) for j in range(i + 1, k)) / pairs
    loss = total / groups
    loss.backward()
    return {
        "name": name,
        "method": method,
        "inputs": {"rewards": inputs_list(rewards), "groups": groups, "k": k,
                   "order": None if order is None else [int(v) for v in order.reshape(-1)]},
        "expected": {"loss": loss.item(), "grad": as_list(rewards.grad), "accuracy": correct / groups},
    }


def reward_cases():
    bt = [
        bradley_terry_case("plain", 8),
        bradley_terry_case("margin", 8, margin=True),
        bradley_terry_case("center", 8, coef=0.01),
        bradley_terry_case("margin_center", 8, margin=True, coef=0.5),
        bradley_terry_case("single_pair", 1, coef=0.01),
        bradley_terry_case("all_equal", 8, equal=True, coef=0.01),
        bradley_terry_case("huge", 8, coef=0.001, scale=1e4),
    ]
    kw = []
    for method in ["all_pairs", "plackett_luce"]:
        kw += [
            kwise_case(f"{method}_k2", 5, 2, method),
            kwise_case(f"{method}_k7", 3, 7, method),
            kwise_case(f"{method}_k7_permuted", 3, 7, method, permuted=True),
            kwise_case(f"{method}_single_group", 1, 4, method),
            kwise_case(f"{method}_all_equal", 2, 5, method, equal=True),
            kwise_case(f"{method}_huge", 2, 5, method, scale=1e4),
        ]
    return {"bradley_terry": bt, "kwise": kw}


# ----------------------------------------------------------------------------------------------------------------
# Diffusion-DPO


def diffusion_case(name, shape, beta, closeness=1e-2):
    """The Diffusion-DPO authors' loss (diffusers' examples/research_projects/diffusion_dpo/train_diffusion_dpo.py
    with its beta_dpo = beta / 2), with separate targets."""
    b = shape[0]
    target_w, target_l = normal(shape), normal(shape)
    ref_w = f32(target_w + 0.5 * normal(shape))
    ref_l = f32(target_l + 0.5 * normal(shape))
    model_w = f32(ref_w + closeness * normal(shape)).requires_grad_()
    model_l = f32(ref_l + closeness * normal(shape)).requires_grad_()

    def mse(pred, target):
        return F.mse_loss(pred, target, reduction="none").mean(dim=list(range(1, len(shape))))

    model_losses_w, model_losses_l = mse(model_w, target_w), mse(model_l, target_l)
    model_diff = model_losses_w - model_losses_l
    ref_losses_w, ref_losses_l = mse(ref_w, target_w), mse(ref_l, target_l)
    ref_diff = ref_losses_w - ref_losses_l
    inside_term = -0.5 * beta * (model_diff - ref_diff)
    implicit_acc = (inside_term > 0).sum().double() / inside_term.size(0)
    loss = -1 * F.logsigmoid(inside_term).mean()
    loss.backward()
    return {
        "name": name,
        "beta": beta,
        "shape": list(shape),
        "inputs": {"model_winner": inputs_list(model_w), "model_loser": inputs_list(model_l), "ref_winner": inputs_list(ref_w),
                   "ref_loser": inputs_list(ref_l), "target_winner": inputs_list(target_w),
                   "target_loser": inputs_list(target_l)},
        "expected": {
            "loss": loss.item(),
            "grad_model_winner": as_list(model_w.grad),
            "grad_model_loser": as_list(model_l.grad),
            "implicit_accuracy": implicit_acc.item(),
            "model_mse_winner": model_losses_w.mean().item(),
            "model_mse_loser": model_losses_l.mean().item(),
            "ref_mse_winner": ref_losses_w.mean().item(),
            "ref_mse_loser": ref_losses_l.mean().item(),
        },
    }


def diffusion_cases():
    return [
        diffusion_case("small", (4, 3, 2, 2), beta=2500.0),
        diffusion_case("beta_5000", (3, 2, 3, 3), beta=5000.0, closeness=1e-3),
        diffusion_case("beta_5000_saturated", (2, 2, 3, 3), beta=5000.0, closeness=0.3),
        diffusion_case("single_sample", (1, 7), beta=100.0),
        diffusion_case("wide", (2, 3, 5, 7), beta=5000.0, closeness=1e-3),
    ]


def write(name, data):
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, name)
    with open(path, "w") as f:
        json.dump(data, f, separators=(",", ":"))
    print(f"{path}: {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    write("dpo.json", {"cases": dpo_cases()})
    write("reward_model.json", reward_cases())
    write("diffusion_dpo.json", {"cases": diffusion_cases()})
