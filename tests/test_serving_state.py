"""§1: the serving state holds every event; the evaluation snapshot is kept apart and never sees a
test answer; resume carries the snapshot; protocol none has none."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from dyembed.artefacts import sha256_file
from dyembed_cli.app import app
from evaluate_world import build_workdir, tiny_config

runner = CliRunner()


def _events(work):
    t = pq.read_table(work / "events.parquet")
    return (t.column("user_idx").to_numpy().astype(np.int32), t.column("item_idx").to_numpy().astype(np.int32),
            t.column("ts").to_numpy().astype(np.int64))


def _reference(work, trained, users, items, ts):
    """The float64 one-event-at-a-time replay (rules_reference.py) of these rows from fresh users,
    with the state's saved θ."""
    from dyembed.replay.rules_reference import ReferenceParams, reference_replay
    from dyembed.replay.state import UserState

    spec = trained.spec
    params = ReferenceParams.from_theta(trained.theta, None, V=trained.item_matrix())
    fresh = UserState.fresh(trained.n_users, trained.state.dim, spec.n_slots, init=spec.init, u0=trained.prior(),
                            history=trained.state.history)
    return reference_replay(params, spec, fresh, users, items, ts)


@pytest.fixture(scope="module", params=["loo", "temporal"])
def trained(request, tmp_path_factory):
    return request.param, build_workdir(tmp_path_factory.getbasetemp(), request.param, trained=True)


def test_serving_state_consumed_every_row_and_equals_the_reference_replay(trained):
    from dyembed.replay.api import load_trained

    protocol, work = trained
    users, items, ts = _events(work)
    manifest = json.loads((work / "state" / "manifest.json").read_text())
    assert manifest["watermark"] == {"rows": len(users), "last_ts": int(ts[-1])}
    serving = load_trained(work)
    n = serving.n_users
    assert serving.split is None
    assert int(serving.state.count.sum()) == len(users)  # every event, test rows included
    np.testing.assert_array_equal(serving.state.count, np.bincount(users, minlength=n))
    last = np.zeros(n, np.int64)
    last[users] = ts  # rows in time order: the last write wins
    np.testing.assert_array_equal(serving.state.last_ts, last)
    ref, _, _, _ = _reference(work, serving, users, items, ts)
    np.testing.assert_allclose(serving.state.U, ref.U, rtol=1e-4, atol=1e-5)

    snap = load_trained(work, view="eval")
    roles = snap.split
    assert len(roles) == len(users) and (roles == 2).sum() == manifest["eval"]["test_events"] > 0
    for k, v in serving.theta.arrays().items():  # one θ for both
        np.testing.assert_array_equal(v, snap.theta.arrays()[k])
    history = roles != 2
    np.testing.assert_array_equal(snap.state.count, np.bincount(users[history], minlength=n))
    ref_snap, _, _, _ = _reference(work, snap, users[history], items[history], ts[history])
    np.testing.assert_allclose(snap.state.U, ref_snap.U, rtol=1e-4, atol=1e-5)
    if protocol == "loo":  # each user's test row is its last: serving = snapshot + one more step
        assert ((serving.state.count - snap.state.count) == np.bincount(users[~history], minlength=n)).all()


def test_evaluate_scores_the_test_rows_from_the_snapshot(trained, tmp_path):
    """The ranks evaluate reports are the float64 reference's: test rows replayed, prequentially,
    from the users at the split boundary (not from the serving state, which has seen them)."""
    from dyembed.evaluate.run import evaluate
    from dyembed.replay.api import load_trained
    from dyembed.replay.rules_reference import ReferenceParams, reference_replay

    protocol, work = trained
    cfg = tiny_config(protocol)
    report = evaluate(work, cfg, models=["dyembed"], dump_ranks=tmp_path / "ranks.parquet")
    ranks = pq.read_table(tmp_path / "ranks.parquet").column("rank").to_numpy()
    snap = load_trained(work, view="eval")
    users, items, ts = _events(work)
    test = snap.split == 2
    exclude = None
    if report["masking"]["seen_masked"]:  # the items of each user's history rows
        exclude = [set(items[~test][users[~test] == u].tolist()) for u in range(snap.n_users)]
    params = ReferenceParams.from_theta(snap.theta, None, V=snap.item_matrix())
    _, _, ref_ranks, _ = reference_replay(params, snap.spec, snap.state, users[test], items[test], ts[test],
                                          exclude=exclude)
    np.testing.assert_array_equal(ranks, ref_ranks)


