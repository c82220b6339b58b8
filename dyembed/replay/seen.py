"""Seen items: the one definition, used by every ranking that masks (dyembed, baselines, peers,
train's validation, recommend).

An item is *seen* for an event when the event's user consumed it **before the event**: in the
history rows, or in an earlier event of the ranked stream itself (temporal evaluation is
prequential: a test event is ranked knowing the user's earlier test events, so they are seen
too). Whether seen items are masked at all is decided by dyembed.masking. The target itself is
never masked.

Two shapes:
- `SeenItems` — per user (CSR): for rankings of a user's *current* state (recommend), and as the
  history part of `EventSeen`.
- `EventSeen` — per ranked event (CSR): what evaluate and train's validation pass to the rankers.
Both answer `pairs(users=..., rows=...)` (the engine's exclusion pairs) and `mask(...)` (numpy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _expand(indptr: np.ndarray, indices: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each entry k of `keys`: (k repeated, the CSR row keys[k]), concatenated."""
    keys = np.asarray(keys, np.int64)
    begin, stop = indptr[keys], indptr[keys + 1]
    lengths = stop - begin
    owner = np.repeat(np.arange(len(keys)), lengths)
    if len(owner) == 0:
        return owner, np.zeros(0, np.int32)
    within = np.arange(len(owner)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return owner, indices[np.repeat(begin, lengths) + within]


def _mask(owner: np.ndarray, items: np.ndarray, n_rows: int, n_items: int) -> np.ndarray:
    mask = np.zeros((n_rows, n_items), dtype=bool)
    mask[owner, items] = True
    return mask


def _csr(group: np.ndarray, items: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct items per group, sorted: (indptr [n_groups + 1], indices)."""
    group = np.asarray(group, np.int64)
    items = np.asarray(items, np.int64)
    bound = int(items.max()) + 1 if items.size else 1
    keys = np.sort(group * bound + items)
    keys = keys[np.r_[True, keys[1:] != keys[:-1]]] if keys.size else keys  # sorted unique (np.unique hashes: 20x slower)
    groups, values = keys // bound, keys % bound
    indptr = np.zeros(n_groups + 1, np.int64)
    np.cumsum(np.bincount(groups, minlength=n_groups), out=indptr[1:])
    return indptr, values.astype(np.int32)


@dataclass(frozen=True)
class SeenItems:
    """indices[indptr[u]:indptr[u+1]] are user u's items (sorted, unique)."""

    indptr: np.ndarray  # [n_users + 1] int64
    indices: np.ndarray  # [nnz] int32

    @property
    def n_users(self) -> int:
        return len(self.indptr) - 1

    def items_of(self, user: int) -> np.ndarray:
        return self.indices[self.indptr[user]:self.indptr[user + 1]]

    def pairs(self, users: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """For each entry k of `users`: (k repeated, the user's items), concatenated (rows unused)."""
        return _expand(self.indptr, self.indices, users)

    def mask(self, users: np.ndarray, n_items: int, rows: np.ndarray | None = None) -> np.ndarray:
        """bool [len(users), n_items]: True where the item is seen by that user."""
        owner, items = self.pairs(users)
        return _mask(owner, items, len(users), n_items)


@dataclass(frozen=True)
class EventSeen:
    """Per ranked event: the user's `history` items plus the items of the user's earlier events in
    the ranked stream. Held in O(events) memory — `stream` keeps, per user, the stream items that
    are new (not in the history, not earlier in the stream) in order, and `new_before[e]` how many
    of them precede event e — and expanded only for the rows a ranker asks about."""

    users: np.ndarray  # [n_events] int64 user of each ranked event
    history: SeenItems
    stream: SeenItems  # per user: the new stream items, in stream order (not sorted)
    new_before: np.ndarray  # [n_events] int64

    @property
    def n_events(self) -> int:
        return len(self.users)

    def items_of(self, event: int) -> np.ndarray:
        return np.sort(self.pairs(rows=np.array([event]))[1])

    def pairs(self, users: np.ndarray | None = None, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """For each entry k of `rows` (positions in the ranked stream): (k repeated, its seen items),
        grouped by k in increasing order; every item at most once per row."""
        if rows is None:
            raise ValueError("EventSeen pairs are looked up by event rows")
        rows = np.asarray(rows, np.int64)
        event_users = self.users[rows]
        h_owner, h_items = self.history.pairs(event_users)
        begin = self.stream.indptr[event_users]
        lengths = self.new_before[rows]
        s_owner = np.repeat(np.arange(len(rows)), lengths)
        within = np.arange(len(s_owner)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        s_items = self.stream.indices[np.repeat(begin, lengths) + within]
        owner = np.concatenate([h_owner, s_owner])
        order = np.argsort(owner, kind="stable")  # grouped by row, as SeenItems.pairs (the engine relies on it)
        return owner[order], np.concatenate([h_items, s_items]).astype(np.int32)[order]

    def mask(self, users: np.ndarray | None, n_items: int, rows: np.ndarray | None = None) -> np.ndarray:
        owner, items = self.pairs(rows=rows)
        return _mask(owner, items, len(rows), n_items)

    def part(self, lo: int, hi: int) -> "EventSeen":
        """The events lo..hi-1 of the stream as a stream of their own (positions from 0)."""
        return EventSeen(users=self.users[lo:hi], history=self.history, stream=self.stream,
                         new_before=self.new_before[lo:hi])


def seen_items(n_users: int, user_idx: np.ndarray, item_idx: np.ndarray) -> SeenItems:
    """The set of items each user interacted with in the given events (CSR, deduplicated)."""
    user_idx = np.asarray(user_idx, np.int64)
    if len(user_idx) and (user_idx.min() < 0 or user_idx.max() >= n_users):
        raise ValueError(f"user_idx outside 0..{n_users - 1}")
    indptr, indices = _csr(user_idx, item_idx, n_users)
    return SeenItems(indptr=indptr, indices=indices)


def seen_before_events(n_users: int, user_idx: np.ndarray, item_idx: np.ndarray,
                       history: SeenItems | None = None) -> EventSeen:
    """Seen items of every event of a ranked stream (user_idx, item_idx in row order): the user's
    `history` items plus the user's earlier events of the stream."""
    user_idx = np.asarray(user_idx, np.int64)
    item_idx = np.asarray(item_idx, np.int64)
    n = len(user_idx)
    if n and (user_idx.min() < 0 or user_idx.max() >= n_users):
        raise ValueError(f"user_idx outside 0..{n_users - 1}")
    history = history if history is not None else seen_items(n_users, np.zeros(0, np.int64), np.zeros(0, np.int64))
    bound = max(int(item_idx.max()) + 1 if n else 1, int(history.indices.max()) + 1 if history.indices.size else 1)
    keys = user_idx * bound + item_idx
    first = np.zeros(n, bool)
    first[np.unique(keys, return_index=True)[1]] = True
    h_owner, h_items = history.pairs(np.arange(n_users))
    new = first & ~np.isin(keys, h_owner.astype(np.int64) * bound + h_items)
    # per user, in stream order: the new items, and how many of them come before each event
    order = np.argsort(user_idx, kind="stable")
    counts = np.cumsum(new[order])
    start_of_user = np.zeros(n_users + 1, np.int64)
    np.cumsum(np.bincount(user_idx[new], minlength=n_users), out=start_of_user[1:])
    before_sorted = counts - new[order]  # new events of all users before, in the sorted order
    new_before = np.empty(n, np.int64)
    new_before[order] = before_sorted - start_of_user[user_idx[order]]
    stream = SeenItems(indptr=start_of_user, indices=item_idx[order][new[order]].astype(np.int32))
    return EventSeen(users=user_idx, history=history, stream=stream, new_before=new_before)
