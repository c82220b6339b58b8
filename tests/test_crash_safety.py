"""Crash safety: kill -9 a running `train --resume` / `update` at random moments; simulated write
errors (disk full). After each: the previous state loads and verifies, and rerunning produces
exactly the state an uninterrupted run produces.

The child process slows every rename in dyembed.replay.state (and optionally everywhere) by a few
ms, so that random kill moments land inside the state swap, the only multi-step write.
"""

from __future__ import annotations

import copy
import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from update_world import copy_world, shared_world

CHILD = textwrap.dedent("""
    import os, sys, time
    slow = float(os.environ["DYEMBED_TEST_SLOW"])
    import dyembed.state_versions as S

    class SlowOs:
        # os for the state swap only: every rename in dyembed.state_versions.install_state_dir takes longer
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def replace(a, b):
            print("swap", flush=True)
            time.sleep(slow)
            os.replace(a, b)
            time.sleep(slow)

    S.os = SlowOs()
    print("started", flush=True)
    from dyembed_cli.app import app
    sys.argv = ["dyembed", "--quiet"] + sys.argv[1:]
    app()
""")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return shared_world(tmp_path_factory)


def _state(work: Path):
    from dyembed.replay.state import load_state

    manifest, theta, users, roles = load_state(work, verify=True)
    return manifest["watermark"], theta, users, roles


def _same_state(a, b) -> None:
    assert a[0] == b[0]
    assert sorted(a[1]) == sorted(b[1])
    for k in a[1]:
        np.testing.assert_array_equal(a[1][k], b[1][k], err_msg=k)
    for name in ("U", "slots", "count", "last_ts"):
        np.testing.assert_array_equal(getattr(a[2], name), getattr(b[2], name), err_msg=name)
    np.testing.assert_array_equal(a[3], b[3])


def _all_versions_verify(work: Path) -> None:
    from dyembed.state_versions import verify_states

    rows = verify_states(work)
    assert all(r["ok"] for r in rows), rows


def _appended(world, dest: Path) -> tuple[Path, object]:
    """A copy of the world with new.csv appended (preprocess + encode), not yet replayed."""
    from dyembed.encode.run import encode
    from dyembed.preprocess.run import preprocess

    work = copy_world(world, dest)
    cfg = copy.deepcopy(world[2])
    cfg.data.events = str(world[1] / "new.csv")
    preprocess(work, cfg, append=True)
    encode(work, cfg)
    return work, cfg


def _kill_at_random(args: list[str], rng: random.Random, *, span: float, slow: float = 0.02,
                    in_swap: float = 0.5) -> str:
    """Start the CLI in a child, SIGKILL it at a random moment; returns when it died / finished."""
    env = dict(os.environ, DYEMBED_TEST_SLOW=str(slow))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "started"
        if rng.random() < in_swap:
            # these kills land inside the state swap: after its first rename began
            line = proc.stdout.readline().strip()
            time.sleep(rng.uniform(0.0, 6 * slow))
            where = f"swap+{line}"
        else:
            time.sleep(rng.uniform(0.0, span))
            where = "anywhere"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=120)
        proc.stdout.close()
        proc.stderr.close()
    return where


def _train_kill_loop(world, tmp_path: Path, reference, kills: int, seed: int, in_swap: float = 0.5) -> None:
    from dyembed.replay.train import train

    cfg = world[2]
    before = _state(world[0])  # append + encode leave the state as it was
    rng = random.Random(seed)
    for k in range(kills):
        work, _ = _appended(world, tmp_path / f"kill{k}")
        where = _kill_at_random(["train", str(work), "--resume"], rng, span=8.0, in_swap=in_swap)
        now = _state(work)  # loads and verifies: the old state, or the completed new one
        assert now[0] in (before[0], reference[0]), where
        _same_state(now, before if now[0] == before[0] else reference)
        _all_versions_verify(work)
        if now[0] == before[0]:
            train(work, cfg, resume=True)
        _same_state(_state(work), reference)


