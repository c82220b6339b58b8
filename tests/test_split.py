"""Split protocols: role per event row (0 train, 1 validation, 2 test)."""

from __future__ import annotations

import numpy as np
import pytest

from dyembed.errors import ConfigError, InputDataError
from dyembed.split import loo_skipped_users, loo_split, temporal_split


def brute_loo(users: np.ndarray) -> np.ndarray:
    roles = np.zeros(len(users), np.int8)
    for u in np.unique(users):
        rows = np.flatnonzero(users == u)
        if len(rows) >= 3:
            roles[rows[-1]] = 2
            roles[rows[-2]] = 1
    return roles


def test_loo_by_hand():
    # user 0: rows 0, 2, 4, 5 → 4 is validation, 5 test; user 1: rows 1, 3 (< 3 events) → all train;
    # user 2: rows 6, 7, 8 → 7 validation, 8 test
    users = np.array([0, 1, 0, 1, 0, 0, 2, 2, 2])
    assert loo_split(users).tolist() == [0, 0, 0, 0, 1, 2, 0, 1, 2]
    assert loo_skipped_users(users) == 1


@pytest.mark.parametrize("seed", range(5))
def test_loo_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 30, 500)
    roles = loo_split(users)
    assert roles.dtype == np.int8
    assert np.array_equal(roles, brute_loo(users))
    counts = np.bincount(users)
    assert loo_skipped_users(users) == int(((counts > 0) & (counts < 3)).sum())


def test_loo_ties_keep_row_order_and_input_is_not_mutated():
    users = np.array([3, 3, 3, 3])
    before = users.copy()
    assert loo_split(users).tolist() == [0, 0, 1, 2]
    assert np.array_equal(users, before)


def test_loo_empty():
    assert loo_split(np.zeros(0, np.int32)).tolist() == []
    assert loo_skipped_users(np.zeros(0, np.int32)) == 0


def test_temporal_fraction_and_ties():
    ts = np.array([1, 2, 3, 4, 5, 6, 7, 8, 8, 10])
    # cut = ts at position floor(0.8 * 10) = 8 → ts 8; both rows with ts 8 go to test
    roles = temporal_split(ts, test_fraction=0.2)
    assert roles.tolist() == [0, 0, 0, 0, 0, 0, 0, 2, 2, 2]
    # validation: train rows ts 1..7, position floor(0.7 * 7) = 4 → ts 5
    roles = temporal_split(ts, test_fraction=0.2, validation_fraction=0.3)
    assert roles.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_temporal_test_start():
    ts = np.arange(10) * 100
    roles = temporal_split(ts, test_start=650)
    assert roles.tolist() == [0] * 7 + [2] * 3


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, None])
def test_temporal_bad_fraction(fraction):
    with pytest.raises(ConfigError, match="test_fraction"):
        temporal_split(np.arange(5), test_fraction=fraction)


def test_temporal_empty_log():
    with pytest.raises(InputDataError):
        temporal_split(np.zeros(0, np.int64), test_fraction=0.2)
