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
    assert manifest["signatures"] == ["recommend", "update_and_recommend", "update_from_states", "embed_items"]
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
        want = _recommend_all(work, tmp_path, "--mask-seen", "on" if flag else "off")
        assert result["known_user"] == [True] * (len(users) - 1) + [False]
        for row, uid in enumerate(users[:-1]):
            _assert_lists_equal(result["item_ids"][row], result["scores"][row], want[uid], f"{uid} seen={flag}")
        # an unknown user gets the cold-start list: recommend's for an unknown id
        cold_file = tmp_path / f"cold-{flag}.parquet"
        cold = runner.invoke(app, ["recommend", str(work), "--user", "no-such-user", "--allow-unknown", "--k", str(K), "--out",
                                   str(cold_file), "--mask-seen", "on" if flag else "off"])
        assert cold.exit_code == 0, cold.output
        rows = pq.read_table(cold_file).to_pylist()
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


def _update_then_serve(work: Path, raw: Path, out: Path, tmp_path: Path, flags=(False, True)):
    """`dyembed update` on a copy of `work` with raw/new.csv, and the SavedModel exported before it
    given the same window (shuffled: the model sorts each user's events by time)."""
    updated = tmp_path / "work"
    shutil.copytree(work, updated)
    res = runner.invoke(app, ["update", str(updated), "--new-log", str(raw / "new.csv"), "--json"])
    assert res.exit_code == 0, res.output
    start = json.loads((out / "export.json").read_text())["watermark"]["rows"]
    users, items, ts = _window(updated, start)
    assert len(users) > 100 and any(u.startswith("newuser") for u in users)
    perm = np.random.default_rng(0).permutation(len(users))
    inputs = {"user_ids": [users[i] for i in perm], "item_ids": [items[i] for i in perm],
              "timestamps": [ts[i] for i in perm], "weights": [1.0] * len(users), "k": K}
    served = _serve(out / "saved_model/1", [{"signature": "update_and_recommend", "inputs": {**inputs, "exclude_seen": f}}
                                            for f in flags], tmp_path / "client")
    return updated, (users, items, ts), served["results"]


def _assert_states_equal(result, state, index, rtol=1e-5) -> None:
    for lane, uid in enumerate(result["user_ids"]):
        row = index[uid]
        np.testing.assert_allclose(result["user_vector"][lane], state.U[row], rtol=rtol, atol=rtol, err_msg=uid)
        np.testing.assert_allclose(np.asarray(result["slots"][lane]).reshape(-1, state.U.shape[1]), state.slots[:, row],
                                   rtol=rtol, atol=rtol * 0.01, err_msg=uid)
        assert result["count"][lane] == state.count[row] and result["last_ts"][lane] == state.last_ts[row], uid
        if state.recent is not None:
            assert result["recent"][lane] == state.recent[row].tolist(), uid


def test_update_and_recommend_equals_dyembed_update_then_recommend(world, tmp_path):
    from dyembed.replay.state import load_state

    work, raw, out, _ = world
    updated, (users, _, _), results = _update_then_serve(work, raw, out, tmp_path)
    _, _, state, _ = load_state(updated)
    index = {u: i for i, u in enumerate(_user_ids(updated))}
    for flag, result in zip((False, True), results):
        want = _recommend_all(updated, tmp_path, "--mask-seen", "on" if flag else "off")
        assert sorted(result["user_ids"]) == sorted(set(users))
        assert sum(result["events_applied"]) == len(users) and sum(result["unknown_item_events"]) == 0
        assert sum(result["late_events"]) == 0
        for lane, uid in enumerate(result["user_ids"]):
            _assert_lists_equal(result["item_ids"][lane], result["scores"][lane], want[uid], f"{uid} seen={flag}")
        _assert_states_equal(result, state, index)
        assert [result["known_user"][i] for i, u in enumerate(result["user_ids"]) if u.startswith("newuser")] == [False] * 3


