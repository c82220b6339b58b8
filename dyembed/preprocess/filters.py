"""Whole-log decisions on integer arrays: duplicates, lateness, count filters, time order, dense ids.

All functions are pure numpy on int arrays in input order (row i = the i-th valid input row), so
they scale to tens of millions of rows without strings, and the tie order is explicit: a stable
sort keeps the input order of equal keys.
"""

from __future__ import annotations

import numpy as np


def duplicate_mask(user: np.ndarray, item: np.ndarray, ts: np.ndarray, event: np.ndarray) -> np.ndarray:
    """True for every row that repeats an earlier row's (user, item, ts, event) exactly.

    np.lexsort is stable, so within a group of equal keys the first row in input order comes
    first and is the one kept.
    """
    n = len(user)
    out = np.zeros(n, dtype=bool)
    if n < 2:
        return out
    # one int64 key for (user, item) keeps the sort to three keys
    pair = user.astype(np.int64) * (int(item.max()) + 1) + item
    order = np.lexsort((event, pair, ts))
    same = np.ones(n - 1, dtype=bool)
    for key in (ts, pair, event):
        k = key[order]
        same &= k[1:] == k[:-1]
        del k
    out[order[1:][same]] = True
    return out


def seen_before_mask(
    old_user: np.ndarray, old_item: np.ndarray, old_ts: np.ndarray,
    user: np.ndarray, item: np.ndarray, ts: np.ndarray,
) -> np.ndarray:
    """True for new rows whose (user, item, ts) is already among the old events (append mode)."""
    n_old = len(old_user)
    if n_old == 0 or len(user) == 0:
        return np.zeros(len(user), dtype=bool)
    u = np.concatenate([old_user, user])
    i = np.concatenate([old_item, item])
    t = np.concatenate([old_ts, ts])
    is_new = np.concatenate([np.zeros(n_old, dtype=bool), np.ones(len(user), dtype=bool)])
    order = np.lexsort((is_new, i, u, t))
    us, is_, ts_ = u[order], i[order], t[order]
    start = np.ones(len(order), dtype=bool)
    start[1:] = (us[1:] != us[:-1]) | (is_[1:] != is_[:-1]) | (ts_[1:] != ts_[:-1])
    group_first = np.maximum.accumulate(np.where(start, np.arange(len(order)), 0))
    # old rows sort first inside a group, so the group holds an old row iff its first row is old
    dup_sorted = is_new[order] & ~is_new[order][group_first]
    out = np.zeros(len(order), dtype=bool)
    out[order] = dup_sorted
    return out[n_old:]


def count_filters(
    user: np.ndarray, item: np.ndarray, keep: np.ndarray, *, min_user: int, min_item: int, kcore: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks of rows removed by min_user_events, min_item_events and k-core, in that order.

    The two minimum filters are applied once, together (a row failing both counts as
    min_user_events). k-core then repeats "drop users and items with fewer than k events" until
    every remaining user and item has at least k events.
    """
    n_users = int(user.max()) + 1 if len(user) else 0
    n_items = int(item.max()) + 1 if len(item) else 0
    keep = keep.copy()
    by_user = np.zeros(len(user), dtype=bool)
    by_item = np.zeros(len(user), dtype=bool)
    if min_user > 1 or min_item > 1:
        cu = np.bincount(user[keep], minlength=n_users)
        ci = np.bincount(item[keep], minlength=n_items)
        by_user = keep & (cu[user] < min_user)
        by_item = keep & ~by_user & (ci[item] < min_item)
        keep &= ~(by_user | by_item)
    by_core = np.zeros(len(user), dtype=bool)
    if kcore > 1:
        while True:
            cu = np.bincount(user[keep], minlength=n_users)
            ci = np.bincount(item[keep], minlength=n_items)
            drop = keep & ((cu[user] < kcore) | (ci[item] < kcore))
            if not drop.any():
                break
            by_core |= drop
            keep &= ~drop
    return by_user, by_item, by_core


def time_order(ts: np.ndarray) -> np.ndarray:
    """Row order by timestamp; equal timestamps keep their input order (stable sort)."""
    return np.argsort(ts, kind="stable")


def dense_ids(codes_in_order: np.ndarray, n_codes: int, n_fixed: int = 0) -> np.ndarray:
    """code → dense index: codes < n_fixed keep their value (ids of an earlier run); the others
    are numbered n_fixed, n_fixed+1, … by first appearance in `codes_in_order`. -1 = unused."""
    mapping = np.full(n_codes, -1, dtype=np.int64)
    mapping[:n_fixed] = np.arange(n_fixed)
    fresh = codes_in_order[codes_in_order >= n_fixed]
    if len(fresh):
        uniq, first = np.unique(fresh, return_index=True)
        ranked = uniq[np.argsort(first, kind="stable")]
        mapping[ranked] = n_fixed + np.arange(len(ranked))
    return mapping
