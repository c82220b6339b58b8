"""dyembed.Workdir: Arrow tables and DataFrames in, the CLI's functions and errors underneath."""

from __future__ import annotations


import numpy as np
import pyarrow as pa
import pytest

import dyembed
from evaluate_world import loo_workdir  # noqa: F401 - module fixture


def events_items():
    rng = np.random.default_rng(0)
    n = 400
    events = pa.table({"uid": [f"user{u}" for u in rng.integers(0, 20, n)],
                       "sku": [f"sku{i}" for i in rng.integers(0, 30, n)],
                       "ts": 1_700_000_000 + np.arange(n) * 60})
    items = pa.table({"item_id": [f"sku{i}" for i in range(30)], "title": [f"thing {i}" for i in range(30)],
                      "description": [f"a thing of kind {i % 3}" for i in range(30)]})
    return events, items


def test_preprocess_from_arrow_tables_remembers_no_temporary_file(tmp_path):
    events, items = events_items()
    wd = dyembed.Workdir(tmp_path / "w", settings={"data.user_col": "uid", "data.item_col": "sku", "data.time_col": "ts"})
    summary = wd.preprocess(events=events, items=items)
    assert summary["events_out"] == 400 and summary["items"] <= 30 and summary["rejected_total"] == 0
    saved = dyembed.Workdir(tmp_path / "w").config()
    assert saved.data.user_col == "uid" and saved.data.events is None and saved.data.items is None
    # the same as the CLI on files: the same ids, in the same order
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from dyembed_cli.app import app

    pacsv.write_csv(events, tmp_path / "events.csv")
    pacsv.write_csv(items, tmp_path / "items.csv")
    result = CliRunner().invoke(app, ["--quiet", "preprocess", str(tmp_path / "c"), "--events", str(tmp_path / "events.csv"),
                                      "--items", str(tmp_path / "items.csv"), "--set", "data.user_col=uid",
                                      "--set", "data.item_col=sku", "--set", "data.time_col=ts"])
    assert result.exit_code == 0, result.output
    for name in ("events.parquet", "users.parquet", "items.parquet"):
        api_table, cli_table = pq.read_table(tmp_path / "w" / name), pq.read_table(tmp_path / "c" / name)
        assert api_table.select(cli_table.column_names).equals(cli_table), name


def test_errors_are_the_clis(tmp_path, loo_workdir):
    wd = dyembed.Workdir(loo_workdir)
    with pytest.raises(dyembed.InputDataError, match="not in .*users.parquet: nobody"):
        wd.recommend(["u1", "nobody"])
    with pytest.raises(dyembed.ConfigError, match="did you mean 'model.dim'"):
        dyembed.Workdir(loo_workdir, settings={"model.dimm": 3}).config()
    with pytest.raises(dyembed.StateError):
        dyembed.Workdir(tmp_path).recommend(["u1"])


def test_recommend_tables_and_settings(loo_workdir):
    wd = dyembed.Workdir(loo_workdir)
    df = wd.recommend("u3", k=4, mask_seen=True)
    table = wd.recommend(["u3"], k=4, mask_seen="on", arrow=True)
    assert isinstance(table, pa.Table) and table.column("item_id").to_pylist() == df["item_id"].tolist()
    assert list(df.columns) == ["user_id", "rank", "item_id", "score", "text", "cold_start", "unknown"]
    every = wd.recommend(k=2)
    assert len(every) == 2 * 30 and set(every["user_id"]) == {f"u{u}" for u in range(30)}
    # Workdir settings < keyword arguments
    assert dyembed.Workdir(loo_workdir, settings={"evaluate.mask_seen": "on"}).config().evaluate.mask_seen == "on"
    assert wd.config(**{"evaluate.mask_seen": "off"}).evaluate.mask_seen == "off"