def test_update_from_states_continues_from_returned_states(world, tmp_path):
    """A serving system that keeps states, not events: the window's first half through
    update_and_recommend, its second half with the returned states through update_from_states —
    the same states and lists as `dyembed update` of the whole window + `dyembed recommend`."""
    from dyembed.replay.state import load_state

    work, raw, out, summary = world
    updated = tmp_path / "work"
    shutil.copytree(work, updated)
    assert runner.invoke(app, ["update", str(updated), "--new-log", str(raw / "new.csv")]).exit_code == 0
    users, items, ts = _window(updated, summary["watermark"]["rows"])
    half = len(users) // 2
    part = lambda lo, hi: {"user_ids": users[lo:hi], "item_ids": items[lo:hi], "timestamps": ts[lo:hi],  # noqa: E731
                           "weights": [1.0] * (hi - lo), "k": K, "exclude_seen": False}
    (first,) = _serve(out / "saved_model/1", [{"signature": "update_and_recommend", "inputs": part(0, half)}],
                      tmp_path / "c1")["results"]
    states = {"state_user_ids": first["user_ids"], "user_vector": first["user_vector"], "slots": first["slots"],
              "count": first["count"], "last_ts": first["last_ts"], "recent": first["recent"]}
    (second,) = _serve(out / "saved_model/1", [{"signature": "update_from_states",
                                                "inputs": {**part(half, len(users)), **states}}], tmp_path / "c2")["results"]
    assert sorted(second["user_ids"]) == sorted(set(users))  # the given states' users are answered too
    _, _, state, _ = load_state(updated)
    _assert_states_equal(second, state, {u: i for i, u in enumerate(_user_ids(updated))})
    want = _recommend_all(updated, tmp_path, "--mask-seen", "off")
    for lane, uid in enumerate(second["user_ids"]):
        _assert_lists_equal(second["item_ids"][lane], second["scores"][lane], want[uid], uid)


@pytest.mark.slow  # two more trained worlds (~2 min each on a loaded 2-core machine)
@pytest.mark.parametrize("model", [
    dict(rule="sgd", history=0, repeat=False, context=False, decay_half_life_days=0.0, l2_prior=0.0, clip_norm=0.0),
    dict(rule="adagrad", per_dim_step=True, history=3, repeat=True, context=False, user_init="zero"),
], ids=["sgd-plain", "adagrad-repeat-zero-init"])
def test_update_and_recommend_equals_update_for_other_rules(model, tmp_path):
    from dyembed.replay.state import load_state

    work, raw = _build(tmp_path / "w", **model)
    out = tmp_path / "export"
    assert runner.invoke(app, ["export", str(work), "--out", str(out)]).exit_code == 0
    updated, _, (result,) = _update_then_serve(work, raw, out, tmp_path, flags=(True,))
    _, _, state, _ = load_state(updated)
    _assert_states_equal(result, state, {u: i for i, u in enumerate(_user_ids(updated))})
    want = _recommend_all(updated, tmp_path, "--mask-seen", "on")
    for lane, uid in enumerate(result["user_ids"]):
        _assert_lists_equal(result["item_ids"][lane], result["scores"][lane], want[uid], uid)


