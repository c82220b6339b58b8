"""One writer per work directory: a second run fails at once (exit 4) or waits; dead holders don't wedge."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import time

import pytest

from dyembed.errors import EXIT_STATE, StateError
from dyembed.lock import LOCK_NAME, WorkdirLock


def _hold_lock(workdir, seconds):
    code = textwrap.dedent(f"""
        import sys, time
        from dyembed.lock import WorkdirLock
        with WorkdirLock({str(workdir)!r}, command="holder"):
            print("locked", flush=True)
            time.sleep({seconds})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_run_fails_at_once_naming_the_holder(tmp_path):
    holder = _hold_lock(tmp_path, 30)
    try:
        started = time.monotonic()
        with pytest.raises(StateError) as info:
            WorkdirLock(tmp_path, command="train").acquire()
        assert time.monotonic() - started < 5
        assert info.value.exit_code == EXIT_STATE
        assert f"is locked by pid {holder.pid}" in str(info.value) and "(holder, since" in str(info.value)
        with pytest.raises(StateError, match="after waiting 0.3 s"):
            WorkdirLock(tmp_path, wait=0.3).acquire()
    finally:
        holder.kill()
        holder.wait()


def test_wait_gets_the_lock_when_the_holder_finishes(tmp_path):
    holder = _hold_lock(tmp_path, 0.5)
    with WorkdirLock(tmp_path, wait=20):
        data = json.loads((tmp_path / LOCK_NAME).read_text())
        assert data["command"] == ""
    holder.wait()


def test_killed_holder_never_wedges_and_is_reported(tmp_path, caplog):
    holder = _hold_lock(tmp_path, 60)
    holder.kill()  # SIGKILL: no cleanup ran, the lock file still names the dead pid
    holder.wait()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid
    with caplog.at_level(logging.WARNING, logger="dyembed.lock"):
        with WorkdirLock(tmp_path, command="update"):
            pass
    assert f"taking over the stale lock of pid {holder.pid}" in caplog.text and "not running" in caplog.text


def test_clean_release_leaves_an_empty_lock_file(tmp_path):
    with WorkdirLock(tmp_path, command="x"):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["command"] == "x"
    assert (tmp_path / LOCK_NAME).read_text() == ""
    with WorkdirLock(tmp_path):  # and it can be taken again
        pass


def test_reentrant_within_one_process(tmp_path):
    """update → train: a step run inside another step of the same process re-enters the lock."""
    with WorkdirLock(tmp_path, command="update"):
        with WorkdirLock(tmp_path, command="train"):
            pass
        assert json.loads((tmp_path / LOCK_NAME).read_text())["command"] == "update"  # still held
    assert (tmp_path / LOCK_NAME).read_text() == ""


def test_failed_run_in_a_fresh_directory_leaves_nothing(tmp_path):
    workdir = tmp_path / "fresh"
    with pytest.raises(RuntimeError):
        with WorkdirLock(workdir):
            raise RuntimeError("step failed before writing anything")
    assert not workdir.exists()
    with WorkdirLock(workdir):
        (workdir / "events.parquet").write_text("x")
    assert sorted(p.name for p in workdir.iterdir()) == [LOCK_NAME, "events.parquet"]
