"""Metrics by target-item warmness and user history length; the cold-item definition (issue 11 §6)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dyembed.evaluate.breakdown import (HISTORY_BUCKETS, WARMNESS_BUCKETS, breakdown, bucket_labels, from_rank_dump,
                                        slices_of_test_events, user_rows_before)
from dyembed.evaluate.metrics import ndcg_at_k
from dyembed.split import TEST, cold_test_rows, item_history_counts, loo_split, temporal_split


def test_item_history_counts_and_cold_rows_loo():
    # rows in time order; item 3 only occurs as user 1's last (test) event
    users = np.array([0, 1, 0, 1, 0, 1, 0])
    items = np.array([0, 1, 1, 2, 0, 3, 2])
    roles = loo_split(users)
    assert roles.tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert item_history_counts(items, roles, 5).tolist() == [2, 2, 1, 0, 0]
    assert cold_test_rows(items, roles, 5).tolist() == [False] * 5 + [True, False]


def test_cold_rows_temporal_are_items_first_seen_after_the_cut():
    ts = np.arange(10) * 10
    items = np.array([0, 1, 0, 1, 2, 0, 1, 2, 4, 4])
    roles = temporal_split(ts, test_fraction=0.3)  # rows 7, 8, 9 are test
    assert (roles == TEST).tolist() == [False] * 7 + [True] * 3
    # item 2 has history rows (row 4): warm; item 4's first event is in the test period: cold
    assert cold_test_rows(items, roles, 5).tolist() == [False] * 8 + [True, True]
    first = {int(i): int(ts[np.flatnonzero(items == i)[0]]) for i in np.unique(items)}
    cut = ts[roles == TEST].min()
    assert all((first[int(i)] >= cut) == bool(c) for i, c in zip(items[7:], cold_test_rows(items, roles, 5)[7:]))


def test_user_rows_before_and_buckets():
    users = np.array([2, 0, 2, 2, 0, 1])
    assert user_rows_before(users).tolist() == [0, 0, 1, 2, 1, 0]
    assert bucket_labels(np.array([0, 1, 4, 5, 99]), WARMNESS_BUCKETS).tolist() == ["0", "1-4", "1-4", "5+", "5+"]
    assert bucket_labels(np.array([0, 4, 5, 19, 20, 99, 100, 10**6]), HISTORY_BUCKETS).tolist() == [
        "0", "1-4", "5-19", "5-19", "20-99", "20-99", "100+", "100+"]


def test_slices_follow_row_order():
    users = np.array([0, 1, 0, 1, 0, 1, 0])
    items = np.array([0, 1, 1, 2, 0, 3, 2])
    roles = loo_split(users)
    s = slices_of_test_events(users, items, roles, 5)
    assert s["item_warmness"].tolist() == [0, 1]  # row 5: item 3 (cold); row 6: item 2 (1 history row)
    assert s["user_history"].tolist() == [2, 3]


def test_breakdown_numbers_by_hand():
    ranks = {"a": np.array([1, 3, 20, 2, 1]), "b": np.array([5, 1, 1, 40, 7])}
    users = np.array([7, 7, 8, 9, 9])
    slices = {"item_warmness": np.array([0, 0, 3, 10, 0]), "user_history": np.array([0, 1, 7, 30, 200])}
    out = breakdown(ranks, users, slices, [10], bootstrap=0)
    part = out["item_warmness"]
    assert part["buckets"] == ["0", "1-4", "5+"] and part["events"] == {"0": 3, "1-4": 1, "5+": 1}
    cold = part["models"]["a"]["0"]
    assert cold["events"] == 3 and cold["users"] == 2
    assert cold["per_event"]["ndcg@10"] == pytest.approx(float(ndcg_at_k(np.array([1, 3, 1]), 10).mean()))
    assert part["models"]["a"]["1-4"]["per_event"]["ndcg@10"] == 0.0  # rank 20
    assert part["models"]["b"]["5+"]["per_event"]["mrr"] == pytest.approx(1 / 40)
    hist = out["user_history"]
    assert hist["events"] == {"0": 1, "1-4": 1, "5-19": 1, "20-99": 1, "100+": 1}
    assert hist["models"]["a"]["100+"]["per_event"]["recall@10"] == 1.0
    assert hist["models"]["a"]["5-19"]["per_event"]["ndcg@10"] == 0.0
    # an empty bucket has no numbers, not zeros
    empty = breakdown(ranks, users, {"item_warmness": np.array([9, 9, 9, 9, 9])}, [10], bootstrap=0)
    assert empty["item_warmness"]["models"]["a"]["0"]["per_event"]["ndcg@10"] is None


@pytest.fixture(scope="module")
def cold_world(tmp_path_factory):
    """The tiny evaluate world (random θ, temporal) where item 39 never occurs before the cut and is
    the target of some test events: cold-item events."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from evaluate_world import write_state, write_world

    workdir = tmp_path_factory.mktemp("cold") / "world"
    write_world(workdir, seed=5)
    table = pq.read_table(workdir / "events.parquet")
    items = table.column("item_idx").to_numpy().copy()
    ts = table.column("ts").to_numpy()
    roles = temporal_split(ts, test_fraction=0.25)
    items[(roles != TEST) & (items == 39)] = 0
    test_rows = np.flatnonzero(roles == TEST)
    items[test_rows[::9]] = 39
    table = table.set_column(table.schema.get_field_index("item_idx"), "item_idx", pa.array(items, pa.int32()))
    pq.write_table(table, workdir / "events.parquet")
    write_state(workdir, "temporal")
    return workdir, int((items[test_rows] == 39).sum())


