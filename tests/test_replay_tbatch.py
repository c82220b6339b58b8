"""t-batch layout invariants: every row a t-batch, each user's events in order, all rows once."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dyembed.replay.tbatch import assign_lanes, lane_layout, windows


def check_layout(users: np.ndarray, lanes: int, steps: int, rng=None) -> None:
    blocks = lane_layout(users, lanes, steps, rng)
    seen = []
    last_pos = {}
    for k, blk in enumerate(blocks):
        T = blk.pos.shape[0]
        assert (T == steps or (k == len(blocks) - 1 and 0 < T < steps)) and blk.pos.shape[1] <= max(1, lanes)
        valid = blk.valid
        for t in range(T):
            row_users = blk.users[t][valid[t]]
            assert len(set(row_users.tolist())) == len(row_users), "a user twice in one t-batch"
            for b in np.flatnonzero(valid[t]):
                pos, user = int(blk.pos[t, b]), int(blk.users[t, b])
                assert users[pos] == user
                assert last_pos.get(user, -1) < pos, "a user's events out of order"
                last_pos[user] = pos
                seen.append(pos)
                # start: first slot of the block or a different user before it in the lane
                fresh = t == 0 or not valid[t - 1, b] or blk.users[t - 1, b] != user
                assert blk.start[t, b] == fresh
                leaves = t == T - 1 or not valid[t + 1, b] or blk.users[t + 1, b] != user
                assert blk.end[t, b] == leaves
        assert not (blk.start & ~valid).any() and not (blk.end & ~valid).any()
    assert sorted(seen) == list(range(len(users)))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=0, max_size=150), st.integers(1, 9), st.integers(1, 8), st.booleans())
def test_layout_invariants(users, lanes, steps, shuffle):
    users = np.array(users, np.int32)
    check_layout(users, lanes, steps, np.random.default_rng(0) if shuffle else None)


def test_lanes_are_balanced():
    sizes = np.array([50, 40, 30, 20, 10, 10, 10, 10, 5, 5])
    lane, offset = assign_lanes(sizes, 3)
    loads = np.bincount(lane, weights=sizes)
    assert loads.max() - loads.min() <= sizes.max()
    # sequences of one lane are back to back
    for k in range(3):
        members = np.flatnonzero(lane == k)
        spans = sorted((offset[m], offset[m] + sizes[m]) for m in members)
        assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


def test_single_user_is_sequential():
    blocks = lane_layout(np.zeros(10, np.int32), lanes=4, steps=4)
    assert len(blocks) == 3 and all(b.pos.shape[1] == 1 for b in blocks) and blocks[-1].pos.shape[0] == 2
    assert [int(p) for b in blocks for p in b.pos[:, 0] if p >= 0] == list(range(10))


def test_windows():
    assert list(windows(10, 4)) == [(0, 4), (4, 8), (8, 10)]
    assert list(windows(0, 4)) == []
