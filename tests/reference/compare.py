"""Float64 fixtures for batched pairwise comparisons and UnifiedReward's selection rule.

Inputs are float32 values (the margins M[i,j] = s_i - s_j or (L[i,j] - L[j,i]) / 2 are formed in float32, as the
library does, so that the signs and exact ties agree); everything after that is float64:
- P[i,j] = sigmoid(M[i,j]) (or 1, 1/2, 0 by the sign of M for hard score comparisons), NaN for a void pair;
- wins (a tie counts 1/2), Copeland scores (wins - losses), competition ranks (1 + number of higher scores);
- Bradley-Terry log-strengths: the maximiser of sum_{i!=j} P[i,j] log sigmoid(t_i - t_j) - ridge/2 |t|^2, found
  by Newton's method on torch autograd's gradient and Hessian to machine precision, then centred;
- best/worst (Copeland, then strength beyond a 1e-5 tie band, then index), position consistency sign(L[i,j]) == -sign(L[j,i]);
- the selection rule written the way UnifiedReward describes it: build the chosen and rejected lists, take the
  best-scored chosen and the worst-scored rejected, keep if chosen > rejected as numbers.

Non-finite floats are written as the strings "nan", "inf", "-inf" (JSON has no such numbers).
Run: python tests/reference/compare.py  (writes tests/fixtures/compare/*.json)
"""
import itertools
import json
import math
import pathlib

import numpy as np
import torch

OUT = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "compare"
RIDGE = 1e-2
STRENGTH_TIE = np.float32(1e-5)


def enc(values):
    out = []
    for v in np.asarray(values, dtype=np.float64).reshape(-1).tolist():
        out.append(v if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")))
    return out


def margins(kind, values, k):
    """M [K,K] float32 for one group."""
    v = np.asarray(values, dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        if kind == "scores":
            return v[:, None] - v[None, :]
        l = v.reshape(k, k)
        return np.float32(0.5) * (l - l.T)


def probability(m, hard):
    m = m.astype(np.float64)
    if hard:
        p = np.where(m > 0, 1.0, np.where(m < 0, 0.0, 0.5))
        return np.where(np.isnan(m), np.nan, p)
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-m))


def bt_fit(p, ridge):
    k = p.shape[0]
    valid = ~np.isnan(p) & ~np.eye(k, dtype=bool)
    w = torch.tensor(np.where(valid, p, 0.0), dtype=torch.float64)

    def objective(t):
        return (w * torch.nn.functional.logsigmoid(t[:, None] - t[None, :])).sum() - 0.5 * ridge * (t * t).sum()

    theta = torch.zeros(k, dtype=torch.float64)
    for _ in range(200):
        t = theta.clone().requires_grad_()
        g = torch.autograd.grad(objective(t), t)[0]
        h = torch.autograd.functional.hessian(objective, theta)
        step = torch.linalg.solve(-h, g)
        scale = 1.0
        while objective(theta + scale * step) < objective(theta) - 1e-15 and scale > 1e-10:
            scale /= 2
        theta = theta + scale * step
        if step.abs().max() < 1e-13:
            break
    grad = torch.autograd.functional.jacobian(objective, theta)
    assert grad.abs().max() < 1e-9, grad
    return (theta - theta.mean()).numpy()


def compare_group(kind, values, k, hard):
    m = margins(kind, values, k)
    p = probability(m, hard)
    np.fill_diagonal(p, 0.5)
    off = ~np.eye(k, dtype=bool)
    wins = ((m > 0) & off).sum(1) + 0.5 * ((m == 0) & off).sum(1)
    cope = ((m > 0) & off).sum(1) - ((m < 0) & off).sum(1)
    ranks = 1 + (cope[None, :] > cope[:, None]).sum(1)
    theta = bt_fit(p, RIDGE)
    # Copeland, then strength (closer than STRENGTH_TIE on the float32 strengths counts as equal), then index.
    s32 = theta.astype(np.float32)
    better = lambda a, b: cope[a] > cope[b] or (cope[a] == cope[b] and s32[a] > s32[b] + STRENGTH_TIE)
    best, worst = 0, k - 1
    for i in range(k):
        best = i if better(i, best) else best
        worst = k - 1 - i if better(worst, k - 1 - i) else worst
    consistency = None
    if kind == "log_odds":
        l = np.asarray(values, dtype=np.float32).reshape(k, k)
        pairs = [(l[i, j], l[j, i]) for i in range(k) for j in range(i + 1, k)]
        pairs = [(a, b) for a, b in pairs if not (np.isnan(a) or np.isnan(b))]
        consistency = sum(np.sign(a) == -np.sign(b) for a, b in pairs) / len(pairs) if pairs else float("nan")
    return dict(preference=p, wins=wins, copeland=cope, ranks=ranks, strengths=theta, best=best, worst=worst,
                consistency=consistency)


