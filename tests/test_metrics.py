"""Rank metrics and accumulators against a brute-force numpy argsort, plus cases worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dyembed.evaluate.metrics import (
    RankAccumulator,
    TopKAccumulator,
    metric_names,
    multi_target_metrics,
    pessimistic_positions,
    popularity_percentile,
    ranks_from_scores,
    single_target_metrics,
)

KS = [1, 3, 10]


def brute_order(scores: np.ndarray, relevant: set[int], masked: np.ndarray | None) -> list[int]:
    """The full ranked list the slow way: sort by (-score, relevant last) and drop masked items."""
    items = [j for j in range(scores.size) if masked is None or not masked[j] or j in relevant]
    return sorted(items, key=lambda j: (-scores[j], j in relevant))


def brute_metrics(scores: np.ndarray, relevant: set[int], masked: np.ndarray | None, ks: list[int]) -> dict[str, float]:
    """Every metric read off the ranked list itself (not from a rank formula)."""
    order = brute_order(scores, relevant, masked)
    rel = [1.0 if j in relevant else 0.0 for j in order]
    out = {}
    for k in ks:
        out[f"recall@{k}"] = sum(rel[:k]) / len(relevant)
        dcg = sum(r / math.log2(i + 2) for i, r in enumerate(rel[:k]))
        idcg = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), k)))
        out[f"ndcg@{k}"] = dcg / idcg
        first = next(i for i, r in enumerate(rel) if r) + 1
        out[f"mrr@{k}"] = 1 / first if first <= k else 0.0
    out["mrr"] = 1 / (next(i for i, r in enumerate(rel) if r) + 1)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranks_match_argsort_with_ties_and_masks(seed):
    rng = np.random.default_rng(seed)
    n, m = 200, 37
    scores = rng.integers(0, 6, size=(n, m)).astype(np.float32)  # few values: many ties
    targets = rng.integers(0, m, size=n)
    masked = rng.random((n, m)) < 0.3
    for mask in (None, masked):
        ranks = ranks_from_scores(scores, targets, mask)
        for i in range(n):
            order = brute_order(scores[i], {int(targets[i])}, None if mask is None else mask[i])
            assert ranks[i] == order.index(targets[i]) + 1
    assert (ranks_from_scores(scores, targets, masked) <= ranks_from_scores(scores, targets)).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_accumulator_matches_brute_force_one_target(seed):
    rng = np.random.default_rng(seed)
    n, m, n_users = 300, 25, 40
    scores = rng.integers(0, 4, size=(n, m)).astype(np.float64)
    targets = rng.integers(0, m, size=n)
    users = rng.integers(0, n_users, size=n)
    masked = rng.random((n, m)) < 0.2
    acc = RankAccumulator(KS)
    for lo in range(0, n, 64):  # streaming in uneven chunks gives the same sums
        sl = slice(lo, lo + 64)
        acc.update(ranks_from_scores(scores[sl], targets[sl], masked[sl]), users[sl])
    res = acc.result(bootstrap=0)

    rows = [brute_metrics(scores[i], {int(targets[i])}, masked[i], KS) for i in range(n)]
    for name in metric_names(KS):
        vals = np.array([r[name] for r in rows])
        assert res["per_event"][name] == pytest.approx(vals.mean(), abs=1e-12)
        per_user = [vals[users == u].mean() for u in np.unique(users)]
        assert res["per_user"][name] == pytest.approx(np.mean(per_user), abs=1e-12)
    assert res["events"] == n and res["users"] == len(np.unique(users))


def test_multi_target_matches_brute_force():
    rng = np.random.default_rng(3)
    m = 30
    positions, expected = [], []
    for _ in range(100):
        scores = rng.integers(0, 5, size=m).astype(np.float64)
        relevant = set(rng.choice(m, size=int(rng.integers(1, 6)), replace=False).tolist())
        masked = rng.random(m) < 0.2
        positions.append(pessimistic_positions(scores, sorted(relevant), masked))
        expected.append(brute_metrics(scores, relevant, masked, KS))
    got = multi_target_metrics(positions, KS)
    for j, name in enumerate(metric_names(KS)):
        np.testing.assert_allclose(got[:, j], [e[name] for e in expected], atol=1e-12)


def test_one_and_several_targets_agree_for_one_target():
    ranks = np.array([1, 2, 5, 11, 40])
    np.testing.assert_allclose(single_target_metrics(ranks, KS), multi_target_metrics([[r] for r in ranks], KS))


def test_small_case_by_hand():
    # 5 items, target = item 2 with score 0.5. Items scoring >= 0.5 other than the target:
    # item 0 (0.9), item 4 (0.7) and item 1 (0.5, a tie counted against us) → rank = 1 + 3 = 4.
    # NDCG@10 = 1/log2(4+1) = 1/2.321928 = 0.430677; Recall@3 = 0 (4 > 3); MRR = 1/4 = 0.25.
    # Masking item 0 (already seen) removes one item above: rank 3, NDCG@10 = 1/log2(4) = 0.5,
    # Recall@3 = 1, MRR = 1/3.
    scores = np.array([[0.9, 0.5, 0.5, 0.1, 0.7]])
    assert ranks_from_scores(scores, np.array([2]))[0] == 4
    masked = np.array([[True, False, False, False, False]])
    assert ranks_from_scores(scores, np.array([2]), masked)[0] == 3

    # Two users: user 0 has ranks 1 and 4, user 1 has rank 3.
    # Recall@3 per event = (1 + 0 + 1)/3 = 0.666667; per user = ((1 + 0)/2 + 1)/2 = 0.75.
    # NDCG@3: 1, 0, 1/log2(4) = 0.5 → per event 1.5/3 = 0.5; per user ((1+0)/2 + 0.5)/2 = 0.5.
    # MRR: 1, 0.25, 1/3 → per event 1.583333/3 = 0.527778; per user (0.625 + 0.333333)/2 = 0.479167.
    acc = RankAccumulator([3])
    acc.update(np.array([1, 4]), np.array([0, 0]))
    acc.update(np.array([3]), np.array([1]))
    res = acc.result(bootstrap=0)
    assert res["per_event"]["recall@3"] == pytest.approx(2 / 3)
    assert res["per_user"]["recall@3"] == pytest.approx(0.75)
    assert res["per_event"]["ndcg@3"] == pytest.approx(0.5)
    assert res["per_user"]["ndcg@3"] == pytest.approx(0.5)
    assert res["per_event"]["mrr"] == pytest.approx(0.527778, abs=1e-6)
    assert res["per_user"]["mrr"] == pytest.approx(0.479167, abs=1e-6)
    # MRR@3 drops the rank-4 hit: (1 + 0 + 1/3)/3
    assert res["per_event"]["mrr@3"] == pytest.approx((1 + 1 / 3) / 3)

    # Two relevant items at pessimistic positions 1 and 4, K = 3:
    # Recall@3 = 1/2; DCG@3 = 1/log2(2) = 1; IDCG@3 = 1 + 1/log2(3) = 1.630930; NDCG@3 = 0.613147.
    got = dict(zip(metric_names([3]), multi_target_metrics([[1, 4]], [3])[0]))
    assert got["recall@3"] == pytest.approx(0.5)
    assert got["ndcg@3"] == pytest.approx(0.613147, abs=1e-6)


def test_all_equal_scores_rank_last():
    scores = np.zeros((1, 50))
    assert ranks_from_scores(scores, np.array([7]))[0] == 50


def test_bootstrap_is_a_user_resample():
    rng = np.random.default_rng(5)
    users = rng.integers(0, 30, size=400)
    ranks = rng.integers(1, 40, size=400)
    acc = RankAccumulator([10])
    acc.update(ranks, users)
    res = acc.result(bootstrap=300, seed=11)
    again = acc.result(bootstrap=300, seed=11)
    assert res == again  # same seed, same intervals
    for kind in ("per_event", "per_user"):
        for name, value in res[kind].items():
            lo, hi = res[f"ci_{kind}"][name]
            assert lo <= value <= hi
    # the same resampling done naively: draw user indices, average their means
    active = np.unique(users)
    vals = single_target_metrics(ranks, [10])[:, 1]  # ndcg@10
    means = np.array([vals[users == u].mean() for u in active])
    sums = np.array([vals[users == u].sum() for u in active])
    counts = np.array([(users == u).sum() for u in active])
    r = np.random.default_rng(11)
    ev, us = [], []
    for _ in range(300):
        idx = r.integers(0, active.size, active.size)
        us.append(means[idx].mean())
        ev.append(sums[idx].sum() / counts[idx].sum())
    assert res["ci_per_user"]["ndcg@10"] == pytest.approx(list(np.percentile(us, [2.5, 97.5])))
    assert res["ci_per_event"]["ndcg@10"] == pytest.approx(list(np.percentile(ev, [2.5, 97.5])))


def test_empty_accumulator_gives_none():
    res = RankAccumulator([10]).result()
    assert res["events"] == 0 and res["per_event"]["ndcg@10"] is None


def test_rejects_zero_rank():
    with pytest.raises(ValueError):
        RankAccumulator([10]).update(np.array([0]), np.array([0]))


def test_popularity_percentile_and_coverage():
    counts = np.array([0, 0, 5, 10, 10, 100])
    # mid-ranks: items 0,1: (0 + 1)/6; item 2: (2 + .5)/6; items 3,4: (3 + 1)/6; item 5: (5 + .5)/6
    np.testing.assert_allclose(popularity_percentile(counts), 100 * np.array([1, 1, 2.5, 4, 4, 5.5]) / 6)
    acc = TopKAccumulator(6, [1, 2], popularity_percentile(counts))
    acc.update(np.array([[5, 3], [5, 2], [4, -1]]))
    res = acc.result()
    assert res["coverage@1"] == pytest.approx(2 / 6)  # items 5, 4
    assert res["coverage@2"] == pytest.approx(4 / 6)  # items 5, 3, 2, 4
    pct = popularity_percentile(counts)
    assert res["pop_percentile@1"] == pytest.approx((pct[5] * 2 + pct[4]) / 3)
    assert res["pop_percentile@2"] == pytest.approx((2 * pct[5] + pct[3] + pct[2] + pct[4]) / 5)


def test_paired_difference_is_the_difference_of_per_event_means_with_a_paired_interval():
    from dyembed.evaluate.metrics import ndcg_at_k, paired_difference

    rng = np.random.default_rng(0)
    users = rng.integers(0, 50, 400)
    a = rng.integers(1, 30, 400)
    b = np.maximum(1, a + rng.integers(-3, 6, 400))  # B ranks the same queries somewhat worse
    res = paired_difference(a, b, users, 10, bootstrap=300, seed=1)
    assert res["a"] == pytest.approx(float(ndcg_at_k(a, 10).mean()))
    assert res["diff"] == pytest.approx(float((ndcg_at_k(a, 10) - ndcg_at_k(b, 10)).mean()))
    assert res["lo"] <= res["diff"] <= res["hi"] and res["lo"] > 0
    # the paired interval is narrower than the spread of either model's own bootstrap
    acc = RankAccumulator([10])
    acc.update(a, users)
    lo, hi = acc.result(bootstrap=300, seed=1)["ci_per_event"]["ndcg@10"]
    assert res["hi"] - res["lo"] < hi - lo
    same = paired_difference(a, a, users, 10, bootstrap=50)
    assert same["diff"] == same["lo"] == same["hi"] == 0.0
    with pytest.raises(ValueError, match="same non-empty"):
        paired_difference(a, b[:-1], users, 10)
