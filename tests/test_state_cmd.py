"""`dyembed state list|verify|rollback`: versions, watermarks, checksums; a bad file → exit 4 naming it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dyembed_cli.app import app
from update_world import copy_world, shared_updated_world

runner = CliRunner()


@pytest.fixture(scope="module")
def updated(tmp_path_factory):
    return shared_updated_world(tmp_path_factory)


def test_list_shows_versions_watermarks_and_checksums(updated):
    work = updated[0]
    res = runner.invoke(app, ["state", "list", str(work), "--json"])
    assert res.exit_code == 0, res.stderr
    rows = json.loads(res.stdout)
    assert [r["dir"] for r in rows] == ["state", "state.prev"]
    assert [r["version"] for r in rows] == [2, 1]
    assert rows[0]["watermark"]["rows"] > rows[1]["watermark"]["rows"] == 960
    from dyembed.artefacts import sha256_file

    assert rows[0]["files"]["U.npy"]["sha256"] == sha256_file(work / "state" / "U.npy")
    res = runner.invoke(app, ["state", "list", str(work)])
    assert res.exit_code == 0 and "state.prev" in res.stdout and "sha256" in res.stdout


def test_verify_ok(updated):
    res = runner.invoke(app, ["state", "verify", str(updated[0]), "--json"])
    assert res.exit_code == 0, res.stderr
    assert [r["ok"] for r in json.loads(res.stdout)] == [True, True]


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "manifest", "manifest_truncated"])
def test_a_damaged_state_file_exits_4_naming_it(updated, tmp_path, damage):
    work = copy_world(updated, tmp_path)
    target = work / "state" / "U.npy"
    if damage == "flip":
        data = bytearray(target.read_bytes())
        data[-1] ^= 0x01
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:-7])
    elif damage == "delete":
        target.unlink()
    else:
        target = work / "state" / "manifest.json"
        text = target.read_text()
        target.write_text(text[: len(text) // 2] if damage == "manifest_truncated" else "\x00garbage")
    res = runner.invoke(app, ["state", "verify", str(work)])
    assert res.exit_code == 4
    assert str(target) in res.stderr and res.stderr.startswith("error: ") and "Traceback" not in res.stderr
    # the previous version is still verified fine and listed
    res = runner.invoke(app, ["state", "verify", str(work), "--json"])
    rows = json.loads(res.stdout)
    assert rows[1]["dir"] == "state.prev" and rows[1]["ok"]


def test_damage_in_a_previous_version_is_found_too(updated, tmp_path):
    work = copy_world(updated, tmp_path)
    target = work / "state.prev" / "theta.npz"
    target.write_bytes(target.read_bytes()[:100])
    res = runner.invoke(app, ["state", "verify", str(work)])
    assert res.exit_code == 4 and str(target) in res.stderr


def test_no_state_exits_4(tmp_path):
    for sub in ("list", "verify"):
        res = runner.invoke(app, ["state", sub, str(tmp_path)])
        assert res.exit_code == 4 and "no trained state" in res.stderr


def test_rollback_restores_the_previous_version_and_update_catches_up(updated, tmp_path):
    from dyembed.replay.state import load_state
    from dyembed.update import update

    work = copy_world(updated, tmp_path)
    before = load_state(work)
    res = runner.invoke(app, ["state", "rollback", str(work)])
    assert res.exit_code == 0, res.stderr
    assert "version 1 is current again (was 2)" in res.stderr
    rows = json.loads(runner.invoke(app, ["state", "list", str(work), "--json"]).stdout)
    assert [r["version"] for r in rows] == [1, 2]
    assert load_state(work)[0]["watermark"]["rows"] == 960
    # the next run replays the rows after the restored watermark: the same state as before the rollback
    summary = update(work, updated[2], new_log=updated[1] / "new.csv")
    assert summary["status"] == "already_applied" and summary["events_replayed"] == before[0]["watermark"]["rows"] - 960
    after = load_state(work)
    assert after[0]["watermark"] == before[0]["watermark"]
    np.testing.assert_allclose(after[2].U, before[2].U, rtol=1e-6, atol=1e-7)
    assert summary["state_version"] == 3  # versions only grow, even across a rollback


def test_rollback_to_a_missing_version_exits_4(updated, tmp_path):
    work = copy_world(updated, tmp_path)
    res = runner.invoke(app, ["state", "rollback", str(work), "--to", "7"])
    assert res.exit_code == 4 and "no previous state version 7" in res.stderr


def test_keep_n_previous_versions_and_roll_back_to_the_oldest(tmp_path_factory, tmp_path):
    from update_world import shared_world

    from dyembed.replay.state import load_state

    world = shared_world(tmp_path_factory)
    work = copy_world(world, tmp_path)
    lines = (world[1] / "new.csv").read_text().splitlines()
    header, body = lines[0], lines[1:]
    parts = [body[k * len(body) // 3:(k + 1) * len(body) // 3] for k in range(3)]
    marks = [load_state(work)[0]["watermark"]["rows"]]
    for k, part in enumerate(parts):
        day = tmp_path / f"day{k}.csv"
        day.write_text("\n".join([header, *part]) + "\n")
        res = runner.invoke(app, ["update", str(work), "--new-log", str(day), "--keep", "2", "--json"])
        assert res.exit_code == 0, res.stderr
        marks.append(json.loads(res.stdout)["watermark"]["rows"])
    rows = json.loads(runner.invoke(app, ["state", "list", str(work), "--json"]).stdout)
    assert [r["dir"] for r in rows] == ["state", "state.prev", "state.prev.2"]
    assert [r["version"] for r in rows] == [4, 3, 2]
    assert [r["watermark"]["rows"] for r in rows] == marks[:0:-1]
    assert runner.invoke(app, ["state", "verify", str(work)]).exit_code == 0
    res = runner.invoke(app, ["state", "rollback", str(work), "--to", "2"])
    assert res.exit_code == 0, res.stderr
    rows = json.loads(runner.invoke(app, ["state", "list", str(work), "--json"]).stdout)
    assert rows[0]["version"] == 2 and rows[0]["watermark"]["rows"] == marks[1]
    assert rows[1]["version"] == 4  # the replaced version is the newest previous one
