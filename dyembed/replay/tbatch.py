"""t-batches (JODIE, KDD 2019) laid out in lanes: the order in which the engine replays events.

A t-batch is a set of events with no user twice; replaying t-batches one after another, each
user's events in their original order, gives exactly the result of one-event-at-a-time replay
when θ is frozen (users are independent given θ).

The layout works on a *window* of consecutive event rows at a time (the window bounds how far a
batch reaches ahead; state carries over between windows). Inside a window every user's events
form one sequence; sequences are packed into `lanes` lanes (longest first, each onto the least
loaded lane: LPT scheduling), so a lane is a few users' sequences back to back. Step t of every lane together is
one t-batch (a user occupies one lane, so it appears at most once per step). Steps are cut into
blocks of `steps` t-batches; the engine runs one block per compiled call and, when training,
backpropagates through the users' updates inside the block only (truncation = `steps`).

Per block the engine needs: which user sits in each lane at each step, where a user enters a lane
(load its state from the user table) and where it leaves the block (write its state back).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

PAD = -1


@dataclass
class Block:
    """`steps` consecutive t-batches over `lanes` lanes; positions index the window's rows."""

    pos: np.ndarray  # [T, B] int64 row position inside the window, PAD = empty slot
    users: np.ndarray  # [T, B] int32 user of each slot (0 in empty slots)
    start: np.ndarray  # [T, B] bool  the slot's user enters here: load its state
    end: np.ndarray  # [T, B] bool  the slot is the user's last one in this block: store its state

    @property
    def valid(self) -> np.ndarray:
        return self.pos != PAD


def assign_lanes(sizes: np.ndarray, lanes: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(lane, offset) per sequence by LPT scheduling: longest sequences first, each onto the least
    loaded lane, so the longest lane exceeds the average by less than one sequence.
    `rng` shuffles the order of users with equal length and the order of sequences inside a lane."""
    import heapq

    n = len(sizes)
    lanes = max(1, min(lanes, n)) if n else 1
    tiebreak = rng.permutation(n) if rng is not None else np.arange(n)
    order = np.lexsort((tiebreak, -sizes))  # by size descending
    lane = np.empty(n, np.int64)
    heap = [(0, k) for k in range(lanes)]  # (load, lane)
    for idx, size in zip(order.tolist(), sizes[order].tolist()):
        load, k = heapq.heappop(heap)
        lane[idx] = k
        heapq.heappush(heap, (load + size, k))
    # position of each sequence inside its lane: assignment order, or shuffled
    rank_key = rng.permutation(n) if rng is not None else np.argsort(order, kind="stable")
    by_lane = np.lexsort((rank_key, lane))
    sorted_sizes = sizes[by_lane]
    lane_sorted = lane[by_lane]
    first = np.r_[True, lane_sorted[1:] != lane_sorted[:-1]]
    csum = np.cumsum(sorted_sizes) - sorted_sizes
    group_start = np.maximum.accumulate(np.where(first, csum, 0))
    offset = np.empty(n, np.int64)
    offset[by_lane] = csum - group_start
    return lane, offset


def lane_layout(users: np.ndarray, lanes: int, steps: int, rng: np.random.Generator | None = None) -> list[Block]:
    """Lay out one window's events (user id per row, in replay order) into blocks of t-batches."""
    users = np.asarray(users)
    n = len(users)
    if n == 0:
        return []
    lanes, steps = max(1, int(lanes)), max(1, int(steps))
    order = np.argsort(users, kind="stable")
    sorted_users = users[order]
    seq_start = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    sizes = np.diff(np.r_[seq_start, n])
    lane, offset = assign_lanes(sizes, lanes, rng)
    n_lanes = int(lane.max()) + 1
    occurrence = np.arange(n) - np.repeat(seq_start, sizes)
    step = np.repeat(offset, sizes) + occurrence  # step of each event (in sorted order)
    ev_lane = np.repeat(lane, sizes)
    total_steps = int(step.max()) + 1
    n_blocks = -(-total_steps // steps)
    grid_pos = np.full((total_steps, n_lanes), PAD, np.int64)  # the last block may be shorter
    grid_pos[step, ev_lane] = order
    grid_users = np.zeros_like(grid_pos, dtype=np.int32)
    grid_users[step, ev_lane] = sorted_users
    valid = grid_pos != PAD
    prev_same = np.zeros_like(valid)
    prev_same[1:] = valid[1:] & valid[:-1] & (grid_users[1:] == grid_users[:-1])
    next_same = np.zeros_like(valid)
    next_same[:-1] = prev_same[1:]
    blocks = []
    for k in range(n_blocks):
        rows = slice(k * steps, (k + 1) * steps)
        start = valid[rows] & ~prev_same[rows]
        start[0] = valid[rows][0]
        end = valid[rows] & ~next_same[rows]
        end[-1] = valid[rows][-1]
        blocks.append(Block(pos=grid_pos[rows], users=grid_users[rows], start=start, end=end))
    return blocks


def windows(n_rows: int, window: int) -> Iterator[tuple[int, int]]:
    """[start, stop) row ranges of at most `window` rows."""
    window = max(1, int(window))
    for start in range(0, n_rows, window):
        yield start, min(n_rows, start + window)
