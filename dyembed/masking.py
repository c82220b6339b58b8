"""The one rule for masking seen items, used by train's validation, evaluate, every baseline and peer.

A seen item is an item of the user's history rows (the rows before the ones being ranked). Whether
such items are removed from the ranking depends on the data, not on the protocol:

    repeat rate = share of history events whose (user, item) pair occurred earlier for that user
    auto        masked  iff  repeat rate < evaluate.repeat_threshold (default 0.05)
    on / off    forced (the report and the printed line say so)

Why: where users (almost) never consume an item twice (MovieLens ratings, reviews), a seen item
can essentially never be the right answer, so an unmasked score mostly measures whether a model
re-recommends the user's own history — a trivial filter every serving system applies. Where repeats
are real (music, news re-reads, groceries), re-recommending is part of the task and masking would
hide it. The rate is taken on history rows only, so the decision never looks at test answers.
The target itself is never masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dyembed.errors import ConfigError

SETTINGS = ("auto", "on", "off")
DEFAULT_REPEAT_THRESHOLD = 0.05


@dataclass(frozen=True)
class Masking:
    """The decision and why: `masked` is what every model of a run uses."""

    masked: bool
    setting: str
    repeat_rate: float
    threshold: float

    @property
    def reason(self) -> str:
        rate = f"{100 * self.repeat_rate:.1f} % of history events repeat an earlier item of their user"
        if self.setting != "auto":
            return f"forced {self.setting} ({rate})"
        relation = "<" if self.masked else ">="
        return f"auto: {rate} ({relation} {100 * self.threshold:g} %)"

    def describe(self) -> str:
        """One line for humans: 'seen items masked: yes (auto: 0.0 % … < 5 %)'."""
        return f"seen items masked: {'yes' if self.masked else 'no'} ({self.reason})"

    def to_dict(self) -> dict:
        return {"setting": self.setting, "seen_masked": self.masked, "repeat_rate": round(self.repeat_rate, 6),
                "repeat_threshold": self.threshold, "reason": self.reason}


def repeat_rate(user_idx: np.ndarray, item_idx: np.ndarray) -> float:
    """Share of events whose (user, item) pair already occurred earlier (in any row order: the
    count of repeats does not depend on which occurrence is called the first)."""
    n = len(user_idx)
    if n == 0:
        return 0.0
    pairs = np.sort(np.asarray(user_idx, np.int64) << 32 | np.asarray(item_idx, np.int64))
    distinct = 1 + int(np.count_nonzero(pairs[1:] != pairs[:-1]))  # sort, not np.unique: its hash path is 20x slower
    return float((n - distinct) / n)


def decide(setting: str, user_idx: np.ndarray, item_idx: np.ndarray,
           threshold: float = DEFAULT_REPEAT_THRESHOLD) -> Masking:
    """The masking decision for a run whose history rows are (user_idx, item_idx)."""
    if setting not in SETTINGS:
        raise ConfigError(f"config key 'evaluate.mask_seen' must be one of {', '.join(SETTINGS)}; got {setting!r}")
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"config key 'evaluate.repeat_threshold' must be in [0, 1], got {threshold!r}")
    rate = repeat_rate(user_idx, item_idx)
    masked = setting == "on" or (setting == "auto" and rate < threshold)
    return Masking(masked=masked, setting=setting, repeat_rate=rate, threshold=float(threshold))
