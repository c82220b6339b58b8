"""`dyembed evaluate`: split definition, errors, and (with a tiny trained model) the whole report."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from dyembed.config import Config
from dyembed.errors import ConfigError, InputDataError
from dyembed.evaluate.run import check_config, evaluate, make_roles
from dyembed.replay.seen import seen_before_events
from dyembed.evaluate.baselines import EventLog
from evaluate_world import loo_workdir, temporal_workdir, write_world  # noqa: F401 - fixtures

runner = CliRunner()


def invoke(*args):
    from dyembed_cli.app import app

    return runner.invoke(app, [str(a) for a in args])


def test_loo_split_definition():
    # rows in time order; user 0 has 4 events, user 1 has 3, user 2 has 2 (skipped)
    users = np.array([0, 1, 0, 2, 1, 0, 2, 1, 0])
    log = EventLog(users.astype(np.int32), np.zeros(9, np.int32), np.arange(9, dtype=np.int64), 3, 1)
    cfg = Config()
    cfg.evaluate.protocol = "loo"
    roles, info = make_roles(log, cfg.evaluate)
    # user 0: rows 0, 2, 5, 8 → train, train, validation, test; user 1: rows 1, 4, 7 → train, val, test
    assert roles.tolist() == [0, 0, 0, 0, 1, 1, 0, 2, 2]
    assert info["skipped_users"] == 1


def test_loo_ties_keep_row_order():
    # equal timestamps on a user's last two events: the later row is the test target
    users = np.array([0, 0, 0, 0])
    log = EventLog(users.astype(np.int32), np.arange(4, dtype=np.int32), np.array([5, 9, 9, 9]), 1, 4)
    cfg = Config()
    cfg.evaluate.protocol = "loo"
    roles, _ = make_roles(log, cfg.evaluate)
    assert roles.tolist() == [0, 0, 1, 2]


def test_temporal_split_and_masking_defaults():
    log = EventLog(np.zeros(10, np.int32), np.zeros(10, np.int32), np.arange(10, dtype=np.int64) * 10, 1, 1)
    cfg = Config()
    cfg.evaluate.protocol = "temporal"
    cfg.evaluate.test_fraction = 0.3
    roles, info = make_roles(log, cfg.evaluate)
    assert roles.tolist() == [0] * 7 + [2] * 3 and info["cut_ts"] == 70
    cfg.evaluate.test_start = 45
    roles, info = make_roles(log, cfg.evaluate)
    assert (roles == 2).sum() == 5 and info["cut_ts"] == 50


def test_bad_config_is_a_config_error():
    cfg = Config()
    cfg.evaluate.baselines = ["pop", "bpr"]
    with pytest.raises(ConfigError, match="unknown baseline 'bpr'"):
        check_config(cfg.evaluate)
    cfg = Config()
    cfg.evaluate.ks = [0]
    with pytest.raises(ConfigError, match="evaluate.ks"):
        check_config(cfg.evaluate)


def test_empty_test_split_is_input_error(tmp_path):
    write_world(tmp_path, users=5, events_per_user=2)  # every user has < 3 events
    cfg = Config()
    cfg.evaluate.protocol = "loo"
    with pytest.raises(InputDataError, match="empty test split"):
        evaluate(tmp_path, cfg)


@pytest.mark.parametrize("args,needle", [
    (["--protocol", "loo"], "no user has 3 or more events (5 users skipped)"),
    (["--protocol", "temporal", "--test-start", "2100-01-01"], "no event at or after the cut"),
])
def test_empty_test_split_exits_3_with_a_message(tmp_path, args, needle):
    write_world(tmp_path, users=5, events_per_user=2)
    result = invoke("evaluate", tmp_path, *args)
    assert result.exit_code == 3, result.output
    assert "error: empty test split" in result.output and needle in result.output
    assert "Traceback" not in result.output


def test_missing_workdir_exits_3(tmp_path):
    result = invoke("evaluate", tmp_path / "nope")
    assert result.exit_code == 3 and "events file not found" in result.output


# --------------------------------------------------------------------------- with a model state

NUMPY_MODELS = ["pop", "recent-pop", "random", "history-mean"]
_RUNS: dict = {}


def _dump(path):
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pandas()


def run(workdir, out_dir, protocol, *, models=None, **evaluate_keys):
    """evaluate() once per distinct setting in a session (the TF replay traces cost seconds)."""
    from evaluate_world import tiny_config

    key = (str(workdir), protocol, tuple(models or ()), tuple(sorted(evaluate_keys.items())))
    if key not in _RUNS:
        cfg = tiny_config(protocol)
        for name, value in evaluate_keys.items():
            setattr(cfg.evaluate, name, value)
        tag = f"run{len(_RUNS)}"
        report = evaluate(workdir, cfg, json_path=out_dir / f"{tag}.json", dump_ranks=out_dir / f"{tag}.parquet",
                          plot=out_dir / f"{tag}.png", models=models)
        _RUNS[key] = (report, _dump(out_dir / f"{tag}.parquet"), out_dir / tag)
    return _RUNS[key]


@pytest.fixture
def out_dir(tmp_path_factory):
    return tmp_path_factory.getbasetemp()


def _events(workdir):
    import pyarrow.parquet as pq

    return pq.read_table(workdir / "events.parquet").to_pandas()


def _roles(workdir, protocol):
    from evaluate_world import tiny_config

    ev = _events(workdir)
    return make_roles(EventLog(ev.user_idx.values, ev.item_idx.values, ev.ts.values, 30, 40), tiny_config(protocol).evaluate)[0]


def test_loo_report_json_dump_and_plot(loo_workdir, out_dir):
    import json

    from dyembed.evaluate.report import jsonable, validate_report

    report, dump, base = run(loo_workdir, out_dir, "loo")
    assert json.loads(base.with_suffix(".json").read_text()) == json.loads(json.dumps(jsonable(report)))
    assert list(report["models"]) == ["dyembed", "pop", "recent-pop", "random", "history-mean", "static"]
    assert any("frozen" in n for n in report["notes"])
    c = report["counts"]
    assert c["test_events"] == c["test_users"] == 30 and c["validation_events"] == 30 and c["skipped_users"] == 0
    masking = report["masking"]
    assert masking["setting"] == "on" and masking["seen_masked"] and masking["seen_items"].startswith("items of the user's earlier events")
    assert masking["repeat_rate"] > 0.2 and masking["reason"].startswith("forced on (")
    assert report["ks"] == [5, 10] and report["primary_metric"] == "ndcg@10"
    for res in report["models"].values():
        assert res["per_event"] == res["per_user"]  # one test event per user
        assert 0.0 <= res["coverage"]["@5"] <= 1.0 and 0.0 <= res["pop_percentile"]["@5"] <= 100.0
    assert report["models"]["static"]["lift"]["static"]["ndcg@10"] == 0.0
    # the dump recomputes every number of the report
    assert list(dump.columns) == ["model", "user_id", "item_id", "ts", "rank", "item_warmness", "user_history"]
    assert len(dump) == 30 * 6
    for name, group in dump.groupby("model"):
        r = group["rank"].to_numpy()
        ndcg = np.where(r <= 10, 1 / np.log2(r + 1), 0).mean()
        assert report["models"][name]["per_event"]["ndcg@10"] == pytest.approx(ndcg)
        assert report["models"][name]["per_event"]["recall@5"] == pytest.approx((r <= 5).mean())
        assert report["models"][name]["per_event"]["mrr"] == pytest.approx((1 / r).mean())
    assert base.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the schema check names what is wrong
    broken = json.loads(json.dumps(jsonable(report)))
    del broken["models"]["pop"]["ci95_per_event"]
    with pytest.raises(ValueError, match="models.pop: missing key 'ci95_per_event'"):
        validate_report(broken)
    broken = json.loads(json.dumps(jsonable(report)))
    broken["masking"]["seen_masked"] = "yes"
    with pytest.raises(ValueError, match="seen_masked"):
        validate_report(broken)


def test_masking_on_and_off(loo_workdir, out_dir):
    on, a, _ = run(loo_workdir, out_dir, "loo")
    off, b, _ = run(loo_workdir, out_dir, "loo", mask_seen="off")
    assert on["masking"]["seen_masked"] and not off["masking"]["seen_masked"]
    assert off["masking"]["setting"] == "off" and off["masking"]["seen_items"] == "none"
    assert (a[["model", "user_id", "item_id"]].values == b[["model", "user_id", "item_id"]].values).all()
    for model in on["models"]:
        ra, rb = a[a.model == model]["rank"].to_numpy(), b[b.model == model]["rank"].to_numpy()
        assert (ra <= rb).all() and (ra < rb).any(), model
    # pop, brute force: 1 + #other items with a history count >= the target's, minus the user's seen ones
    ev = _events(loo_workdir)
    roles = _roles(loo_workdir, "loo")
    hist = ev[roles != 2]
    counts = np.bincount(hist.item_idx, minlength=40)
    test = ev[roles == 2]
    off_expected = [1 + int((np.delete(counts, j) >= counts[j]).sum()) for j in test.item_idx]
    on_expected = []
    for u, j in zip(test.user_idx, test.item_idx):
        seen = set(hist.item_idx[hist.user_idx == u]) - {j}
        on_expected.append(1 + sum(1 for i in range(40) if i != j and counts[i] >= counts[j] and i not in seen))
    assert b[b.model == "pop"]["rank"].tolist() == off_expected
    assert a[a.model == "pop"]["rank"].tolist() == on_expected


def test_temporal_report_prequential_and_frozen(temporal_workdir, out_dir):
    report, dump, _ = run(temporal_workdir, out_dir, "temporal", models=["dyembed", "frozen", "pop"])
    assert list(report["models"]) == ["dyembed", "pop", "frozen"]
    assert report["masking"]["seen_masked"] is False and report["split"]["cut_ts"] is not None
    dyn = dump[dump.model == "dyembed"].reset_index(drop=True)
    frozen = dump[dump.model == "frozen"].reset_index(drop=True)
    assert (dyn.ts >= report["split"]["cut_ts"]).all() and len(dyn) == report["counts"]["test_events"]
    assert report["counts"]["test_users"] < report["counts"]["test_events"]  # users with several test events
    assert report["counts"]["validation_events"] > 0  # carved out of the pre-cut rows as train does
    # a user's first test event is scored with the same state (the one at the cut) by both …
    first = ~dyn.duplicated("user_id")
    assert (dyn["rank"][first] == frozen["rank"][first]).all()
    # … later ones differ because only the dynamic model folded in the earlier test events
    assert (dyn["rank"][~first] != frozen["rank"][~first]).any()
    assert report["models"]["frozen"]["lift"]["static"]["ndcg@10"] is None  # static was not run


def test_state_trained_for_another_protocol_exits_4(loo_workdir):
    result = invoke("evaluate", loo_workdir, "--protocol", "temporal", "--baselines", "none")
    assert result.exit_code == 4, result.output
    assert "already replayed" in result.output and "--protocol temporal` (same test settings)" in result.output


def _change_item_and_rank(workdir, out_dir, tmp_path, protocol, models):
    """Copy the work dir, change the item of a middle test event to another unseen item, rerun."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    before, a, _ = run(workdir, out_dir, protocol, models=models)
    work = tmp_path / "copy"
    shutil.copytree(workdir, work)
    table = pq.read_table(work / "events.parquet")
    items = table.column("item_idx").to_numpy().copy()
    users = table.column("user_idx").to_numpy()
    roles = _roles(workdir, protocol)
    test_rows = np.flatnonzero(roles == 2)
    k = len(test_rows) // 2
    row = test_rows[k]
    seen = set(items[(users == users[row]) & (roles != 2)].tolist())
    new_item = next(j for j in range(40) if j != items[row] and j not in seen)
    items[row] = new_item
    pq.write_table(table.set_column(1, "item_idx", pa.array(items, pa.int32())), work / "events.parquet")
    after, b, _ = run(work, out_dir, protocol, models=models)
    return before, after, a, b, k, test_rows, new_item


