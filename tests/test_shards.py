import numpy as np
import pytest

from dyembed.shards import shard_of, shard_users


def test_every_user_in_exactly_one_shard():
    users = np.arange(103)
    shards = shard_of(users, 4)
    for k in range(4):
        np.testing.assert_array_equal(shard_users(103, k, 4), users[shards == k])
    assert shard_of(7, 3) == 1


def test_bad_counts_refused():
    with pytest.raises(ValueError, match="n_shards"):
        shard_of(np.arange(3), 0)
    with pytest.raises(ValueError, match="shard must be"):
        shard_users(10, 2, 2)
