"""Per-user item sets in CSR form (the items masked out of a user's rankings)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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

    def pairs(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each entry k of `users`: (k repeated, the user's items), concatenated."""
        users = np.asarray(users, np.int64)
        begin, stop = self.indptr[users], self.indptr[users + 1]
        lengths = stop - begin
        owner = np.repeat(np.arange(len(users)), lengths)
        if len(owner) == 0:
            return owner, np.zeros(0, np.int32)
        within = np.arange(len(owner)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return owner, self.indices[np.repeat(begin, lengths) + within]


def seen_items(n_users: int, user_idx: np.ndarray, item_idx: np.ndarray) -> SeenItems:
    """The set of items each user interacted with in the given events (CSR, deduplicated)."""
    user_idx = np.asarray(user_idx, np.int64)
    item_idx = np.asarray(item_idx, np.int64)
    if len(user_idx) and (user_idx.min() < 0 or user_idx.max() >= n_users):
        raise ValueError(f"user_idx outside 0..{n_users - 1}")
    n_items_bound = int(item_idx.max()) + 1 if len(item_idx) else 1
    keys = np.unique(user_idx * n_items_bound + item_idx)
    users, items = keys // n_items_bound, keys % n_items_bound
    indptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
    return SeenItems(indptr=indptr, indices=items.astype(np.int32))
