"""Metrics per slice of the test events: by target-item warmness and by user history length.

Slices (one label per test event, from the work dir's rows and roles only, never from a model):
- `item_warmness`: the target item's number of history rows (train + validation;
  dyembed.split.item_history_counts) in buckets 0 | 1-4 | 5+. Bucket 0 are the **cold-item
  events** (dyembed.split.cold_test_rows): items whose first event is in the test period
  (temporal) or that only occur as test targets (loo) — where ID-only models cannot score.
- `user_history`: the number of the user's rows before the event (history rows and, in the
  prequential temporal protocol, the user's earlier test events: what its state has consumed) in
  buckets 0 | 1-4 | 5-19 | 20-99 | 100+.

Every slice's metrics come from the same ranks and the same code as the overall table
(dyembed.evaluate.metrics.RankAccumulator, user-bootstrap intervals), so they recompute from a rank
dump: `evaluate --dump-ranks` writes both labels beside each rank, and `from_rank_dump` rebuilds the
report's "breakdown" object from that file alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dyembed.evaluate.metrics import RankAccumulator
from dyembed.split import TEST, item_history_counts

# (label, lowest, highest) — highest None = unbounded
WARMNESS_BUCKETS: tuple[tuple[str, int, int | None], ...] = (("0", 0, 0), ("1-4", 1, 4), ("5+", 5, None))
HISTORY_BUCKETS: tuple[tuple[str, int, int | None], ...] = (
    ("0", 0, 0), ("1-4", 1, 4), ("5-19", 5, 19), ("20-99", 20, 99), ("100+", 100, None))
SLICES = {"item_warmness": WARMNESS_BUCKETS, "user_history": HISTORY_BUCKETS}
DEFINITIONS = {
    "item_warmness": "history rows (train + validation) of the target item; 0 = cold-item event "
                     "(its first event is in the test period: ID-only models cannot score it)",
    "user_history": "rows of the user before the event (history rows and earlier test events)",
}


def bucket_labels(values: np.ndarray, buckets: Sequence[tuple[str, int, int | None]]) -> np.ndarray:
    """The label of each value's bucket (object array); buckets must cover every value >= 0."""
    values = np.asarray(values, dtype=np.int64)
    out = np.empty(values.shape, dtype=object)
    for label, low, high in buckets:
        out[(values >= low) & ((values <= high) if high is not None else True)] = label
    return out


def user_rows_before(user_idx: np.ndarray) -> np.ndarray:
    """Per row: how many earlier rows (row order) the same user has."""
    user_idx = np.asarray(user_idx, dtype=np.int64)
    n = user_idx.size
    order = np.argsort(user_idx, kind="stable")
    sorted_users = user_idx[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]]) if n else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, n])
    before = np.empty(n, np.int64)
    before[order] = np.arange(n) - np.repeat(starts, sizes)
    return before


def slices_of_test_events(user_idx: np.ndarray, item_idx: np.ndarray, roles: np.ndarray, n_items: int) -> dict[str, np.ndarray]:
    """{"item_warmness": int counts, "user_history": int counts} for the test rows, in row order."""
    test = np.asarray(roles) == TEST
    warm = item_history_counts(item_idx, roles, n_items)[np.asarray(item_idx, dtype=np.int64)[test]]
    return {"item_warmness": warm, "user_history": user_rows_before(user_idx)[test]}


def first_seen_index(users: np.ndarray) -> np.ndarray:
    """Users renumbered 0.. in order of first appearance: the bootstrap then draws the same users
    whether they come as user_idx (evaluate) or as user_id strings (a rank dump)."""
    _, first, inverse = np.unique(np.asarray(users), return_index=True, return_inverse=True)
    rank = np.empty(first.size, np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inverse.ravel()]


def breakdown(ranks: Mapping[str, np.ndarray], users: np.ndarray, slices: Mapping[str, np.ndarray], ks: Sequence[int],
              *, bootstrap: int = 200, seed: int = 0) -> dict[str, Any]:
    """The report's "breakdown" object: per slice, the bucket labels, each bucket's event count
    and, per model, {"events", "users", "per_event", "ci95_per_event"} of the bucket's test events.

    `ranks[name]`, `users` (any ids) and `slices[...]` are aligned arrays over the same test events."""
    users = first_seen_index(users)
    out: dict[str, Any] = {"definitions": dict(DEFINITIONS)}
    for slice_name, values in slices.items():
        buckets = SLICES[slice_name]
        labels = bucket_labels(values, buckets)
        names = [b[0] for b in buckets]
        part: dict[str, Any] = {"buckets": names, "events": {b: int((labels == b).sum()) for b in names}, "models": {}}
        for model, r in ranks.items():
            r = np.asarray(r, dtype=np.int64)
            per_bucket = {}
            for b in names:
                sel = labels == b
                acc = RankAccumulator(ks, int(users.max()) + 1 if users.size else 0)
                acc.update(r[sel], users[sel])
                res = acc.result(bootstrap=bootstrap, seed=seed)
                per_bucket[b] = {"events": res["events"], "users": res["users"], "per_event": res["per_event"],
                                 "ci95_per_event": res["ci_per_event"]}
            part["models"][model] = per_bucket
        out[slice_name] = part
    return out


def from_rank_dump(path: str | Path, ks: Sequence[int], *, bootstrap: int = 200, seed: int = 0) -> dict[str, Any]:
    """Rebuild the "breakdown" object from an `evaluate --dump-ranks` file (its slice columns)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path).to_pandas()
    missing = [c for c in SLICES if c not in table.columns]
    if missing:
        from dyembed.errors import InputDataError

        raise InputDataError(f"{path} has no column(s) {', '.join(missing)} (written by an older dyembed evaluate)")
    ranks, users, slices = {}, None, None
    for model, rows in table.groupby("model", sort=False):
        ranks[model] = rows["rank"].to_numpy()
        if users is None:
            users = rows["user_id"].to_numpy()
            slices = {name: rows[name].to_numpy() for name in SLICES}
    return breakdown(ranks, users, slices, ks, bootstrap=bootstrap, seed=seed)
