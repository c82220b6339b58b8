"""Rank-based offline metrics: pure functions of ranks, and streaming accumulators.

Everything here starts from the *rank* of a relevant item in a full ranking of the catalogue.

Ties are counted pessimistically: an item whose score equals the target's ranks above it, so
    rank = 1 + #{ j != target, j not masked : s_j >= s_target }.
A model that gives every item the same score therefore gets rank = (number of unmasked items),
never a lucky rank 1.

One relevant item per query (every protocol of dyembed: leave-last-out and temporal score one
target event per query), rank r:
    Recall@K = HR@K = [r <= K]
    NDCG@K   = 1 / log2(r + 1)  if r <= K else 0          (binary gain, IDCG = 1)
    MRR@K    = 1 / r            if r <= K else 0          (RecBole's MRR@K)
    MRR      = 1 / r                                      (untruncated)
Several relevant items R per query (trec_eval / RecBole definitions), positions p_i of the
relevant items in the pessimistic total order (ties: non-relevant items first):
    Recall@K = #{i : p_i <= K} / |R|
    NDCG@K   = DCG / IDCG, DCG = sum_{p_i <= K} 1/log2(p_i + 1),
               IDCG = sum_{i=1}^{min(|R|, K)} 1/log2(i + 1)
    MRR@K    = 1 / min_i p_i if that is <= K else 0
For |R| = 1 both sets of formulas agree.

Averages: per event (every query counts once) and per user (each user's mean over their
queries, then the mean over users). 95 % intervals come from a bootstrap over *users* (the unit
that is sampled in the real world; events of one user are not independent): resample users with
replacement, recompute both averages (the per-event one as a ratio of resampled sums), take the
2.5 / 97.5 percentiles.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

LN2 = np.log(2.0)


# --------------------------------------------------------------------------- ranks from scores


def ranks_from_scores(scores: np.ndarray, targets: np.ndarray, masked: np.ndarray | None = None) -> np.ndarray:
    """Pessimistic rank of `targets[i]` in row `scores[i]` (float [n, n_items]); `masked` bool [n, n_items]
    removes items from the ranking (the target itself is never removed)."""
    scores = np.asarray(scores)
    targets = np.asarray(targets, dtype=np.int64)
    rows = np.arange(scores.shape[0])
    target_scores = scores[rows, targets][:, None]
    at_or_above = scores >= target_scores
    at_or_above[rows, targets] = False
    if masked is not None:
        at_or_above &= ~masked
    return 1 + at_or_above.sum(axis=1, dtype=np.int64)


def pessimistic_positions(scores: np.ndarray, relevant: Sequence[int], masked: np.ndarray | None = None) -> np.ndarray:
    """Positions (1-based) of the `relevant` items in one score vector's pessimistic total order:
    by score descending, and within equal scores non-relevant items first. Masked items (never a
    relevant one) are left out of the order."""
    scores = np.asarray(scores, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=np.int64)
    is_rel = np.zeros(scores.shape[0], dtype=bool)
    is_rel[relevant] = True
    keep = np.ones(scores.shape[0], dtype=bool) if masked is None else (~np.asarray(masked, dtype=bool)) | is_rel
    kept = np.flatnonzero(keep)
    order = kept[np.lexsort((is_rel[kept], -scores[kept]))]  # last key is the primary one
    pos = np.empty(scores.shape[0], dtype=np.int64)
    pos[order] = np.arange(1, order.size + 1)
    return np.sort(pos[relevant])


# --------------------------------------------------------------------------- per-query metrics


def metric_names(ks: Sequence[int]) -> list[str]:
    """Column order of every metric table: recall@K…, ndcg@K…, mrr@K…, mrr."""
    ks = list(ks)
    return [f"recall@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + [f"mrr@{k}" for k in ks] + ["mrr"]


def recall_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    return (np.asarray(ranks) <= k).astype(np.float64)


def ndcg_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where(ranks <= k, LN2 / np.log(ranks + 1.0), 0.0)


def mrr_at_k(ranks: np.ndarray, k: int | None = None) -> np.ndarray:
    ranks = np.asarray(ranks, dtype=np.float64)
    rr = 1.0 / ranks
    return rr if k is None else np.where(ranks <= k, rr, 0.0)


def single_target_metrics(ranks: np.ndarray, ks: Sequence[int]) -> np.ndarray:
    """[n, len(metric_names(ks))] metric values of n one-target queries."""
    ranks = np.asarray(ranks, dtype=np.int64)
    if ranks.size and ranks.min() < 1:
        raise ValueError("ranks are 1-based")
    cols = [recall_at_k(ranks, k) for k in ks] + [ndcg_at_k(ranks, k) for k in ks]
    cols += [mrr_at_k(ranks, k) for k in ks] + [mrr_at_k(ranks)]
    return np.stack(cols, axis=1) if cols else np.zeros((ranks.size, 0))


def multi_target_metrics(positions: Sequence[np.ndarray], ks: Sequence[int]) -> np.ndarray:
    """[n, len(metric_names(ks))] metric values of n queries with several relevant items each,
    `positions[q]` = the 1-based pessimistic positions of query q's relevant items."""
    out = np.zeros((len(positions), len(metric_names(ks))), dtype=np.float64)
    n_k = len(ks)
    for q, pos in enumerate(positions):
        pos = np.sort(np.asarray(pos, dtype=np.float64))
        if pos.size == 0:
            raise ValueError("a query needs at least one relevant item")
        gains = LN2 / np.log(pos + 1.0)
        for i, k in enumerate(ks):
            hit = pos <= k
            ideal = LN2 / np.log(np.arange(1, min(pos.size, k) + 1) + 1.0)
            out[q, i] = hit.sum() / pos.size
            out[q, n_k + i] = gains[hit].sum() / ideal.sum()
            out[q, 2 * n_k + i] = 1.0 / pos[0] if pos[0] <= k else 0.0
        out[q, -1] = 1.0 / pos[0]
    return out


