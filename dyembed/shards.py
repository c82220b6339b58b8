"""User shards: the one definition of which shard a user belongs to.

Given θ, users are independent, so every frozen operation splits exactly by user. A user's shard
is its dense `user_idx` modulo the shard count: `user_idx` never changes once assigned (appends
give new users the next numbers), so a user stays in its shard for the life of the work dir, and
consecutive numbers spread new users evenly over the shards.
"""

from __future__ import annotations

import numpy as np


def shard_of(user_idx: np.ndarray | int, n_shards: int) -> np.ndarray | int:
    """The shard (0 … n_shards−1) of each user index."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be ≥ 1, got {n_shards}")
    return np.asarray(user_idx) % n_shards if not isinstance(user_idx, int) else user_idx % n_shards


def shard_users(n_users: int, shard: int, n_shards: int) -> np.ndarray:
    """The user indices (ascending) of one shard among users 0 … n_users−1."""
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard must be in 0 … {n_shards - 1}, got {shard}")
    return np.arange(shard, n_users, n_shards, dtype=np.int64)