def compare_case(name, kind, values, g, k, hard=False):
    per = k if kind == "scores" else k * k
    values = np.asarray(values, dtype=np.float32).reshape(g, per)
    groups = [compare_group(kind, values[i], k, hard) for i in range(g)]
    cat = lambda key: enc(np.concatenate([np.asarray(x[key], dtype=np.float64).reshape(-1) for x in groups]))
    out = dict(name=name, kind=kind, link="hard" if hard else "sigmoid", g=g, k=k, ridge=RIDGE,
               values=enc(values))
    for key in ["preference", "wins", "copeland", "ranks", "strengths", "best", "worst"]:
        out[key] = cat(key)
    out["consistency"] = cat("consistency") if kind == "log_odds" else None
    return out


def select_group(kind, values, scores, k, pairing, ties, nans):
    """Returns (chosen, rejected, chosen_score, rejected_score, kept) or "error"."""
    m = margins(kind, values, k)
    s = np.asarray(scores, dtype=np.float32).astype(np.float64)
    pairs = [(2 * j, 2 * j + 1) for j in range(k // 2)] if pairing == "adjacent" else itertools.combinations(range(k), 2)
    chosen, rejected, dropped = [], [], False
    for a, b in pairs:
        v = m[a, b]
        if nans == "error" and (np.isnan(v) or np.isnan(s[a]) or np.isnan(s[b])):
            return "error"
        if np.isnan(v):
            continue
        if v > 0 or (v == 0 and ties == "first_wins"):
            chosen.append(a), rejected.append(b)
        elif v < 0:
            chosen.append(b), rejected.append(a)
        elif ties == "drop_group":
            dropped = True
    if dropped:
        return (-1, -1, float("nan"), float("nan"), 0)
    chosen = [c for c in chosen if not np.isnan(s[c])]
    rejected = [c for c in rejected if not np.isnan(s[c])]
    ci = min(chosen, key=lambda c: (-s[c], c)) if chosen else -1
    ri = min(rejected, key=lambda c: (s[c], c)) if rejected else -1
    cs = s[ci] if ci >= 0 else float("nan")
    rs = s[ri] if ri >= 0 else float("nan")
    return (ci, ri, cs, rs, int(ci >= 0 and ri >= 0 and cs > rs))


def select_case(name, kind, values, scores, g, k, pairing, ties, nans):
    per = k if kind == "scores" else k * k
    values = np.asarray(values, dtype=np.float32).reshape(g, per)
    scores = np.asarray(scores, dtype=np.float32).reshape(g, k)
    picks = [select_group(kind, values[i], scores[i], k, pairing, ties, nans) for i in range(g)]
    errors = [i for i, p in enumerate(picks) if p == "error"]
    out = dict(name=name, kind=kind, g=g, k=k, pairing=pairing, ties=ties, nans=nans, values=enc(values),
               scores=enc(scores), error_group=errors[0] if errors else None)
    if not errors:
        for idx, key in enumerate(["chosen", "rejected", "chosen_score", "rejected_score", "kept"]):
            out[key] = enc([p[idx] for p in picks])
    return out


def biased_log_odds(rng, g, k, bias):
    """L[i,j] = a_i - a_j + bias + noise: the first-shown candidate gets `bias` extra log-odds."""
    a = rng.normal(size=(g, k, 1)) * 1.5
    l = a - a.transpose(0, 2, 1) + bias + rng.normal(size=(g, k, k)) * 0.7
    return l.astype(np.float32)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    inf, nan = float("inf"), float("nan")
    cases = [
        compare_case("scores_sigmoid", "scores", rng.normal(size=(4, 6)) * 2.0, 4, 6),
        compare_case("scores_hard_ties", "scores", rng.integers(1, 6, size=(3, 7)), 3, 7, hard=True),
        compare_case("log_odds_biased", "log_odds", biased_log_odds(rng, 3, 8, 0.8), 3, 8),
        compare_case("dominant_hard", "scores", [[9, 1, 2, 3, 4], [0, 0, 0, 0, 5]], 2, 5, hard=True),
        compare_case("dominant_log_odds", "log_odds",
                     np.where(np.arange(4)[:, None] == 0, 30.0, np.where(np.arange(4)[None, :] == 0, -30.0, 0.0))[None],
                     1, 4),
        compare_case("all_ties", "scores", np.full((2, 4), 3.0), 2, 4),
        compare_case("single_candidate", "scores", [[1.5], [-2.0]], 2, 1),
        compare_case("single_candidate_log_odds", "log_odds", [[[0.3]]], 1, 1),
        compare_case("nan_inf_scores", "scores", [[1.0, nan, inf, inf, -inf, 0.5]], 1, 6),
        compare_case("nan_log_odds", "log_odds",
                     [[[0, 1, nan], [-2, 0, 0.5], [0.25, 0.75, 0]]], 1, 3),
        compare_case("wide_scores", "scores", rng.normal(size=(2, 12)) * 4.0, 2, 12),
    ]
    (OUT / "comparisons.json").write_text(json.dumps(cases))

    sel = []
    for pairing, ties in itertools.product(["adjacent", "all_pairs"], ["skip", "first_wins", "drop_group"]):
        ints = rng.integers(0, 4, size=(6, 7)).astype(np.float32)  # many ties
        scores = rng.integers(1, 11, size=(6, 7)).astype(np.float32)
        sel.append(select_case(f"scores_{pairing}_{ties}", "scores", ints, scores, 6, 7, pairing, ties, "skip"))
        lo = biased_log_odds(rng, 5, 6, 0.3)
        lo[:, 0, 1] = lo[:, 1, 0]  # a tie in the first pair of every group
        sel.append(select_case(f"log_odds_{pairing}_{ties}", "log_odds", lo, rng.normal(size=(5, 6)) * 3, 5, 6,
                               pairing, ties, "skip"))
    # Scores compared as numbers: the winner scores 10, the loser 9; as strings "10" < "9" and the pair would drop.
    assert "10" < "9"
    sel.append(select_case("numeric_not_string", "scores", [[2.0, 1.0]], [[10.0, 9.0]], 1, 2, "adjacent", "skip",
                           "error"))
    sel.append(select_case("single_candidate", "scores", [[1.0]], [[5.0]], 1, 1, "adjacent", "skip", "error"))
    sel.append(select_case("odd_k_last_unpaired", "scores", [[1, 2, 3, 4, 100.0]], [[1, 2, 3, 4, 100.0]], 1, 5,
                           "adjacent", "skip", "error"))
    sel.append(select_case("nan_skip", "scores", [[1, nan, 3, 2, 5, 4]], [[7, 8, nan, 1, 6, 2]], 1, 6, "all_pairs",
                           "skip", "skip"))
    sel.append(select_case("nan_error_verdict", "scores", [[1, 2], [1, nan]], [[1, 2], [3, 4]], 2, 2, "adjacent",
                           "skip", "error"))
    sel.append(select_case("nan_error_score", "scores", [[1, 2, 3, 4]], [[1, 2, nan, 4]], 1, 4, "adjacent", "skip",
                           "error"))
    sel.append(select_case("inf_scores", "scores", [[1, 2, 3, 4]], [[inf, 2, -inf, 4]], 1, 4, "adjacent", "skip",
                           "error"))
    sel.append(select_case("equal_scores_not_kept", "scores", [[2, 1, 2, 1]], [[5, 5, 5, 5]], 1, 4, "adjacent",
                           "skip", "error"))
    (OUT / "selections.json").write_text(json.dumps(sel))


if __name__ == "__main__":
    main()
