"""The synthetic drifting-interest world: deterministic, streamed, and really drifting."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from dyembed.config import SynthConfig
from dyembed.errors import ConfigError
from dyembed.synth import generate


def test_same_seed_gives_byte_identical_files(tmp_path):
    cfg = SynthConfig(users=40, items=50, events=2000, topics=5, seed=3)
    generate(cfg, tmp_path / "a")
    generate(cfg, tmp_path / "b")
    for name in ("events.csv", "items.jsonl", "world.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    generate(SynthConfig(users=40, items=50, events=2000, topics=5, seed=4), tmp_path / "c")
    assert (tmp_path / "a" / "events.csv").read_bytes() != (tmp_path / "c" / "events.csv").read_bytes()


def test_files_have_the_documented_shape(tmp_path):
    cfg = SynthConfig(users=30, items=40, events=1500, topics=4, seed=1, malformed_rows=8)
    summary = generate(cfg, tmp_path)
    events = pd.read_csv(tmp_path / "events.csv", dtype=str, keep_default_na=False)
    assert list(events.columns) == ["user_id", "item_id", "timestamp", "event"]
    assert len(events) == cfg.events + cfg.malformed_rows == summary["events"] + summary["malformed_rows"]
    good = events[events.timestamp.str.isdigit() & (events.user_id != "")]
    assert good.timestamp.astype(np.int64).is_monotonic_increasing
    # the four kinds of malformed rows are present, two of each
    assert (events.user_id == "").sum() == 2
    assert (events.timestamp == "not-a-time").sum() == 2
    assert events.item_id.str.startswith("x").sum() == 2
    assert events.duplicated().sum() >= 2
    items = [json.loads(line) for line in (tmp_path / "items.jsonl").read_text().splitlines()]
    assert len(items) == cfg.items and set(items[0]) == {"item_id", "title", "description", "category"}
    assert len({it["category"] for it in items}) == cfg.topics


def _topic_shares(tmp_path, cfg):
    generate(cfg, tmp_path)
    events = pd.read_csv(tmp_path / "events.csv", dtype=str, keep_default_na=False)
    items = {json.loads(l)["item_id"]: json.loads(l)["category"] for l in (tmp_path / "items.jsonl").read_text().splitlines()}
    events = events[events.item_id.isin(items.keys()) & (events.user_id != "")].copy()
    events["topic"] = events.item_id.map(items)
    half = len(events) // 2
    first, second = events.iloc[:half], events.iloc[half:]
    stayed = []
    for user, group in first.groupby("user_id"):
        later = second[second.user_id == user]
        if len(group) < 15 or len(later) < 15:
            continue
        top = Counter(group.topic).most_common(1)[0][0]
        stayed.append((group.topic == top).mean() - (later.topic == top).mean())
    return np.array(stayed)


def test_interest_really_drifts(tmp_path):
    """A user's early favourite topic loses share later on when drift is on, not when it is off."""
    base = dict(users=40, items=120, events=12000, topics=8, seed=5, focus=0.9, malformed_rows=0)
    drifting = _topic_shares(tmp_path / "d", SynthConfig(drift="piecewise", drift_rate=3.0, **base))
    steady = _topic_shares(tmp_path / "s", SynthConfig(drift="none", **base))
    assert len(drifting) > 20 and len(steady) > 20
    # favourite-topic share drops a lot under drift (≈ 0.4 here), barely without it (≈ 0)
    assert drifting.mean() > 0.25
    assert abs(steady.mean()) < 0.08


def test_gradual_drift_moves_share_smoothly(tmp_path):
    base = dict(users=40, items=120, events=12000, topics=8, seed=6, focus=0.9, malformed_rows=0)
    assert _topic_shares(tmp_path, SynthConfig(drift="gradual", drift_rate=2.0, **base)).mean() > 0.15


@pytest.mark.parametrize("key, value", [("users", 0), ("topics", 99), ("focus", 1.5), ("span_days", 0.0)])
def test_bad_settings_are_config_errors(tmp_path, key, value):
    cfg = SynthConfig(**{key: value})
    with pytest.raises(ConfigError, match=f"synth.{key}"):
        generate(cfg, tmp_path)
