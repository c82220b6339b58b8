"""`data.max_future_days`: rows dated too far after the run's wall-clock time are quarantined as
`future_timestamp` (so one bad clock cannot move the watermark years ahead), counted like every
other reason; a negative value switches the check off."""

from __future__ import annotations

import json
import time

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from dyembed.config import Config
from dyembed.errors import ConfigError
from dyembed.preprocess.run import future_limit, preprocess
from dyembed.preprocess.validate import REASONS
from dyembed_cli.app import app

runner = CliRunner()
DAY = 86_400
ITEMS = "item_id,title,description\ni1,Red shoes,Shoes that are red\ni2,Blue hat,A hat\n"


def _setup(tmp_path, rows: list[str]):
    (tmp_path / "items.csv").write_text(ITEMS, encoding="utf-8")
    (tmp_path / "ev.csv").write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n", encoding="utf-8")
    cfg = Config()
    cfg.data.events, cfg.data.items = str(tmp_path / "ev.csv"), str(tmp_path / "items.csv")
    return cfg


def _rejected(work):
    return [(r["reason"], r["user"], r["timestamp"]) for r in pq.read_table(work / "rejected.parquet").to_pylist()]


def test_rows_beyond_the_limit_are_quarantined_and_counted(tmp_path):
    now = int(time.time())
    # second  : 1 day ahead (kept, inside the default 2 days)
    # third   : 3 days ahead in milliseconds (auto unit) → future_timestamp
    # fourth  : the year 3000 → future_timestamp
    # fifth   : missing user AND in the future → missing_user (checked first)
    rows = ["u1,i1,1600000000", f"u2,i2,{now + DAY}", f"u3,i1,{(now + 3 * DAY) * 1000}", "u4,i2,32503680000",
            f",i1,{now + 9 * DAY}"]
    cfg = _setup(tmp_path, rows)
    summary = preprocess(tmp_path / "w", cfg)
    assert summary["events_out"] == 2 and summary["rejected"] == {"missing_user": 1, "future_timestamp": 2}
    assert _rejected(tmp_path / "w") == [("future_timestamp", "u3", str((now + 3 * DAY) * 1000)),
                                         ("future_timestamp", "u4", "32503680000"), ("missing_user", "", str(now + 9 * DAY))]
    m = json.loads((tmp_path / "w" / "manifest.json").read_text())
    assert m["counts"]["rows_in"] == 5 == m["counts"]["events_out"] + m["counts"]["rejected_total"]
    assert m["time_range"]["max_ts"] == m["watermark"] == now + DAY
    allowed = m["runs"][-1]["max_ts_allowed"]
    assert now + 2 * DAY <= allowed <= int(time.time()) + 2 * DAY
    assert REASONS.index("bad_timestamp") + 1 == REASONS.index("future_timestamp")


def test_limit_is_configurable_and_can_be_switched_off(tmp_path):
    now = int(time.time())
    rows = ["u1,i1,1600000000", f"u2,i2,{now + DAY}", "u3,i1,32503680000"]
    cfg = _setup(tmp_path, rows)
    cfg.data.max_future_days = -1
    assert preprocess(tmp_path / "off", cfg)["rejected"] == {}
    cfg.data.max_future_days = float("inf")
    assert preprocess(tmp_path / "inf", cfg)["rejected"] == {}
    cfg.data.max_future_days = 0.5
    assert preprocess(tmp_path / "half", cfg)["rejected"] == {"future_timestamp": 2}
    cfg.data.max_future_days = float("nan")
    with pytest.raises(ConfigError, match="data.max_future_days"):
        preprocess(tmp_path / "nan", cfg)
    assert future_limit(2.0, 1000.7) == 1000 + 2 * DAY and future_limit(-0.1, 1000.0) is None


def test_cli_set_and_exit_codes(tmp_path):
    now = int(time.time())
    cfg = _setup(tmp_path, ["u1,i1,1600000000", f"u2,i2,{now + 10 * DAY}"])
    base = ["preprocess", str(tmp_path / "w"), "--events", cfg.data.events, "--items", cfg.data.items]
    result = runner.invoke(app, base)
    assert result.exit_code == 0
    assert "1 row(s) dated more than 2 days in the future" in result.stderr and "future_timestamp" in result.stdout
    result = runner.invoke(app, base + ["--set", "data.max_future_days=-1"])
    assert result.exit_code == 0 and "future" not in result.stderr
    assert "max_future_days = -1.0" in (tmp_path / "w" / "config.toml").read_text()
    result = runner.invoke(app, base + ["--set", "data.max_future_days=nan"])
    assert result.exit_code == 2 and "error: config key 'data.max_future_days'" in result.stderr
    # every row in the future: no valid event is an input error, like any all-rejected log
    # (a fresh work dir: w/config.toml now says -1, and it is the base config of later runs there)
    _setup(tmp_path, [f"u2,i2,{now + 10 * DAY}"])
    result = runner.invoke(app, ["preprocess", str(tmp_path / "w2"), *base[2:]])
    assert result.exit_code == 3 and "future_timestamp 1" in result.stderr


def test_append_quarantines_future_rows_and_keeps_the_watermark(tmp_path):
    cfg = _setup(tmp_path, ["u1,i1,1600000000", "u2,i2,1600000100"])
    preprocess(tmp_path / "w", cfg)
    (tmp_path / "day2.csv").write_text("user_id,item_id,timestamp\nu1,i2,1600000200\nu3,i1,32503680000\n", encoding="utf-8")
    cfg.data.events = str(tmp_path / "day2.csv")
    summary = preprocess(tmp_path / "w", cfg, append=True)
    assert summary["rejected"] == {"future_timestamp": 1} and summary["new_users"] == 0
    m = json.loads((tmp_path / "w" / "manifest.json").read_text())
    assert m["watermark"] == 1600000200 and m["counts"]["rejected"] == {"future_timestamp": 1}
    assert m["counts"]["rows_in"] == 4 == m["counts"]["events_out"] + m["counts"]["rejected_total"]


def test_synthetic_worlds_are_unaffected(synth_world, tmp_path):
    cfg = Config()
    cfg.data.format, cfg.data.input = "synth", str(synth_world)
    summary = preprocess(tmp_path / "w", cfg)
    assert "future_timestamp" not in summary["rejected"] and summary["events_out"] == 3000


def test_update_reports_quarantined_future_rows(tmp_path_factory, tmp_path):
    """A nightly log with one far-future row: the row is quarantined, the rest is applied, the
    watermark stays honest, and the JSON summary warns."""
    from update_world import copy_world, shared_world

    world = shared_world(tmp_path_factory)
    work = copy_world(world, tmp_path)
    last = json.loads((work / "manifest.json").read_text())["watermark"]
    log = tmp_path / "future.csv"
    log.write_text(f"user_id,item_id,timestamp,event\nu000001,i000001,32503680000,click\nu000002,i000002,{last + 60},click\n")
    result = runner.invoke(app, ["update", str(work), "--new-log", str(log), "--json"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "updated" and summary["events_added"] == 1
    assert summary["rejected"] == {"future_timestamp": 1}
    assert summary["watermark"]["last_ts"] == last + 60
    assert len(summary["warnings"]) == 1 and "1 row(s) dated more than 2 days in the future" in summary["warnings"][0]
    assert "future_timestamp" in result.stderr
