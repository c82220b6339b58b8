"""`dyembed export`: the SavedModel, loaded in a fresh interpreter without dyembed, serves what
`dyembed recommend` serves, and its update_and_recommend is `dyembed update` + `recommend`; the
ANN tables' dot products are the scores; bad --out / no state / hashed ids fail in one line and
leave nothing half-written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from dyembed_cli.app import app
from update_world import split_log, world_config

runner = CliRunner()
TESTS = Path(__file__).resolve().parent
K = 5


def _build(root: Path, **model) -> tuple[Path, Path]:
    """A trained work dir whose model uses every part of the rule (adam, decay, L2, clipping, the
    recent-item ring with context and repeat terms); raw/new.csv is tomorrow's log."""
    from dyembed.config import SynthConfig
    from dyembed.encode.run import encode
    from dyembed.preprocess.run import preprocess
    from dyembed.replay.train import train
    from dyembed.synth import generate

    raw, work = root / "raw", root / "work"
    generate(SynthConfig(users=30, items=40, events=1200, topics=4, seed=11, malformed_rows=0), raw)
    split_log(raw)
    cfg = world_config(raw)
    settings = dict(rule="adam", history=5, repeat=True, context=True, repeat_init=0.5, decay_half_life_days=3.0,
                    l2_prior=0.01, clip_norm=5.0)
    settings.update(model)
    for key, value in settings.items():
        setattr(cfg.model, key, value)
    preprocess(work, cfg)
    encode(work, cfg)
    train(work, cfg)
    return work, raw


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_world")
    work, raw = _build(root)
    out = root / "export"
    res = runner.invoke(app, ["export", str(work), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    return work, raw, out, json.loads(res.stdout)


def _serve(model_dir: Path, requests: list[dict], tmp: Path) -> dict:
    """Run the requests through tests/serving_client.py in a fresh interpreter without dyembed."""
    tmp.mkdir(parents=True, exist_ok=True)
    req, res = tmp / "requests.json", tmp / "outputs.json"
    req.write_text(json.dumps(requests), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    proc = subprocess.run([sys.executable, str(TESTS / "serving_client.py"), str(model_dir), str(req), str(res)],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(res.read_text(encoding="utf-8"))


def _recommend_all(work: Path, tmp: Path, *extra: str) -> dict[str, list[tuple[str, float]]]:
    """`dyembed recommend` for every user (the CLI, --out parquet) → user_id → [(item_id, score)]."""
    path = tmp / f"rec{len(list(tmp.glob('rec*.parquet')))}.parquet"
    res = runner.invoke(app, ["recommend", str(work), "--k", str(K), "--out", str(path), *extra])
    assert res.exit_code == 0, res.output
    rows = pq.read_table(path).sort_by([("user_id", "ascending"), ("rank", "ascending")]).to_pylist()
    out: dict[str, list] = {}
    for r in rows:
        out.setdefault(r["user_id"], []).append((r["item_id"], r["score"]))
    return out


def _user_ids(work: Path) -> list[str]:
    return pq.read_table(work / "users.parquet").sort_by("user_idx").column("user_id").to_pylist()


def _assert_lists_equal(got_ids, got_scores, want: list[tuple[str, float]], who: str) -> None:
    n = len(want)
    assert list(got_ids[:n]) == [i for i, _ in want], who
    np.testing.assert_allclose(got_scores[:n], [s for _, s in want], rtol=1e-5, atol=1e-6, err_msg=who)
    assert all(i == "" for i in got_ids[n:]), who  # fewer than k items left: padded


def test_export_writes_the_saved_model_ann_tables_and_manifest(world):
    work, _, out, summary = world
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["format"] == "dyembed-export" and manifest["state_version"] == 1
    assert manifest["saved_model"] == "saved_model/1" and (out / "saved_model/1/saved_model.pb").is_file()
    assert manifest["signatures"] == ["recommend", "update_and_recommend", "embed_items"]
    assert manifest["n_users"] == 30 and manifest["n_items"] == 40 and manifest["history"] == 5
    assert manifest["watermark"]["rows"] == pq.ParquetFile(work / "events.parquet").metadata.num_rows
    assert summary["saved_model_bytes"] == sum(p.stat().st_size for p in (out / "saved_model").rglob("*") if p.is_file())
    assert (out / "ann/users.parquet").is_file() and (out / "ann/items.parquet").is_file()
    assert not list(out.parent.glob(".export.tmp-*"))


def test_saved_model_without_dyembed_equals_dyembed_recommend(world, tmp_path):
    work, _, out, _ = world
    users = _user_ids(work) + ["no-such-user"]
    requests = [{"signature": "recommend", "inputs": {"user_ids": users, "k": K, "exclude_seen": flag}}
                for flag in (False, True)]
    served = _serve(out / "saved_model/1", requests, tmp_path / "client")
    assert {"recommend", "update_and_recommend", "embed_items"} <= set(served["signatures"])
    for flag, result in zip((False, True), served["results"]):
        want = _recommend_all(work, tmp_path, *(["--exclude-seen"] if flag else []))
        assert result["known_user"] == [True] * (len(users) - 1) + [False]
        for row, uid in enumerate(users[:-1]):
            _assert_lists_equal(result["item_ids"][row], result["scores"][row], want[uid], f"{uid} seen={flag}")
        # an unknown user gets the cold-start list: recommend's for an unknown id
        cold = runner.invoke(app, ["recommend", str(work), "--user", "no-such-user", "--k", str(K), "--out",
                                   str(tmp_path / "cold.parquet"), *(["--exclude-seen"] if flag else [])])
        assert cold.exit_code == 0, cold.output
        rows = pq.read_table(tmp_path / "cold.parquet").to_pylist()
        _assert_lists_equal(result["item_ids"][-1], result["scores"][-1], [(r["item_id"], r["score"]) for r in rows],
                            "unknown user")
        assert result["cold_start"][-1] is True


def _window(work: Path, start_row: int) -> tuple[list[str], list[str], list[int]]:
    """Raw user ids, item ids and times of the events.parquet rows from start_row (what update appended)."""
    ev = pq.read_table(work / "events.parquet").slice(start_row)
    users = np.asarray(_user_ids(work), dtype=object)
    items = np.asarray(pq.read_table(work / "items.parquet").sort_by("item_idx").column("item_id").to_pylist(), dtype=object)
    return (users[ev.column("user_idx").to_numpy()].tolist(), items[ev.column("item_idx").to_numpy()].tolist(),
            ev.column("ts").to_numpy().tolist())


def test_update_and_recommend_equals_dyembed_update_then_recommend(world, tmp_path):
    from dyembed.replay.state import load_state

    work, raw, out, summary = world
    updated = tmp_path / "work"
    shutil.copytree(work, updated)
    res = runner.invoke(app, ["update", str(updated), "--new-log", str(raw / "new.csv"), "--json"])
    assert res.exit_code == 0, res.output
    users, items, ts = _window(updated, summary["watermark"]["rows"])
    assert len(users) > 100 and any(u.startswith("newuser") for u in users)
    # the request lists the window in another order: the model sorts each user's events by time
    perm = np.random.default_rng(0).permutation(len(users))
    inputs = {"user_ids": [users[i] for i in perm], "item_ids": [items[i] for i in perm],
              "timestamps": [ts[i] for i in perm], "weights": [1.0] * len(users), "k": K}
    served = _serve(out / "saved_model/1", [{"signature": "update_and_recommend", "inputs": {**inputs, "exclude_seen": f}}
                                            for f in (False, True)], tmp_path / "client")
    _, _, state, _ = load_state(updated)
    index = {u: i for i, u in enumerate(_user_ids(updated))}
    for flag, result in zip((False, True), served["results"]):
        want = _recommend_all(updated, tmp_path, *(["--exclude-seen"] if flag else []))
        assert sorted(result["user_ids"]) == sorted(set(users))
        assert sum(result["events_applied"]) == len(users) and sum(result["unknown_item_events"]) == 0
        for lane, uid in enumerate(result["user_ids"]):
            _assert_lists_equal(result["item_ids"][lane], result["scores"][lane], want[uid], f"{uid} seen={flag}")
            row = index[uid]
            np.testing.assert_allclose(result["user_vector"][lane], state.U[row], rtol=1e-5, atol=1e-6, err_msg=uid)
            np.testing.assert_allclose(np.asarray(result["slots"][lane]), state.slots[:, row], rtol=1e-5, atol=1e-7,
                                       err_msg=uid)
            assert result["count"][lane] == state.count[row] and result["last_ts"][lane] == state.last_ts[row]
            assert result["recent"][lane] == state.recent[row].tolist()
        assert [result["known_user"][i] for i, u in enumerate(result["user_ids"]) if u.startswith("newuser")] == [False] * 3


def test_update_and_recommend_skips_and_counts_unknown_items_and_keeps_the_export_unchanged(world, tmp_path):
    work, _, out, _ = world
    uid = _user_ids(work)[0]
    item = pq.read_table(work / "items.parquet").column("item_id").to_pylist()[0]
    ts = json.loads((out / "export.json").read_text())["watermark"]["last_ts"] + 60
    event = {"user_ids": [uid, uid], "item_ids": ["no-such-item", item], "timestamps": [ts, ts + 1],
             "weights": [1.0, 1.0], "k": K, "exclude_seen": False}
    before = {"signature": "recommend", "inputs": {"user_ids": [uid], "k": K, "exclude_seen": False}}
    served = _serve(out / "saved_model/1", [before, {"signature": "update_and_recommend", "inputs": event}, before],
                    tmp_path / "client")
    first, upd, after = served["results"]
    assert upd["events_applied"] == [1] and upd["unknown_item_events"] == [1]
    from dyembed.replay.state import load_state

    _, _, state, _ = load_state(work)
    assert upd["count"] == [int(state.count[0]) + 1] and upd["last_ts"] == [ts + 1]
    assert first == after  # stateless: the request changed nothing in the model


def test_saved_model_cli_lists_the_signatures(world):
    cli = Path(sys.executable).parent / "saved_model_cli"
    if not cli.exists():
        pytest.skip("saved_model_cli is not installed in this environment")
    _, _, out, _ = world
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([str(cli), "show", "--dir", str(out / "saved_model/1"), "--all"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("recommend", "update_and_recommend", "embed_items"):
        assert f"signature_def['{name}']" in proc.stdout
    for name in ("user_ids", "item_ids", "timestamps", "weights", "k", "exclude_seen", "features"):
        assert f"inputs['{name}']" in proc.stdout


def test_ann_tables_dot_product_is_the_score_without_the_repeat_term(world):
    from dyembed.export.tables import load_tables
    from dyembed.replay.scoring import _sigmoid, score_users

    work, _, out, _ = world
    t = load_tables(work)
    users = pq.read_table(out / "ann/users.parquet").sort_by("user_idx")
    items = pq.read_table(out / "ann/items.parquet").sort_by("item_idx")
    assert users.column("user_id").to_pylist() == _user_ids(work)
    Uq = np.stack(users.column("vector").to_numpy(zero_copy_only=False))
    Iv = np.stack(items.column("vector").to_numpy(zero_copy_only=False))
    assert Uq.shape == (30, 9) and Iv.shape == (40, 9)
    cold = np.asarray(users.column("cold_start").to_pylist())
    st = t.users
    U = np.where(cold[:, None], t.theta.u0[None, :], st.U)
    recent = np.where(cold[:, None], -1, st.recent)
    count = np.where(cold, 0, st.count)
    want = score_users(t.theta, t.V, U, recent, count)
    # β h from the `recent` column (most recent first: age 0, 1, …)
    gamma = _sigmoid(t.theta.logit_repeat_decay)
    h = np.zeros_like(want)
    for row, ring in enumerate(users.column("recent").to_pylist()):
        for age, item in enumerate(ring):
            h[row, item] += float(t.theta.beta) * gamma**age
    np.testing.assert_allclose(Uq @ Iv.T + h, want, rtol=1e-4, atol=1e-4)
    if (out / "ann/items.faiss").exists():
        import faiss

        index = faiss.read_index(str(out / "ann/items.faiss"))
        _, top = index.search(np.ascontiguousarray(Uq[:3], np.float32), 3)
        np.testing.assert_array_equal(top, np.argsort(-(Uq[:3] @ Iv.T), axis=1, kind="stable")[:, :3])


def test_embed_items_gives_the_text_only_vectors_of_new_items(world):
    from dyembed.envcheck import import_tensorflow
    from dyembed.export.tables import load_tables
    from dyembed.replay.io import load_features

    work, _, out, _ = world
    tf = import_tensorflow()
    t = load_tables(work)
    X = load_features(work)  # L2-normalised; the model normalises raw features itself
    raw = X[:7] * np.arange(1, 8, dtype=np.float32)[:, None]
    got = tf.saved_model.load(str(out / "saved_model/1")).signatures["embed_items"](features=tf.constant(raw))
    np.testing.assert_allclose(got["vectors"].numpy(), X[:7] @ t.theta.P, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["bias"].numpy(), np.median(t.theta.b), rtol=1e-6)
    np.testing.assert_allclose(got["ann_item_vectors"].numpy()[:, -1], np.median(t.theta.b), rtol=1e-6)
