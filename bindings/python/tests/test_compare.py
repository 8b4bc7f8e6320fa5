"""compare and select_pairs (integer and selection outputs: no autograd) against references."""

import torch

import reference as ref
import unireward


def test_compare_scores(gen):
    scores = torch.randn(6, 5, generator=gen)
    scores[0, 1] = scores[0, 3]  # a tie
    out = unireward.compare(scores=scores)
    preference, wins, copeland, ranks = ref.compare_scores(scores)
    torch.testing.assert_close(out.preference.double(), preference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.wins.double(), wins)
    assert torch.equal(out.copeland.long(), copeland)
    assert torch.equal(out.ranks.long(), ranks)
    assert bool((out.converged == 1).all())
    # Best: highest Copeland score, then highest strength (within 1e-5), then lowest index; worst the reverse.
    for g in range(6):
        c, st = copeland[g].tolist(), out.strengths[g].tolist()
        top = [i for i in range(5) if c[i] == max(c)]
        top = [i for i in top if st[i] >= max(st[j] for j in top) - 1e-5]
        assert out.best[g].item() == min(top)
        low = [i for i in range(5) if c[i] == min(c)]
        low = [i for i in low if st[i] <= min(st[j] for j in low) + 1e-5]
        assert out.worst[g].item() == max(low)
    # Strengths order the candidates as the scores do (the sigmoid link is monotone); group 0 holds a tie.
    assert torch.equal(out.strengths[1:].argsort(1), scores[1:].argsort(1))
    assert out.consistency is None
    # Strengths keep the order of the scores (a monotone link) and have mean 0.
    torch.testing.assert_close(out.strengths.mean(1), torch.zeros(6), atol=1e-5, rtol=0)


def test_compare_log_odds_consistency(gen):
    log_odds = torch.randn(3, 4, 4, generator=gen)
    out = unireward.compare(log_odds=log_odds)
    i, j = torch.triu_indices(4, 4, offset=1)
    agree = (torch.sign(log_odds[:, i, j]) == -torch.sign(log_odds[:, j, i])).double().mean(1)
    torch.testing.assert_close(out.consistency.double(), agree)


def test_select_pairs(gen):
    scores = torch.randn(8, 6, generator=gen)
    pointwise = torch.randn(8, 6, generator=gen)
    out = unireward.select_pairs(pointwise, scores=scores)
    expected = ref.select_pairs_adjacent(scores, pointwise)
    assert out.chosen.tolist() == [e[0] for e in expected]
    assert out.rejected.tolist() == [e[1] for e in expected]
    assert out.kept.tolist() == [e[2] for e in expected]


def test_select_pairs_nan_policy():
    scores = torch.tensor([[float("nan"), 1.0, 2.0, 0.0]])
    pointwise = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    try:
        unireward.select_pairs(pointwise, scores=scores)
        raise AssertionError("a NaN verdict must fail under nans='error'")
    except unireward.UnirewardError as e:
        assert e.status_name == "UR_ERROR_INVALID_ARGUMENT"
    out = unireward.select_pairs(pointwise, scores=scores, nans="skip")
    assert out.chosen.tolist() == [2] and out.rejected.tolist() == [3]


def test_opcheck_compare(gen):
    ops = torch.ops.unireward
    scores = torch.randn(2, 3, generator=gen)
    torch.library.opcheck(ops.compare, (scores, "scores", "sigmoid", 1e-2, 1e-6, 100))
    torch.library.opcheck(ops.compare, (torch.randn(2, 3, 3, generator=gen), "log_odds", "hard", 1e-2, 1e-6, 100))
    torch.library.opcheck(ops.select_pairs, (scores, "scores", torch.randn(2, 3), "adjacent", "skip", "error"))