def test_evaluate_reports_the_breakdown_and_the_dump_recomputes_it(cold_world, tmp_path):
    from dyembed.evaluate.report import jsonable, validate_report
    from dyembed.evaluate.run import evaluate
    from evaluate_world import tiny_config

    workdir, n_cold = cold_world
    cfg = tiny_config("temporal")
    cfg.evaluate.baselines = ["pop", "history-mean"]
    report = evaluate(workdir, cfg, json_path=tmp_path / "m.json", dump_ranks=tmp_path / "r.parquet")
    saved = json.loads((tmp_path / "m.json").read_text())
    validate_report(saved)
    part = saved["breakdown"]["item_warmness"]
    assert part["events"]["0"] == n_cold > 0
    assert sum(part["events"].values()) == saved["counts"]["test_events"]
    assert sum(saved["breakdown"]["user_history"]["events"].values()) == saved["counts"]["test_events"]
    # ID-only popularity cannot score a cold item: it ties with nothing above it
    assert part["models"]["pop"]["0"]["per_event"]["ndcg@10"] == 0.0
    # every bucket's numbers come back from the rank dump alone (same ranks, same metric code)
    assert jsonable(from_rank_dump(tmp_path / "r.parquet", report["ks"], bootstrap=cfg.evaluate.bootstrap,
                                   seed=cfg.evaluate.seed)) == saved["breakdown"]
    import pyarrow.parquet as pq

    dump = pq.read_table(tmp_path / "r.parquet").to_pandas()
    dy = dump[dump.model == "dyembed"]
    cold = dy[dy.item_warmness == 0]
    assert (cold.item_id == "i39").all() and len(cold) == n_cold
    assert part["models"]["dyembed"]["0"]["per_event"]["ndcg@5"] == pytest.approx(
        float(ndcg_at_k(cold["rank"].to_numpy(), 5).mean()))
    # the overall metric is the event-weighted mean of the buckets
    overall = saved["models"]["dyembed"]["per_event"]["ndcg@10"]
    weighted = sum(part["events"][b] * (part["models"]["dyembed"][b]["per_event"]["ndcg@10"] or 0.0)
                   for b in part["buckets"]) / saved["counts"]["test_events"]
    assert overall == pytest.approx(weighted)
    # a broken breakdown is named by the schema check
    del saved["breakdown"]["user_history"]["models"]["pop"]
    with pytest.raises(ValueError, match="breakdown.user_history.models must list every model"):
        validate_report(saved)


def test_printed_table_has_the_buckets(cold_world):
    from typer.testing import CliRunner

    from dyembed_cli.app import app

    workdir, n_cold = cold_world
    res = CliRunner().invoke(app, ["evaluate", str(workdir), "--baselines", "pop"])
    assert res.exit_code == 0, res.output
    assert "by target-item warmness" in res.output
    assert f"{n_cold:,} ev" in res.output and "item 0" in res.output


def test_old_rank_dump_without_slices_is_a_data_error(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dyembed.errors import InputDataError

    pq.write_table(pa.table({"model": ["a"], "user_id": ["u"], "item_id": ["i"], "ts": [1], "rank": [1]}), tmp_path / "r.parquet")
    with pytest.raises(InputDataError, match="no column.s. item_warmness, user_history"):
        from_rank_dump(tmp_path / "r.parquet", [10])
