"""Baselines that rank the same test events as the dynamic model, in plain numpy.

Each scorer sees the whole event log (row order = time order) and answers two questions:
`scores(rows)` — the score of every item for each of these test rows, from what was known
*before* the rows (never from the rows themselves); `observe(rows)` — fold the rows in
afterwards (prequential). `rank_rows` drives a scorer over the test rows in small blocks and
turns scores into pessimistic ranks (see metrics.py) and top-K lists.

The models that need the trained θ (`dyembed`, `static`, `frozen`) are ranked by the replay
engine (`dyembed.replay.api.replay_ranks`); `history-mean` only borrows its item vectors.

Baselines:
- pop         item counts over the history rows (the training data), fixed.
- recent-pop  item counts over all rows in the sliding time window [t - W, t) before the block,
              ties broken by all-time counts before t.
- random      uniform random scores (seeded), the floor every model must clear.
- history-mean  u = sum_i w_i v_{item_i} over the user's past events, w_i = 0.5^(n_i / h) where
              n_i = how many of the user's events came after event i (h = half-life in events; 0 =
              plain mean); score u · v_j (the normalisation of the mean does not change a ranking).
              No learning on the user side: what the item vectors alone give.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from dyembed.evaluate.metrics import ranks_from_scores

ALL_BASELINES = ["pop", "recent-pop", "random", "history-mean", "static", "frozen"]
NUMPY_BASELINES = ["pop", "recent-pop", "random", "history-mean"]


@dataclass
class EventLog:
    """The event columns of events.parquet as numpy arrays (row order = replay order)."""

    user_idx: np.ndarray
    item_idx: np.ndarray
    ts: np.ndarray
    n_users: int
    n_items: int

    def __len__(self) -> int:
        return int(self.user_idx.size)


class Scorer(Protocol):
    def scores(self, rows: np.ndarray) -> np.ndarray: ...

    def observe(self, rows: np.ndarray) -> None: ...


class PopScorer:
    """Item counts over the given history rows; the same scores for every test event."""

    def __init__(self, log: EventLog, history_rows: np.ndarray):
        self.counts = np.bincount(log.item_idx[history_rows], minlength=log.n_items).astype(np.float64)

    def scores(self, rows: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.counts, (rows.size, self.counts.size))

    def observe(self, rows: np.ndarray) -> None:
        pass


class RecentPopScorer:
    """Counts over the rows before the block whose time lies in [t - window, t), t = the block's
    first event time; ties broken by the all-time counts of the rows before the block."""

    def __init__(self, log: EventLog, window_seconds: float):
        self.log = log
        self.window = float(window_seconds)
        self.window_counts = np.zeros(log.n_items, dtype=np.float64)
        self.all_counts = np.zeros(log.n_items, dtype=np.float64)
        self._lo = 0  # window = rows [_lo, _hi)
        self._hi = 0

    def _advance(self, first_row: int) -> None:
        item, ts = self.log.item_idx, self.log.ts
        if first_row > self._hi:
            added = item[self._hi:first_row]
            self.window_counts += np.bincount(added, minlength=self.log.n_items)
            self.all_counts += np.bincount(added, minlength=self.log.n_items)
            self._hi = first_row
        # rows are sorted by time, so the window's start is a binary search
        lo = int(np.searchsorted(ts[: self._hi], ts[first_row] - self.window, side="left"))
        if lo > self._lo:
            self.window_counts -= np.bincount(item[self._lo:lo], minlength=self.log.n_items)
            self._lo = lo

    def scores(self, rows: np.ndarray) -> np.ndarray:
        self._advance(int(rows.min()))
        tie_break = self.all_counts / (self.all_counts.sum() + 1.0)  # in [0, 1): never outranks a count
        return np.broadcast_to(self.window_counts + tie_break, (rows.size, self.log.n_items))

    def observe(self, rows: np.ndarray) -> None:
        pass  # the window moves forward by itself at the next block


class RandomScorer:
    def __init__(self, n_items: int, seed: int):
        self.n_items = n_items
        self.rng = np.random.default_rng(seed)

    def scores(self, rows: np.ndarray) -> np.ndarray:
        return self.rng.random((rows.size, self.n_items))

    def observe(self, rows: np.ndarray) -> None:
        pass


class HistoryMeanScorer:
    """Decayed sum of the user's item vectors; score u · v_j. Updated by each observed event."""

    def __init__(self, log: EventLog, item_vectors: np.ndarray, history_rows: np.ndarray,
                 half_life_events: float, chunk: int = 65_536):
        self.log = log
        # float64 where it is cheap; float32 for big catalogues / user tables (memory)
        big = item_vectors.shape[0] * item_vectors.shape[1] > 50_000_000 or log.n_users * item_vectors.shape[1] > 50_000_000
        dtype = np.float32 if big else np.float64
        self.V = np.asarray(item_vectors, dtype=dtype)
        self.decay = 0.5 ** (1.0 / half_life_events) if half_life_events > 0 else 1.0
        self.S = np.zeros((log.n_users, self.V.shape[1]), dtype=dtype)
        users = log.user_idx[history_rows].astype(np.int64)
        # weight of a history event = decay^(number of the user's later history events)
        per_user = np.bincount(users, minlength=log.n_users)
        order = np.argsort(users, kind="stable")
        pos = np.empty(users.size, dtype=np.int64)
        starts = np.cumsum(per_user) - per_user
        pos[order] = np.arange(users.size) - np.repeat(starts, per_user)
        later = per_user[users] - 1 - pos
        weights = (self.decay ** later.astype(np.float64)).astype(self.S.dtype)
        items = log.item_idx[history_rows]
        for lo in range(0, users.size, chunk):
            sl = slice(lo, lo + chunk)
            np.add.at(self.S, users[sl], weights[sl, None] * self.V[items[sl]])

    def scores(self, rows: np.ndarray) -> np.ndarray:
        return self.S[self.log.user_idx[rows]] @ self.V.T

    def observe(self, rows: np.ndarray) -> None:
        users = self.log.user_idx[rows]  # distinct within a block (see user_blocks)
        self.S[users] = self.S[users] * self.decay + self.V[self.log.item_idx[rows]]


