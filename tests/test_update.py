"""`dyembed update`: one-command incremental update, idempotence, honest window metrics, locking."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from typer.testing import CliRunner

from dyembed.artefacts import sha256_file
from dyembed.errors import StateError
from dyembed_cli.app import app
from update_world import copy_world, shared_world

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return shared_world(tmp_path_factory)


def _state_digest(work):
    return {p.relative_to(work).as_posix(): sha256_file(p) for p in sorted(work.glob("state*/*")) if p.is_file()}


def test_update_appends_encodes_resumes_and_scores_the_window(world, tmp_path):
    from dyembed.replay.state import load_state
    from dyembed.update import update

    work = copy_world(world, tmp_path)
    raw, cfg = world[1], world[2]
    n_new_rows = sum(1 for _ in open(raw / "new.csv")) - 1
    summary = update(work, cfg, new_log=raw / "new.csv")
    assert summary["status"] == "updated"
    assert summary["events_in"] == n_new_rows == summary["events_added"] + summary["events_rejected"]
    assert summary["events_replayed"] == summary["events_added"] > 0
    assert summary["new_users"] == 3
    assert summary["state_version_before"] == 1 and summary["state_version"] == 2
    manifest, _, users, _ = load_state(work)
    assert manifest["watermark"]["rows"] == summary["watermark"]["rows"] == 960 + summary["events_added"]
    assert users.n_users == summary["users"]
    m = summary["metrics"]
    assert m["events"] == summary["events_added"] and m["users"] == summary["users_updated"]
    for k in cfg.evaluate.ks:
        assert 0.0 <= m["per_event"][f"ndcg@{k}"] <= m["per_event"][f"recall@{k}"] <= 1.0
    assert set(summary["durations"]) == {"preprocess", "encode", "train_resume", "total"}
    json.dumps(summary)  # JSON-able


def test_window_ranks_are_prequential_and_match_the_float64_reference(world, tmp_path):
    """The window's ranks come from the one replay `--resume` does: each event ranked with its
    user's state before the event (θ frozen, new users fresh, θ extended to new items). Checked
    against the one-event-at-a-time float64 numpy reference from the stored state, which also
    gives the state --resume must save."""
    from dyembed.preprocess.run import preprocess
    from dyembed.replay.io import load_features, n_users_of, read_events
    from dyembed.replay.model import Model
    from dyembed.replay.rules_reference import ReferenceParams, reference_replay
    from dyembed.replay.spec import RuleSpec
    from dyembed.replay.state import UserState, load_state
    from dyembed.replay.theta import Theta
    from dyembed.replay.train import _extend_theta, resume_with_window_ranks

    work = copy_world(world, tmp_path)
    raw, cfg = world[1], copy.deepcopy(world[2])
    cfg.data.events = str(raw / "new.csv")
    preprocess(work, cfg, append=True)
    manifest, theta, users, _ = load_state(work)
    features = load_features(work)
    theta = _extend_theta(Theta.from_arrays(theta), features)
    new = read_events(work, start_row=manifest["watermark"]["rows"])
    spec = RuleSpec.from_config(cfg.model)
    n_users = n_users_of(work, int(new.user_idx.max()))
    assert n_users > users.n_users  # the window brings new users
    start = users.grown(n_users, UserState.fresh(n_users, users.dim, spec.n_slots, init=spec.init, u0=theta.u0))
    model = Model(features, theta, cfg.model)
    params = ReferenceParams.from_theta(theta, features, V=model.item_matrix())
    ref_state, _, ref_ranks, _ = reference_replay(params, spec, start, new.user_idx, new.item_idx, new.ts,
                                                  weight=new.weight if cfg.model.use_weights else None)

    summary, ranks, window_users = resume_with_window_ranks(work, cfg)
    assert summary["new_events"] == len(new) == len(ranks) > 0
    np.testing.assert_array_equal(window_users, new.user_idx)
    np.testing.assert_array_equal(ranks, ref_ranks)
    _, _, saved, _ = load_state(work)
    np.testing.assert_allclose(saved.U, ref_state.U, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(saved.count, ref_state.count)
    np.testing.assert_array_equal(saved.last_ts, ref_state.last_ts)


def test_same_file_twice_adds_nothing_and_rewrites_nothing(world, tmp_path):
    work = copy_world(world, tmp_path)
    new = world[1] / "new.csv"
    first = runner.invoke(app, ["update", str(work), "--new-log", str(new), "--json"])
    assert first.exit_code == 0, first.stderr
    before = _state_digest(work)
    events_before = sha256_file(work / "events.parquet")
    second = runner.invoke(app, ["update", str(work), "--new-log", str(new), "--json"])
    assert second.exit_code == 0, second.stderr
    lines = second.stdout.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["status"] == "already_applied" and summary["events_added"] == 0
    assert summary["state_version"] == summary["state_version_before"] == 2
    assert _state_digest(work) == before  # state/ and state.prev/ untouched
    assert sha256_file(work / "events.parquet") == events_before


def test_same_events_in_another_file_are_rejected_as_duplicates(world, tmp_path):
    work = copy_world(world, tmp_path)
    new = world[1] / "new.csv"
    assert runner.invoke(app, ["update", str(work), "--new-log", str(new), "--json"]).exit_code == 0
    other = tmp_path / "again.csv"
    other.write_text(new.read_text() + "\n")  # same rows, different bytes
    res = runner.invoke(app, ["update", str(work), "--new-log", str(other), "--json"])
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["status"] == "nothing_new"
    assert summary["events_added"] == 0 and summary["events_rejected"] == summary["events_in"] > 0
    assert set(summary["rejected"]) <= {"duplicate", "out_of_order"}
    assert summary["state_version"] == 2


def test_rerun_after_a_crash_between_append_and_train_catches_up(world, tmp_path):
    """preprocess --append done, then the run died: the rerun skips the append and finishes."""
    from dyembed.preprocess.run import preprocess
    from dyembed.replay.state import load_state
    from dyembed.update import update

    raw, cfg = world[1], world[2]
    straight = copy_world(world, tmp_path / "a")
    update(straight, cfg, new_log=raw / "new.csv")
    crashed = copy_world(world, tmp_path / "b")
    cfg_new = copy.deepcopy(cfg)
    cfg_new.data.events = str(raw / "new.csv")
    preprocess(crashed, cfg_new, append=True)
    summary = update(crashed, cfg, new_log=raw / "new.csv")
    assert summary["status"] == "already_applied" and summary["events_replayed"] > 0
    a, b = load_state(straight), load_state(crashed)
    assert a[0]["watermark"] == b[0]["watermark"]
    np.testing.assert_array_equal(a[2].U, b[2].U)
    assert all(np.array_equal(a[1][k], b[1][k]) for k in a[1])


def test_cli_json_is_one_line_and_errors_have_exit_codes(world, tmp_path):
    work = copy_world(world, tmp_path)
    res = runner.invoke(app, ["update", str(work), "--new-log", str(tmp_path / "missing.csv"), "--json"])
    assert res.exit_code == 3 and "new events file not found" in res.stderr and res.stdout == ""
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(app, ["update", str(empty), "--new-log", str(world[1] / "new.csv")])
    assert res.exit_code == 4 and "no trained state" in res.stderr
    res = runner.invoke(app, ["update", str(work), "--new-log", str(world[1] / "new.csv"), "--set", "data.allow_late=keep"])
    assert res.exit_code == 2 and "allow_late" in res.stderr
    res = runner.invoke(app, ["update", str(work), "--new-log", str(world[1] / "new.csv")])
    assert res.exit_code == 0, res.stderr
    assert "events added" in res.stdout and "state version" in res.stdout


def test_a_locked_work_dir_exits_4_at_once_or_after_wait(world, tmp_path):
    work = copy_world(world, tmp_path)
    code = textwrap.dedent(f"""
        import time
        from dyembed.lock import WorkdirLock
        with WorkdirLock({str(work)!r}, command="holder"):
            print("locked", flush=True)
            time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        res = runner.invoke(app, ["update", str(work), "--new-log", str(world[1] / "new.csv"), "--json"])
        assert res.exit_code == 4 and f"locked by pid {holder.pid}" in res.stderr and res.stdout == ""
        res = runner.invoke(app, ["update", str(work), "--new-log", str(world[1] / "new.csv"), "--wait", "0.3"])
        assert res.exit_code == 4 and "after waiting 0.3 s" in res.stderr
        # every step that writes to the work dir takes the same lock
        from dyembed.encode.run import encode
        from dyembed.replay.train import train

        for step in (lambda: encode(work, world[2]), lambda: train(work, world[2], resume=True)):
            with pytest.raises(StateError, match=f"locked by pid {holder.pid}"):
                step()
    finally:
        holder.kill()
        holder.wait()
    # the holder died by SIGKILL: its lock is gone, the next run takes over
    res = runner.invoke(app, ["update", str(work), "--new-log", str(world[1] / "new.csv"), "--json"])
    assert res.exit_code == 0, res.stderr


