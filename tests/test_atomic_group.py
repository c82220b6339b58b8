"""Several files replaced as one (dyembed.artefacts.atomic_group): all or none, even across kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from dyembed.artefacts import PENDING_RENAMES, atomic_group, complete_pending_renames
from dyembed.errors import EXIT_STATE, StateError
from dyembed.lock import WorkdirLock, settle_interrupted_writes

NAMES = ("events.parquet", "users.parquet", "manifest.json")


def old_files(work):
    work.mkdir(exist_ok=True)
    for name in NAMES:
        (work / name).write_text(f"old {name}")


def contents(work):
    return {name: (work / name).read_text() for name in NAMES}


def leftovers(work):
    return sorted(p.name for p in work.iterdir() if p.name.endswith(".tmp") or p.name == PENDING_RENAMES)


def write_new(group):
    for name in NAMES:
        group.path(name).write_text(f"new {name}")


def test_success_replaces_every_file_and_leaves_nothing_behind(tmp_path):
    old_files(tmp_path)
    with atomic_group(tmp_path) as group:
        write_new(group)
    assert contents(tmp_path) == {name: f"new {name}" for name in NAMES}
    assert leftovers(tmp_path) == []


def test_an_error_while_writing_keeps_every_old_file(tmp_path):
    old_files(tmp_path)
    with pytest.raises(RuntimeError):
        with atomic_group(tmp_path) as group:
            write_new(group)
            raise RuntimeError("disk full")
    assert contents(tmp_path) == {name: f"old {name}" for name in NAMES}
    assert leftovers(tmp_path) == []


def test_a_crash_between_renames_is_rolled_forward_when_the_lock_is_taken(tmp_path, monkeypatch, caplog):
    """The process dies after the first rename: a mix of old and new files plus the journal; the
    next command that takes the lock finishes the renames (all new), with a warning."""
    old_files(tmp_path)
    real_replace = os.replace
    calls = []

    def dying_replace(src, dst):
        if str(dst).endswith(PENDING_RENAMES):  # the journal itself is written atomically too
            return real_replace(src, dst)
        if calls:
            raise KeyboardInterrupt  # stands for the kill: BaseException, nothing else runs
        calls.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        with atomic_group(tmp_path) as group:
            write_new(group)
    monkeypatch.setattr(os, "replace", real_replace)
    assert contents(tmp_path)["events.parquet"] == "new events.parquet"
    assert contents(tmp_path)["manifest.json"] == "old manifest.json"  # mixed: the journal says what is left
    assert PENDING_RENAMES in leftovers(tmp_path)
    with caplog.at_level("WARNING"), WorkdirLock(tmp_path, command="test"):
        pass
    assert contents(tmp_path) == {name: f"new {name}" for name in NAMES}
    assert leftovers(tmp_path) == []
    assert "completed an interrupted write" in caplog.text and "2 files" in caplog.text


def test_kill_9_in_the_middle_of_the_renames(tmp_path):
    """A real SIGKILL while the renames run (each one slowed down): afterwards the directory is
    either all old or, once settled, all new; never a mix."""
    old_files(tmp_path)
    marker = tmp_path / "renaming"
    code = textwrap.dedent(f"""
        import os, time
        from pathlib import Path
        from dyembed.artefacts import atomic_group
        real = os.replace
        def slow(src, dst):
            real(src, dst)
            if str(dst).endswith({PENDING_RENAMES!r}):
                return
            Path({str(marker)!r}).touch()
            time.sleep(30)
        os.replace = slow
        with atomic_group(Path({str(tmp_path)!r})) as group:
            for name in {NAMES!r}:
                group.path(name).write_text("new " + name)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert marker.exists(), "the child never reached the renames"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    marker.unlink()
    assert contents(tmp_path)["events.parquet"] == "new events.parquet"
    settle_interrupted_writes(tmp_path)  # what evaluate / recommend do first
    assert contents(tmp_path) == {name: f"new {name}" for name in NAMES}
    assert leftovers(tmp_path) == []


def test_settle_leaves_a_live_writers_renames_alone(tmp_path):
    old_files(tmp_path)
    with WorkdirLock(tmp_path, command="writer"):  # a writer in the middle of its renames
        (tmp_path / PENDING_RENAMES).write_text(json.dumps({"renames": [[".x.tmp", "events.parquet"]]}))
        (tmp_path / ".x.tmp").write_text("new")
        code = f"from dyembed.lock import settle_interrupted_writes; settle_interrupted_writes({str(tmp_path)!r})"
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
        assert (tmp_path / PENDING_RENAMES).exists()  # another process holds the lock: untouched
        assert (tmp_path / "events.parquet").read_text() == "old events.parquet"


def test_an_unreadable_journal_is_a_state_error_naming_it(tmp_path):
    old_files(tmp_path)
    (tmp_path / PENDING_RENAMES).write_text("{not json")
    with pytest.raises(StateError, match=PENDING_RENAMES.replace(".", r"\.") + " is unreadable") as info:
        complete_pending_renames(tmp_path)
    assert info.value.exit_code == EXIT_STATE
    assert contents(tmp_path) == {name: f"old {name}" for name in NAMES}


def test_preprocess_append_killed_between_its_renames_is_completed_by_the_next_command(tmp_path, monkeypatch):
    """preprocess --append dies after renaming events.parquet but before manifest.json: the next
    command that takes the lock (here encode) finishes the group, and the outputs match the manifest."""
    from dyembed.config import Config, SynthConfig
    from dyembed.encode.run import encode
    from dyembed.preprocess.run import preprocess
    from dyembed.synth import generate
    from dyembed.update import _check_artefacts
    from update_world import split_log

    raw, work = tmp_path / "raw", tmp_path / "work"
    generate(SynthConfig(users=20, items=30, events=600, topics=3, seed=5, malformed_rows=0), raw)
    split_log(raw)
    cfg = Config()
    cfg.data.format, cfg.data.events, cfg.data.items = "synth", str(raw / "base.csv"), str(raw / "items.jsonl")
    cfg.encode.encoder, cfg.encode.hashing_dim = "hashing", 16
    preprocess(work, cfg)
    old_manifest = (work / "manifest.json").read_text()

    real_replace = os.replace
    renamed = []

    def dying_replace(src, dst):
        if str(dst).endswith(PENDING_RENAMES) or not str(src).endswith(".tmp"):
            return real_replace(src, dst)
        if renamed:
            raise KeyboardInterrupt  # the kill, after the first output was renamed
        renamed.append(os.path.basename(dst))
        real_replace(src, dst)

    cfg.data.events = str(raw / "new.csv")
    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        preprocess(work, cfg, append=True)
    monkeypatch.setattr(os, "replace", real_replace)
    assert renamed == ["rejected.parquet"] and (work / "manifest.json").read_text() == old_manifest
    assert (work / PENDING_RENAMES).is_file()

    encode(work, cfg)  # takes the lock: the interrupted append is completed first
    assert not (work / PENDING_RENAMES).exists()
    manifest = json.loads((work / "manifest.json").read_text())
    assert [r["mode"] for r in manifest["runs"]] == ["full", "append"]
    _check_artefacts(work)  # every output's size matches the new manifest