def before_roles(work):
    from dyembed.replay.api import load_trained

    return load_trained(work, view="eval").split


def _change_test_items(work, dest, how_many=3):
    """A copy of `work` whose middle `how_many` test rows name another item (one the user has not
    seen); returns (copy, changed rows)."""
    from dyembed.replay.api import load_trained

    shutil.copytree(work, dest)
    roles = load_trained(work, view="eval").split
    table = pq.read_table(dest / "events.parquet")
    users, items, _ = _events(dest)
    test_rows = np.flatnonzero(roles == 2)
    rows = test_rows[len(test_rows) // 2:len(test_rows) // 2 + how_many]
    items = items.copy()
    for r in rows:
        seen = set(items[users == users[r]].tolist())
        items[r] = next(j for j in range(40) if j not in seen)
    pq.write_table(table.set_column(1, "item_idx", pa.array(items, pa.int32())), dest / "events.parquet")
    return dest, rows


def test_theta_and_the_snapshot_never_see_a_test_answer(trained, tmp_path):
    """Training again on a log whose test rows name other items gives, byte for byte, the same θ
    and the same evaluation snapshot: neither depends on a test row. The serving state does (it is
    meant to), and evaluate of the old state on the changed log moves no rank before the first
    changed row."""
    from dyembed.evaluate.run import evaluate
    from dyembed.replay.train import train

    protocol, work = trained
    other, rows = _change_test_items(work, tmp_path / "other")
    cfg = tiny_config(protocol)
    before = evaluate(work, cfg, models=["dyembed"], dump_ranks=tmp_path / "a.parquet")
    after = evaluate(other, cfg, models=["dyembed"], dump_ranks=tmp_path / "b.parquet")  # the old state, new answers
    a = pq.read_table(tmp_path / "a.parquet").to_pandas()
    b = pq.read_table(tmp_path / "b.parquet").to_pandas()
    test_rows = np.flatnonzero(before_roles(work) == 2)
    first = int(np.searchsorted(test_rows, rows.min()))  # position of the first changed row among the test rows
    assert before["counts"] == after["counts"] and 0 < first < len(test_rows)
    assert (a["rank"].to_numpy()[:first] == b["rank"].to_numpy()[:first]).all()
    train(other, copy.deepcopy(cfg))
    for name in ["theta.npz"] + [f"eval/{n}" for n in ("U.npy", "slots.npy", "count.npy", "last_ts.npy", "roles.npy")]:
        assert sha256_file(work / "state" / name) == sha256_file(other / "state" / name), name
    assert sha256_file(work / "state" / "U.npy") != sha256_file(other / "state" / "U.npy")


def _append(work, extra_per_user=2, new_user=True):
    """Rows after the log's end for some existing users (and one new user): preprocess --append's
    effect, written directly. Returns the number of rows added."""
    users, items, ts = _events(work)
    n_users = pq.ParquetFile(work / "users.parquet").metadata.num_rows
    add_u = np.repeat(np.arange(0, n_users, 3, dtype=np.int32), extra_per_user)
    if new_user:
        add_u = np.r_[add_u, np.int32(n_users), np.int32(n_users)]
        pq.write_table(pa.table({"user_idx": pa.array(np.arange(n_users + 1), pa.int32()),
                                 "user_id": [f"u{u}" for u in range(n_users + 1)]}), work / "users.parquet")
    add_i = (np.arange(len(add_u)) * 7 % 40).astype(np.int32)
    add_t = ts[-1] + 100 * (1 + np.arange(len(add_u), dtype=np.int64))
    pq.write_table(pa.table({"user_idx": np.r_[users, add_u], "item_idx": np.r_[items, add_i], "ts": np.r_[ts, add_t]}),
                   work / "events.parquet")
    return len(add_u)


def test_resume_carries_the_snapshot_and_evaluate_of_the_longer_log_stays_honest(tmp_path_factory, tmp_path):
    from dyembed.evaluate.run import evaluate
    from dyembed.replay.api import load_trained
    from dyembed.replay.train import train

    work = tmp_path / "w"
    shutil.copytree(build_workdir(tmp_path_factory.getbasetemp(), "temporal", trained=True), work)
    eval_files = {n: sha256_file(p) for n, p in ((p.name, p) for p in (work / "state" / "eval").iterdir())}
    n_before = len(_events(work)[0])
    added = _append(work)
    cfg = tiny_config("temporal")
    summary = train(work, copy.deepcopy(cfg), resume=True)
    assert summary["new_events"] == added and summary["eval_snapshot"] == "kept"
    assert {p.name: sha256_file(p) for p in (work / "state" / "eval").iterdir()} == eval_files
    assert (work / "state" / "eval" / "U.npy").stat().st_ino == (work / "state.prev" / "eval" / "U.npy").stat().st_ino
    serving = load_trained(work)
    assert int(serving.state.count.sum()) == n_before + added
    report = evaluate(work, cfg, models=["dyembed", "pop"])
    assert any("appended after `train`" in n for n in report["notes"])
    assert report["counts"]["events"] == n_before + added
    # the same numbers as a state trained before the append, evaluated now: the snapshot + θ frozen
    result = runner.invoke(app, ["--quiet", "state", "verify", str(work)])
    assert result.exit_code == 0, result.stderr


def test_resume_with_update_global_drops_the_snapshot(tmp_path_factory, tmp_path):
    from dyembed.replay.train import train

    work = tmp_path / "w"
    shutil.copytree(build_workdir(tmp_path_factory.getbasetemp(), "loo", trained=True), work)
    _append(work, new_user=False)
    summary = train(work, tiny_config("loo"), resume=True, update_global=True)
    assert summary["eval_snapshot"] == "dropped" and not (work / "state" / "eval").exists()
    result = runner.invoke(app, ["evaluate", str(work), "--protocol", "loo"])
    assert result.exit_code == 4
    assert "cannot be evaluated: θ was updated on appended rows by `train --resume --update-global`" in result.stderr
    assert "--protocol loo" in result.stderr


def test_protocol_none_serves_everything_and_evaluate_names_the_protocol_flag(tmp_path_factory):
    from update_world import shared_world

    work = shared_world(tmp_path_factory)[0]
    manifest = json.loads((work / "state" / "manifest.json").read_text())
    assert manifest["eval"] is None and not (work / "state" / "eval").exists()
    assert int(np.load(work / "state" / "count.npy").sum()) == manifest["watermark"]["rows"]
    result = runner.invoke(app, ["evaluate", str(work)])
    assert result.exit_code == 4 and result.stdout == ""
    assert "it was trained with --protocol none" in result.stderr and "--protocol loo` (or --protocol temporal)" in result.stderr


def test_a_per_user_array_the_model_adds_goes_through_serving_snapshot_resume_and_verify(tmp_path):
    """model.history keeps each user's recent items (recent.npy): saved in state/ and state/eval/,
    checksummed, loaded by both views, carried by resume — no code of the state layout names it."""
    from dyembed.evaluate.run import evaluate
    from dyembed.replay.api import load_trained
    from dyembed.replay.train import train
    from evaluate_world import write_world

    work = tmp_path / "w"
    write_world(work, seed=3)
    cfg = tiny_config("loo")
    cfg.model.history, cfg.model.repeat = 4, True
    train(work, copy.deepcopy(cfg))
    manifest = json.loads((work / "state" / "manifest.json").read_text())
    assert {"recent.npy", "eval/recent.npy"} <= set(manifest["files"])
    assert manifest["user_shapes"]["recent"] == [30, 4] == manifest["eval"]["user_shapes"]["recent"]
    users, items, _ = _events(work)
    serving, snap = load_trained(work), load_trained(work, view="eval")
    last_item = {int(u): int(i) for u, i in zip(users, items)}  # rows in order: the last write wins
    k = serving.state.count - 1  # slot of each user's last event in the ring
    assert all(serving.state.recent[u, k[u] % 4] == last_item[u] for u in range(30))
    assert (snap.state.recent != serving.state.recent).any()  # the snapshot has not seen the test items
    assert evaluate(work, cfg, models=["dyembed"])["models"]["dyembed"]["events"] == 30
    _append(work, new_user=False)
    assert train(work, copy.deepcopy(cfg), resume=True)["eval_snapshot"] == "kept"
    result = runner.invoke(app, ["--quiet", "state", "verify", str(work)])
    assert result.exit_code == 0, result.stderr