def test_kill_train_resume_a_few_times(world, tmp_path, resumed_reference):
    # the default tier aims both kills at the state swap (the moment that matters); the slow tier
    # also kills at random moments of the whole run
    _train_kill_loop(world, tmp_path, resumed_reference, kills=2, seed=1, in_swap=1.0)


@pytest.mark.slow
def test_kill_train_resume_ten_times(world, tmp_path, resumed_reference):
    _train_kill_loop(world, tmp_path, resumed_reference, kills=10, seed=2)


def _update_kill_loop(world, tmp_path: Path, kills: int, seed: int) -> None:
    from dyembed.update import update

    raw, cfg = world[1], world[2]
    ref = copy_world(world, tmp_path / "ref")
    before = _state(ref)
    update(ref, cfg, new_log=raw / "new.csv")
    reference = _state(ref)
    rng = random.Random(seed)
    for k in range(kills):
        work = copy_world(world, tmp_path / f"kill{k}")
        where = _kill_at_random(["update", str(work), "--new-log", str(raw / "new.csv")], rng, span=10.0)
        now = _state(work)
        assert now[0] in (before[0], reference[0]), where
        _all_versions_verify(work)
        summary = update(work, cfg, new_log=raw / "new.csv")
        assert summary["state_version"] == 2, where
        _same_state(_state(work), reference)


@pytest.mark.slow
def test_kill_update_ten_times(world, tmp_path):
    _update_kill_loop(world, tmp_path, kills=10, seed=4)


# --------------------------------------------------------------------------- write errors


def _disk_full_after(n_ok: int):
    """An atomic_path that lets `n_ok` files through, then fails like a full disk."""
    from dyembed import artefacts

    calls = {"n": 0}
    real = artefacts.atomic_path

    def atomic_path(target):
        calls["n"] += 1
        if calls["n"] > n_ok:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        return real(target)

    return atomic_path


@pytest.fixture(scope="module")
def resumed_reference(world, tmp_path_factory):
    """The state an uninterrupted `train --resume` of the appended world produces."""
    from dyembed.replay.train import train

    work, cfg = _appended(world, tmp_path_factory.mktemp("resumed_reference"))
    train(work, cfg, resume=True)
    return _state(work)


# files of the state write (protocol none: no eval/ snapshot): U, slots, count, last_ts (.npy),
# theta.npz, config.toml, manifest.json
@pytest.mark.parametrize("n_ok", [0, 3, 5, 6])
def test_disk_full_while_writing_the_state_leaves_the_previous_state(world, tmp_path, monkeypatch, n_ok, resumed_reference):
    from dyembed import artefacts
    from dyembed.replay import state as state_mod
    from dyembed.replay.train import train

    work, cfg = _appended(world, tmp_path / "w")
    before = _state(work)
    failing = _disk_full_after(n_ok)
    monkeypatch.setattr(state_mod, "atomic_path", failing)  # .npy / .npz files
    monkeypatch.setattr(artefacts, "atomic_path", failing)  # config.toml, manifest.json
    with pytest.raises(OSError) as info:
        train(work, cfg, resume=True)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    _same_state(_state(work), before)
    assert not list(work.glob("state.tmp-*"))  # no half-written directory left behind
    train(work, cfg, resume=True)  # the disk has room again: the run completes normally
    _same_state(_state(work), resumed_reference)


def test_a_failing_rename_in_the_swap_leaves_a_loadable_state(world, tmp_path, monkeypatch):
    """The swap's second rename (new dir → state/) fails: state/ is gone for a moment, and loading
    falls back to state.prev/, which is the old state."""
    from dyembed import state_versions as versions_mod
    from dyembed.replay.train import train

    work, cfg = _appended(world, tmp_path / "w")
    before = _state(work)
    real = os.replace
    calls = {"n": 0}

    class FailingOs:
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def replace(a, b):
            calls["n"] += 1
            if Path(a).name.startswith("state.tmp-"):
                raise OSError(errno.EIO, os.strerror(errno.EIO), str(a))
            real(a, b)

    monkeypatch.setattr(versions_mod, "os", FailingOs())
    with pytest.raises(OSError):
        train(work, cfg, resume=True)
    monkeypatch.undo()
    _same_state(_state(work), before)
