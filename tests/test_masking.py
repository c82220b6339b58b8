"""The one masking rule (dyembed/masking.py): decided by the data's repeat rate, not the protocol."""

import numpy as np
import pytest

from dyembed.errors import ConfigError
from dyembed.masking import decide, repeat_rate


def test_repeat_rate_by_hand():
    # user 0: items 5, 5, 7 (one repeat); user 1: 5, 6 (none): 1 repeat of 5 events
    users = np.array([0, 1, 0, 1, 0])
    items = np.array([5, 5, 5, 6, 7])
    assert repeat_rate(users, items) == pytest.approx(1 / 5)
    assert repeat_rate(np.zeros(0, int), np.zeros(0, int)) == 0.0


def test_auto_masks_only_data_without_repeats():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 50, 2000)
    distinct_items = np.arange(2000)  # nobody ever repeats
    no_repeats = decide("auto", users, distinct_items)
    assert no_repeats.masked and no_repeats.repeat_rate == 0.0
    assert no_repeats.describe().startswith("seen items masked: yes (auto: 0.0 %")
    repeating = decide("auto", users, rng.integers(0, 20, 2000))  # 50 users over 20 items: mostly repeats
    assert not repeating.masked and repeating.repeat_rate > 0.5
    assert ">= 5 %" in repeating.reason
    # the threshold is the boundary: rate 0.2 masked under 0.25, not under 0.2
    users, items = np.array([0, 1, 0, 1, 0]), np.array([5, 5, 5, 6, 7])
    assert decide("auto", users, items, threshold=0.25).masked
    assert not decide("auto", users, items, threshold=0.2).masked


def test_forced_settings_and_bad_values():
    users, items = np.array([0, 0]), np.array([1, 1])
    assert decide("on", users, items).masked and "forced on" in decide("on", users, items).reason
    assert not decide("off", np.array([0]), np.array([1])).masked
    with pytest.raises(ConfigError, match="evaluate.mask_seen"):
        decide("sometimes", users, items)
    with pytest.raises(ConfigError, match="evaluate.repeat_threshold"):
        decide("auto", users, items, threshold=1.5)