def test_no_user_ids_in_info_logs(world, tmp_path):
    work = copy_world(world, tmp_path)
    res = runner.invoke(app, ["-v", "--log-format", "json", "update", str(work), "--new-log", str(world[1] / "new.csv"), "--json"])
    assert res.exit_code == 0, res.stderr
    ids = {line.split(",")[0] for line in (world[1] / "new.csv").read_text().splitlines()[1:]}
    assert "update" in res.stderr  # info lines were logged …
    for line in res.stderr.splitlines():
        json.loads(line)  # … as JSON lines
        assert not any(uid in line for uid in ids), line  # … without any user id


def test_update_needs_a_trained_state_before_touching_anything(world, tmp_path):
    from dyembed.update import update

    work = copy_world(world, tmp_path)
    import shutil

    shutil.rmtree(work / "state")
    events = sha256_file(work / "events.parquet")
    with pytest.raises(StateError, match="no trained state"):
        update(work, world[2], new_log=world[1] / "new.csv")
    assert sha256_file(work / "events.parquet") == events


def test_artefacts_that_do_not_match_the_manifest_stop_the_update(world, tmp_path):
    """As after a preprocess killed between its renames: events.parquet newer than manifest.json."""
    from dyembed.update import update

    work = copy_world(world, tmp_path)
    data = (work / "events.parquet").read_bytes()
    (work / "events.parquet").write_bytes(data + b"\0" * 10)
    with pytest.raises(StateError, match="events.parquet does not match"):
        update(work, world[2], new_log=world[1] / "new.csv")


def test_new_items_file_adds_and_re_encodes_only_what_changed(world, tmp_path):
    from dyembed.update import update

    work = copy_world(world, tmp_path)
    raw = world[1]
    rows = [json.loads(line) for line in (raw / "items.jsonl").read_text().splitlines() if line.strip()]
    rows[0]["title"] = rows[0]["title"] + " (new edition)"  # a changed text
    rows.append({"item_id": "brand-new-item", "title": "A brand new thing", "description": "never seen before"})
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(r) + "\n" for r in rows))
    log = tmp_path / "day.csv"
    log.write_text("user_id,item_id,timestamp,event\nu000001,brand-new-item,1700000000,click\n"
                   f"u000002,{rows[0]['item_id']},1700000001,click\n")
    summary = update(work, world[2], new_log=log, new_items=items)
    assert summary["events_added"] == 2 and summary["new_items"] == 1
    assert summary["items_encoded"] == 2  # the new item and the changed text, nothing else
    assert summary["metrics"]["events"] == 2
