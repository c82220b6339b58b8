"""Evaluation protocols as a role per event row: 0 train, 1 validation, 2 test.

Rows are in replay order (events.parquet is sorted by time, ties in input order), so "last" always
means last by row order. Both functions are pure and vectorised (no pandas, no Python per row).

- leave-last-out (`loo_split`): a user's last event is test, the one before it validation, the
  rest train — the protocol of the SASRec/RecBole full-ranking tables. Users with fewer than 3
  events keep all their events in train (and are counted by `loo_skipped_users`).
- temporal (`temporal_split`): rows with ts >= cut are test; cut = `test_start` or the ts of the
  row at position floor((1 - test_fraction) * n) (so ties at the cut all go to test); optionally
  the last `validation_fraction` of the train rows, by the same rule, become validation.

Warm and cold targets, on either protocol (`item_history_counts`, `cold_test_rows`): an item's
warmness is its number of *history* rows (train + validation: what θ, the baselines and every peer
learn from); a **cold-item event** is a test event whose item has no history row — under
`temporal`, an item whose first event is at or after the cut; under `loo`, an item whose only
events are test events. ID-only models (pop, EASE, ALS, BPR, SASRec) have nothing to score it by.
"""

from __future__ import annotations

import numpy as np

from dyembed.errors import ConfigError, InputDataError

TRAIN, VALIDATION, TEST = 0, 1, 2


def _events_left(user_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: how many later rows the same user has, and the user's total event count."""
    user_idx = np.asarray(user_idx)
    n = len(user_idx)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.argsort(user_idx, kind="stable")  # groups users, keeps row order inside a group
    sorted_users = user_idx[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    sizes = np.diff(np.r_[starts, n])
    position = np.arange(n) - np.repeat(starts, sizes)  # 0-based occurrence within the user
    size = np.repeat(sizes, sizes)
    left = np.empty(n, np.int64)
    total = np.empty(n, np.int64)
    left[order] = size - 1 - position
    total[order] = size
    return left, total


def loo_split(user_idx: np.ndarray) -> np.ndarray:
    """Leave-last-out roles (int8 per row): last event of a user → 2, the one before → 1, else 0.

    Users with fewer than 3 events: all rows 0 (see `loo_skipped_users`).
    """
    left, total = _events_left(user_idx)
    eligible = total >= 3
    roles = np.zeros(len(left), np.int8)
    roles[eligible & (left == 0)] = TEST
    roles[eligible & (left == 1)] = VALIDATION
    return roles


def loo_skipped_users(user_idx: np.ndarray) -> int:
    """Number of users (with at least one event) that have fewer than 3 events: no test/validation."""
    user_idx = np.asarray(user_idx)
    if len(user_idx) == 0:
        return 0
    counts = np.bincount(user_idx.astype(np.int64))
    return int(((counts > 0) & (counts < 3)).sum())


def _quantile_cut(ts: np.ndarray, fraction: float) -> int:
    """The ts of the row at position floor((1 - fraction) * n) of the time-sorted rows."""
    n = len(ts)
    position = min(n - 1, int(np.floor((1.0 - fraction) * n)))
    return int(np.sort(ts, kind="stable")[position])


def temporal_cut(ts: np.ndarray, test_fraction: float | None, test_start: int | None = None) -> int:
    """The temporal protocol's cut: rows with ts >= cut are test (`test_start`, else the quantile)."""
    ts = np.asarray(ts)
    if len(ts) == 0:
        raise InputDataError("temporal split of an empty event log")
    if test_start is not None:
        return int(test_start)
    if test_fraction is None or not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"config key 'evaluate.test_fraction' must be between 0 and 1 (exclusive), got {test_fraction!r}")
    return _quantile_cut(ts, test_fraction)


def temporal_split(
    ts: np.ndarray,
    *,
    test_fraction: float | None = None,
    test_start: int | None = None,
    validation_fraction: float = 0.0,
) -> np.ndarray:
    """Temporal roles (int8 per row): ts >= cut → 2; optional last part of the train rows → 1; else 0.

    cut = `test_start` when given, else the ts at quantile 1 - `test_fraction` of the rows
    (the row at position floor((1 - f) n) of the time-sorted rows; every row with that ts or
    later is test). Validation: among the rows with ts < cut, the same rule with
    `validation_fraction` (0 → no validation rows).
    """
    ts = np.asarray(ts)
    cut = temporal_cut(ts, test_fraction, test_start)
    if not 0.0 <= validation_fraction < 1.0:
        raise ConfigError(f"config key 'train.validation_fraction' must be in [0, 1), got {validation_fraction!r}")
    roles = np.zeros(len(ts), np.int8)
    is_test = ts >= cut
    roles[is_test] = TEST
    train_ts = ts[~is_test]
    if validation_fraction > 0.0 and len(train_ts) > 0:
        vcut = _quantile_cut(train_ts, validation_fraction)
        roles[(~is_test) & (ts >= vcut)] = VALIDATION
    return roles


def item_history_counts(item_idx: np.ndarray, roles: np.ndarray, n_items: int) -> np.ndarray:
    """Per item: its number of history rows (roles train or validation) [n_items] int64."""
    item_idx = np.asarray(item_idx, dtype=np.int64)
    history = np.asarray(roles) != TEST
    return np.bincount(item_idx[history], minlength=int(n_items)).astype(np.int64)


def cold_test_rows(item_idx: np.ndarray, roles: np.ndarray, n_items: int) -> np.ndarray:
    """Bool per row: a test row whose item has no history row (a cold-item event)."""
    counts = item_history_counts(item_idx, roles, n_items)
    return (np.asarray(roles) == TEST) & (counts[np.asarray(item_idx, dtype=np.int64)] == 0)
