"""Seen items (dyembed.replay.seen), the one definition: per user, and per event of a ranked stream."""

import numpy as np
import pytest

from dyembed.replay.seen import seen_before_events, seen_items


def test_event_seen_equals_brute_force_on_random_streams():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n_users, n_items, n = int(rng.integers(1, 6)), int(rng.integers(1, 10)), int(rng.integers(0, 30))
        hist_u = rng.integers(0, n_users, rng.integers(0, 15))
        hist_i = rng.integers(0, n_items, len(hist_u))
        users, items = rng.integers(0, n_users, n), rng.integers(0, n_items, n)
        seen = seen_before_events(n_users, users, items, seen_items(n_users, hist_u, hist_i))
        owner, got = seen.pairs(rows=np.arange(n))
        assert (np.diff(owner) >= 0).all()  # grouped by row, in order
        for e in range(n):
            want = set(hist_i[hist_u == users[e]].tolist()) | set(items[:e][users[:e] == users[e]].tolist())
            mine = got[owner == e].tolist()
            assert sorted(mine) == sorted(want) and len(mine) == len(set(mine))
        if n:
            lo, hi = n // 3, n
            part = seen.part(lo, hi)
            np.testing.assert_array_equal(part.mask(None, n_items, rows=np.arange(hi - lo)),
                                          seen.mask(None, n_items, rows=np.arange(lo, hi)))


def test_by_hand():
    # user 0 has history {4}; its stream events: 1, 4 (a repeat of history), 1 (a repeat), 2
    seen = seen_before_events(2, np.array([0, 0, 1, 0, 0]), np.array([1, 4, 3, 1, 2]),
                              seen_items(2, np.array([0]), np.array([4])))
    assert [seen.items_of(e).tolist() for e in range(5)] == [[4], [1, 4], [], [1, 4], [1, 4]]
    with pytest.raises(ValueError, match="rows"):
        seen.pairs(users=np.array([0]))
    per_user = seen_items(3, np.array([2, 0, 2]), np.array([5, 1, 5]))
    assert per_user.items_of(2).tolist() == [5] and per_user.mask(np.array([0, 2]), 6).sum() == 2