# --------------------------------------------------------------------------- accumulators


class RankAccumulator:
    """Streaming per-event and per-user averages of the rank metrics, with user-bootstrap intervals.

    Memory is O(users × metrics): per user the sum of each metric over their queries and the
    query count; no per-event array is kept.
    """

    def __init__(self, ks: Sequence[int], n_users: int = 0):
        self.ks = [int(k) for k in ks]
        if not self.ks or min(self.ks) < 1:
            raise ValueError("ks must be positive integers")
        self.names = metric_names(self.ks)
        self._sums = np.zeros((max(n_users, 0), len(self.names)), dtype=np.float64)
        self._counts = np.zeros(max(n_users, 0), dtype=np.int64)

    def _grow(self, n_users: int) -> None:
        if n_users > self._counts.size:
            extra = n_users - self._counts.size
            self._sums = np.vstack([self._sums, np.zeros((extra, self._sums.shape[1]))])
            self._counts = np.concatenate([self._counts, np.zeros(extra, dtype=np.int64)])

    def _add(self, values: np.ndarray, users: np.ndarray) -> None:
        users = np.asarray(users, dtype=np.int64)
        if users.size == 0:
            return
        if users.min() < 0:
            raise ValueError("user indices must be >= 0")
        self._grow(int(users.max()) + 1)
        np.add.at(self._sums, users, values)
        self._counts += np.bincount(users, minlength=self._counts.size)

    def update(self, ranks: np.ndarray, users: np.ndarray) -> None:
        """Add one-target queries: `ranks[i]` is the pessimistic rank of the query of `users[i]`."""
        ranks = np.asarray(ranks)
        if ranks.shape != np.shape(users):
            raise ValueError("ranks and users must have the same shape")
        self._add(single_target_metrics(ranks, self.ks), users)

    def update_multi(self, positions: Sequence[np.ndarray], users: np.ndarray) -> None:
        """Add queries with several relevant items (`positions[q]` as in `multi_target_metrics`)."""
        self._add(multi_target_metrics(positions, self.ks), users)

    @property
    def events(self) -> int:
        return int(self._counts.sum())

    def result(self, bootstrap: int = 200, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
        """{"events", "users", "per_event", "per_user", "ci_per_event", "ci_per_user"}; metrics are
        dicts name → float (NaN-free: with no events, the averages are None)."""
        active = self._counts > 0
        sums, counts = self._sums[active], self._counts[active].astype(np.float64)
        n_users = int(active.sum())
        out: dict[str, Any] = {"events": int(counts.sum()), "users": n_users}
        if n_users == 0:
            none = {name: None for name in self.names}
            out.update(per_event=dict(none), per_user=dict(none), ci_per_event=dict(none), ci_per_user=dict(none))
            return out
        user_means = sums / counts[:, None]
        per_event = sums.sum(0) / counts.sum()
        per_user = user_means.mean(0)
        out["per_event"] = dict(zip(self.names, map(float, per_event)))
        out["per_user"] = dict(zip(self.names, map(float, per_user)))
        lo_e, hi_e, lo_u, hi_u = _bootstrap(sums, counts, user_means, bootstrap, seed, level)
        out["ci_per_event"] = {n: [float(a), float(b)] for n, a, b in zip(self.names, lo_e, hi_e)}
        out["ci_per_user"] = {n: [float(a), float(b)] for n, a, b in zip(self.names, lo_u, hi_u)}
        return out


def _bootstrap(sums, counts, user_means, rounds: int, seed: int, level: float):
    """Percentile intervals of the per-event (ratio) and per-user averages over resampled users."""
    n_users = counts.size
    if rounds <= 0:
        nan = np.full(sums.shape[1], np.nan)
        return nan, nan, nan, nan
    rng = np.random.default_rng(seed)
    ev = np.empty((rounds, sums.shape[1]))
    us = np.empty((rounds, sums.shape[1]))
    for b in range(rounds):
        # multiplicity of each user in one resample of n_users draws with replacement
        w = np.bincount(rng.integers(0, n_users, n_users), minlength=n_users).astype(np.float64)
        ev[b] = (w @ sums) / (w @ counts)
        us[b] = (w @ user_means) / n_users
    alpha = (1.0 - level) / 2.0
    q = [100 * alpha, 100 * (1 - alpha)]
    lo_e, hi_e = np.percentile(ev, q, axis=0)
    lo_u, hi_u = np.percentile(us, q, axis=0)
    return lo_e, hi_e, lo_u, hi_u


def paired_difference(ranks_a: np.ndarray, ranks_b: np.ndarray, users: np.ndarray, k: int = 10, *,
                      bootstrap: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Per-event NDCG@k of model A minus model B on the same queries, with a paired user bootstrap.

    Both models' ranks of one query share the resampled user, so the interval is the one of the
    difference itself (narrower than comparing two separate intervals). A difference whose
    interval contains 0 is a tie. Returns {"a", "b", "diff", "lo", "hi", "events", "users"}."""
    ranks_a, ranks_b = np.asarray(ranks_a), np.asarray(ranks_b)
    users = np.asarray(users, dtype=np.int64)
    if not (ranks_a.shape == ranks_b.shape == users.shape) or users.size == 0:
        raise ValueError("paired ranks need the same non-empty set of queries")
    _, user_of = np.unique(users, return_inverse=True)
    n_users = int(user_of.max()) + 1
    gains = np.stack([ndcg_at_k(ranks_a, k), ndcg_at_k(ranks_b, k)], axis=1)
    sums = np.zeros((n_users, 2))
    np.add.at(sums, user_of, gains)
    counts = np.bincount(user_of, minlength=n_users).astype(np.float64)
    a, b = sums.sum(0) / counts.sum()
    rng = np.random.default_rng(seed)
    diffs = np.empty(max(bootstrap, 0))
    for r in range(diffs.size):
        w = np.bincount(rng.integers(0, n_users, n_users), minlength=n_users).astype(np.float64)
        ea, eb = (w @ sums) / (w @ counts)
        diffs[r] = ea - eb
    alpha = (1.0 - level) / 2.0
    lo, hi = (np.percentile(diffs, [100 * alpha, 100 * (1 - alpha)]) if diffs.size else (np.nan, np.nan))
    return {"a": float(a), "b": float(b), "diff": float(a - b), "lo": float(lo), "hi": float(hi),
            "events": int(users.size), "users": n_users}


def popularity_percentile(counts: np.ndarray) -> np.ndarray:
    """Mid-rank popularity percentile of each item in [0, 100]: 100 · (#less popular + ½ #equally
    popular) / n_items. The most popular item is near 100, never-seen items near 0."""
    counts = np.asarray(counts)
    n = counts.size
    if n == 0:
        return np.zeros(0)
    order = np.sort(counts)
    less = np.searchsorted(order, counts, side="left")
    equal = np.searchsorted(order, counts, side="right") - less
    return 100.0 * (less + 0.5 * equal) / n


class TopKAccumulator:
    """Catalogue coverage@K (share of items that appear in at least one top-K list) and the mean
    popularity percentile of the recommended top-K items (popularity bias; ~50 is neutral)."""

    def __init__(self, n_items: int, ks: Sequence[int], item_percentile: np.ndarray | None = None):
        self.n_items = int(n_items)
        self.ks = [int(k) for k in ks]
        self._hit = {k: np.zeros(self.n_items, dtype=bool) for k in self.ks}
        self._pct = None if item_percentile is None else np.asarray(item_percentile, dtype=np.float64)
        self._pct_sum = {k: 0.0 for k in self.ks}
        self._pct_n = {k: 0 for k in self.ks}

    def update(self, topk_items: np.ndarray) -> None:
        """`topk_items` int [n, >= max(ks)], best first; -1 marks an empty slot (tiny catalogues)."""
        topk_items = np.asarray(topk_items)
        if topk_items.size == 0:
            return
        for k in self.ks:
            block = topk_items[:, :k]
            valid = block[block >= 0]
            self._hit[k][valid] = True
            if self._pct is not None:
                self._pct_sum[k] += float(self._pct[valid].sum())
                self._pct_n[k] += int(valid.size)

    def result(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for k in self.ks:
            out[f"coverage@{k}"] = float(self._hit[k].mean()) if self.n_items else None
        for k in self.ks:
            n = self._pct_n[k]
            out[f"pop_percentile@{k}"] = (self._pct_sum[k] / n) if (self._pct is not None and n) else None
        return out