def test_sampled_loss_update_is_the_rule_with_the_models_own_negatives(tmp_path):
    """With the sampled loss the model draws each step's shared negatives itself (stateless, from
    the sampler Q; `dyembed update` draws others from the same law): its states equal the float64
    reference replay given those very negatives, and recommend still equals dyembed recommend."""
    from dyembed.envcheck import import_tensorflow
    from dyembed.export.tables import load_tables
    from dyembed.replay.rules_reference import ReferenceParams, reference_replay
    from dyembed.replay.state import UserState

    work, raw = _build(tmp_path / "w", loss="sampled", num_negatives=8)
    out = tmp_path / "export"
    assert runner.invoke(app, ["export", str(work), "--out", str(out)]).exit_code == 0
    t = load_tables(work)
    updated, (users, items, ts), (result,) = _update_then_serve(work, raw, out, tmp_path, flags=(False,))
    # the window as the reference replays it: rows in time order, users/items by index (new users appended)
    lanes = {u: i for i, u in enumerate(result["user_ids"])}
    item_index = {str(i): n for n, i in enumerate(t.item_ids)}
    known = {str(u): n for n, u in enumerate(t.user_ids)}
    extra = [u for u in result["user_ids"] if u not in known]
    rows = {**known, **{u: t.n_users + n for n, u in enumerate(extra)}}
    u_idx = np.array([rows[u] for u in users])
    i_idx = np.array([item_index[i] for i in items])
    step = np.zeros(len(users), np.int64)
    seen: dict[str, int] = {}
    for e, u in enumerate(users):
        step[e] = seen.get(u, 0)
        seen[u] = step[e] + 1
    tf = import_tensorflow()
    logq = tf.constant(np.asarray(t.theta.logq, np.float32))[None, :]
    draws = {s: tf.random.stateless_categorical(logq, 8, seed=tf.constant([t.seed, s], tf.int64))[0].numpy()
             for s in range(int(step.max()) + 1)}
    negatives = np.stack([draws[s] for s in step])
    n_all = t.n_users + len(extra)
    start = t.users.grown(n_all, UserState.fresh(n_all, t.dim, t.spec.n_slots, init=t.spec.init, u0=t.theta.u0,
                                                 history=t.history))
    params = ReferenceParams.from_theta(t.theta, np.zeros((t.n_items, t.feature_dim), np.float32), V=t.V)
    ref, _, _, _ = reference_replay(params, t.spec, start, u_idx, i_idx, np.asarray(ts), negatives=negatives)
    _assert_states_equal(result, ref, rows, rtol=1e-4)
    assert set(lanes) == set(users)


def test_update_and_recommend_skips_and_counts_unknown_items_and_late_events_and_changes_nothing(world, tmp_path):
    work, _, out, _ = world
    uid = _user_ids(work)[0]
    item = pq.read_table(work / "items.parquet").column("item_id").to_pylist()[0]
    ts = json.loads((out / "export.json").read_text())["watermark"]["last_ts"] + 60
    # one event of an unknown item, one late one (older than the exported log: dropped, data.allow_late)
    event = {"user_ids": [uid, uid, uid], "item_ids": ["no-such-item", item, item], "timestamps": [ts, ts + 1, ts - 120],
             "weights": [1.0, 1.0, 1.0], "k": K, "exclude_seen": False}
    before = {"signature": "recommend", "inputs": {"user_ids": [uid], "k": K, "exclude_seen": False}}
    served = _serve(out / "saved_model/1", [before, {"signature": "update_and_recommend", "inputs": event}, before],
                    tmp_path / "client")
    first, upd, after = served["results"]
    assert upd["events_applied"] == [1] and upd["unknown_item_events"] == [1] and upd["late_events"] == [1]
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
    for name in ("recommend", "update_and_recommend", "update_from_states", "embed_items"):
        assert f"signature_def['{name}']" in proc.stdout
    for name in ("user_ids", "item_ids", "timestamps", "weights", "k", "exclude_seen", "features", "state_user_ids",
                 "user_vector", "slots", "count", "last_ts", "recent"):
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


# ---- the error contract ------------------------------------------------------------------------
def _tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()} \
        if path.is_dir() else ({"": path.read_bytes()} if path.is_file() else {})


def _no_state(work: Path, tmp: Path) -> Path:
    copy = tmp / "nostate"
    shutil.copytree(work, copy)
    for d in copy.glob("state*"):
        shutil.rmtree(d)
    return copy


def _corrupt(work: Path, tmp: Path) -> Path:
    copy = tmp / "corrupt"
    shutil.copytree(work, copy)
    data = bytearray((copy / "state/U.npy").read_bytes())
    data[-1] ^= 0xFF
    (copy / "state/U.npy").write_bytes(bytes(data))
    return copy


def _hashed(work: Path, tmp: Path) -> Path:
    from dyembed.config import Config, apply_mapping
    from dyembed.preprocess.run import preprocess
    import tomllib

    cfg = Config()
    apply_mapping(cfg, tomllib.loads((work / "state/config.toml").read_text()), "config")
    hashed = tmp / "hashed"
    preprocess(hashed, cfg, user_id_salt="Export-test-salt-0123456789")
    return hashed