def test_no_leakage_numpy_baselines(loo_workdir, out_dir, tmp_path):
    """Changing a test event's item leaves the ranking it is scored against unchanged (numpy models)."""
    before, after, a, b, k, _, _ = _change_item_and_rank(loo_workdir, out_dir, tmp_path, "loo", NUMPY_MODELS)
    for model in NUMPY_MODELS:
        ra, rb = a[a.model == model]["rank"].to_numpy(), b[b.model == model]["rank"].to_numpy()
        assert (np.delete(ra, k) == np.delete(rb, k)).all(), model


@pytest.mark.parametrize("protocol", ["loo", "temporal"])
def test_no_leakage_dynamic_model(protocol, loo_workdir, temporal_workdir, out_dir, tmp_path):
    """An event's own target never touches the state that scores it: after changing a test event's
    item, its rank is the new item's position in the very ranking the old event was scored with."""
    from dyembed.replay import api

    workdir = loo_workdir if protocol == "loo" else temporal_workdir
    before, after, a, b, k, test_rows, new_item = _change_item_and_rank(workdir, out_dir, tmp_path, protocol, ["dyembed"])
    ev = _events(workdir)
    roles = _roles(workdir, protocol)
    trained = api.load_trained(workdir, view="eval")
    warm = np.flatnonzero((roles != 2) & (trained.split == 2))
    state = None
    if warm.size:
        state = api.replay_ranks(trained, ev.user_idx.values[warm], ev.item_idx.values[warm], ev.ts.values[warm],
                                 update=True).state
    exclude = None
    if before["masking"]["seen_masked"]:
        hist = roles != 2
        exclude = seen_before_events(30, ev.user_idx.values[test_rows], ev.item_idx.values[test_rows],
                                     api.seen_items(30, ev.user_idx.values[hist], ev.item_idx.values[hist]))
    full = api.replay_ranks(trained, ev.user_idx.values[test_rows], ev.item_idx.values[test_rows], ev.ts.values[test_rows],
                            update=True, topk=40, exclude=exclude, state=state).topk_items[k]
    ra, rb = a["rank"].to_numpy(), b["rank"].to_numpy()
    assert (ra[:k] == rb[:k]).all()  # nothing before the changed event moved
    assert rb[k] == list(full).index(new_item) + 1
    if protocol == "loo":  # one test event per user: nobody else moved either
        assert (ra[k + 1:] == rb[k + 1:]).all()


def test_evaluate_cli_json_to_stdout(loo_workdir):
    import json

    result = invoke("evaluate", loo_workdir, "--protocol", "loo", "--k", "5", "--k", "10",
                    "--baselines", "pop,random", "--json")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1  # --json: ONE line of JSON on stdout, nothing else (every command)
    report = json.loads(result.stdout)
    assert list(report["models"]) == ["dyembed", "pop", "random"] and report["ks"] == [5, 10]
    assert "┃" not in result.output  # no table


@pytest.mark.slow
def test_trained_model_beats_random_on_a_drifting_world(tmp_path_factory):
    """End to end with a real `train`: the dynamic model must clear the random floor."""
    from evaluate_world import build_workdir, tiny_config

    workdir = build_workdir(tmp_path_factory.getbasetemp(), "temporal", trained=True)
    cfg = tiny_config("temporal")
    report = evaluate(workdir, cfg)
    m = report["models"]
    assert m["dyembed"]["per_event"]["ndcg@10"] > m["random"]["per_event"]["ndcg@10"]