def user_blocks(users: np.ndarray, max_block: int) -> list[tuple[int, int]]:
    """Split a sequence into consecutive blocks of at most `max_block` events in which no user
    appears twice, so scoring a block with the state before it equals scoring one event at a time
    for a scorer whose state is per user."""
    users = np.asarray(users, dtype=np.int64)
    n = users.size
    prev = np.full(n, -1, dtype=np.int64)  # index of the same user's previous event
    if n:
        order = np.argsort(users, kind="stable")
        same = users[order][1:] == users[order][:-1]
        prev[order[1:][same]] = order[:-1][same]
    blocks, lo = [], 0
    while lo < n:
        hi = min(lo + max(1, max_block), n)
        clash = np.flatnonzero(prev[lo + 1:hi] >= lo)
        if clash.size:
            hi = lo + 1 + int(clash[0])
        blocks.append((lo, hi))
        lo = hi
    return blocks


def block_size(n_items: int, max_block_mb: float, cap: int = 4096) -> int:
    """Events per block so that one float64 [block, n_items] score matrix stays under the cap."""
    return int(max(1, min(cap, (max_block_mb * 2**20) // (8 * max(n_items, 1) * 2))))  # ×2: mask + scores


def rank_rows(scorer: Scorer, log: EventLog, rows: np.ndarray, *, exclude=None, topk: int = 0,
              max_block_mb: float = 64.0, progress: Callable[[int], None] | None = None):
    """Ranks (int64 [n]) and top-K lists (int32 [n, topk] or None) of the test `rows`, in order.

    `exclude`: the seen items (dyembed.replay.seen: EventSeen over these rows, or per-user
    SeenItems) masked out of the ranking and of the top-K; the target itself is never masked."""
    rows = np.asarray(rows, dtype=np.int64)
    ranks = np.empty(rows.size, dtype=np.int64)
    top = np.full((rows.size, topk), -1, dtype=np.int32) if topk else None
    done = 0
    for lo, hi in user_blocks(log.user_idx[rows], block_size(log.n_items, max_block_mb)):
        block = rows[lo:hi]
        scores = scorer.scores(block)
        targets = log.item_idx[block]
        mask = (exclude.mask(log.user_idx[block].astype(np.int64), log.n_items, rows=np.arange(lo, hi))
                if exclude is not None else None)
        if mask is not None:
            mask[np.arange(block.size), targets] = False
        ranks[lo:hi] = ranks_from_scores(scores, targets, mask)
        if top is not None:
            top[lo:hi] = topk_items(scores, topk, mask)
        scorer.observe(block)
        done += block.size
        if progress:
            progress(done)
    return ranks, top


TOPK_BLOCK = 512  # items per block whose maximum bounds the top-k threshold (see topk_items)


def topk_items(scores: np.ndarray, k: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Indices of the k best items per row, best first (-1 pads when fewer items are left);
    equal scores keep the lower item index first (also at the k-th place: exact, as tf.math.top_k).

    No full partition of each row (≈10 ms per 1M-item row): the rows are cut into blocks of
    TOPK_BLOCK items; the k-th largest block maximum t is <= the row's k-th largest score (the k
    best blocks hold k items >= t), so every top-k item has a score >= t, and only those few
    candidates are sorted by (score desc, index asc)."""
    scores = np.asarray(scores, dtype=np.float64)
    if mask is not None:
        scores = np.where(mask, -np.inf, scores)
    n, m = scores.shape
    out = np.full((n, k), -1, dtype=np.int32)
    k_eff = min(k, m)
    if n == 0 or k_eff == 0:
        return out
    nb = m // TOPK_BLOCK
    if nb >= 2 * k_eff:
        block_max = scores[:, :nb * TOPK_BLOCK].reshape(n, nb, TOPK_BLOCK).max(axis=2)
        if nb * TOPK_BLOCK < m:
            block_max = np.concatenate([block_max, scores[:, nb * TOPK_BLOCK:].max(axis=1, keepdims=True)], axis=1)
        cut = block_max.shape[1] - k_eff
        threshold = np.partition(block_max, cut, axis=1)[:, cut]
    else:
        threshold = np.full(n, -np.inf)
    rows, cols = np.nonzero(scores >= threshold[:, None])
    values = scores[rows, cols]
    order = np.lexsort((cols, -values, rows))  # by row, then score desc, then index asc
    rows, cols, values = rows[order], cols[order], values[order]
    place = np.arange(rows.size) - np.searchsorted(rows, rows, side="left")
    keep = (place < k_eff) & (values > -np.inf)
    out[rows[keep], place[keep]] = cols[keep]
    return out