def _file(tmp: Path) -> Path:
    (tmp / "afile").write_text("keep me")
    return tmp / "afile"


def _full_dir(tmp: Path) -> Path:
    (tmp / "data").mkdir()
    (tmp / "data/precious.txt").write_text("keep me")
    return tmp / "data"


ERRORS = [
    # (case, work dir maker, --out maker, extra flags, exit code, message)
    ("out is a file", None, _file, [], 2, "is a file, not a directory"),
    ("out not empty", None, _full_dir, [], 2, "exists and is not empty (add --force to replace an earlier export)"),
    ("out not an export, --force", None, _full_dir, ["--force"], 2, "is not a dyembed export (no export.json)"),
    ("out is the work dir", None, "work", [], 2, "would hold the work directory"),
    ("no work dir", lambda w, t: t / "missing", None, [], 3, "work directory not found"),
    ("no state", _no_state, None, [], 4, "no trained state"),
    ("corrupt state", _corrupt, None, [], 4, "does not match its checksum"),
    ("hashed user ids", _hashed, None, [], 2, "has hashed user ids (preprocess --hash-user-ids)"),
    ("hashed user ids, --hashed-ids", _hashed, None, ["--hashed-ids"], 4, "no trained state"),
]


@pytest.mark.parametrize("case,make_work,make_out,flags,code,message", ERRORS, ids=[e[0] for e in ERRORS])
def test_bad_inputs_exit_with_one_line_and_write_nothing(world, tmp_path, case, make_work, make_out, flags, code, message):
    work = world[0] if make_work is None else make_work(world[0], tmp_path)
    out = work if make_out == "work" else (tmp_path / "export" if make_out is None else make_out(tmp_path))
    before = _tree(out) if make_out != "work" else None
    res = runner.invoke(app, ["export", str(work), "--out", str(out), *flags])
    assert res.exit_code == code, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr
    if before is not None:
        assert _tree(out) == before
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))


def test_force_replaces_an_earlier_export_and_a_crash_leaves_it_whole(world, tmp_path, monkeypatch):
    from dyembed.export import ann

    work, _, first, _ = world
    out = tmp_path / "export"
    shutil.copytree(first, out)
    stale = tmp_path / ".export.tmp-999999999"  # a temp dir of a run that died
    stale.mkdir()
    res = runner.invoke(app, ["export", str(work), "--out", str(out), "--json"])
    assert res.exit_code == 2 and "--force" in res.stderr
    before = _tree(out)

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ann, "write_tables", crash)
    res = runner.invoke(app, ["export", str(work), "--out", str(out), "--force"])
    assert res.exit_code == 1 and "disk full (simulated)" in res.stderr
    assert _tree(out) == before  # the earlier export, untouched
    assert not list(tmp_path.glob(".export.tmp-*")) and not list(tmp_path.glob(".export.old-*"))
    monkeypatch.undo()
    res = runner.invoke(app, ["export", str(work), "--out", str(out), "--force", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert json.loads((out / "export.json").read_text())["created"] == summary["created"]
    assert (out / "saved_model/1/saved_model.pb").is_file()


def test_without_faiss_the_index_is_skipped_with_a_note(world, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    out = tmp_path / "export"
    res = runner.invoke(app, ["export", str(world[0]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "note: faiss is not installed (pip install 'dyembed[faiss]')" in res.stderr
    assert not (out / "ann/items.faiss").exists() and (out / "ann/items.parquet").is_file()
    assert json.loads((out / "export.json").read_text())["ann"]["faiss"] is None


def test_a_locked_work_dir_exits_4_naming_the_holder(world, tmp_path):
    import textwrap

    work = world[0]
    code = textwrap.dedent(f"""
        import time
        from dyembed.lock import WorkdirLock
        with WorkdirLock({str(work)!r}, command="update"):
            print("locked", flush=True)
            time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        res = runner.invoke(app, ["export", str(work), "--out", str(tmp_path / "export")])
    finally:
        holder.kill()
        holder.wait()
    assert res.exit_code == 4 and res.stderr.startswith("error: ") and "update" in res.stderr, res.stderr
    assert not (tmp_path / "export").exists()
