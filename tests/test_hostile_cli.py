"""Hostile command lines, configs, work dirs and machines (issue 12 §5, §6), table-driven.

Each case copies a trained work dir (tests/update_world.py; protocol none), optionally breaks
something, runs one CLI command and asserts the exit code, the one `error:` line (regex), no
traceback (unless --debug, which must keep the exit code), and that every file of the work dir
is byte-identical afterwards. A few cases run in a subprocess to show that the refusal comes
before TensorFlow is imported (config values, the lock, a damaged state).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dyembed_cli.app import app
from update_world import shared_world

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Env:
    work: Path
    raw: Path
    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    held: list = field(default_factory=list)


@dataclass
class Case:
    name: str
    args: list[str]
    code: int
    message: str
    setup: Callable[[Env], None] | None = None
    check: Callable[[Env], None] | None = None  # after the command (e.g. a victim file untouched)
    debug: bool = False


# --------------------------------------------------------------------------- ways to break things

VICTIM = "victim.txt"
VICTIM_TEXT = "precious\n"


def _victim(env: Env) -> Path:
    path = env.tmp / VICTIM
    path.write_text(VICTIM_TEXT)
    return path


def _victim_intact(env: Env) -> None:
    assert (env.tmp / VICTIM).read_text() == VICTIM_TEXT


def _lock_symlink(env: Env) -> None:
    (env.work / ".dyembed.lock").unlink(missing_ok=True)
    os.symlink(_victim(env), env.work / ".dyembed.lock")


def _lock_dangling_symlink(env: Env) -> None:
    (env.work / ".dyembed.lock").unlink(missing_ok=True)
    os.symlink(env.tmp / "created-through-the-link", env.work / ".dyembed.lock")


def _dangling_not_created(env: Env) -> None:
    assert not (env.tmp / "created-through-the-link").exists()


def _lock_dir(env: Env) -> None:
    (env.work / ".dyembed.lock").unlink(missing_ok=True)
    (env.work / ".dyembed.lock").mkdir()


def _lock_fifo(env: Env) -> None:
    (env.work / ".dyembed.lock").unlink(missing_ok=True)
    os.mkfifo(env.work / ".dyembed.lock")


def _hold_lock(env: Env) -> None:
    """Another process's lock: flock on a separate open file (the kernel does not care that it is
    this process; WorkdirLock's re-entrancy only knows its own locks)."""
    fh = open(env.work / ".dyembed.lock", "a+")
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    env.held.append(fh)


def _truncate(name: str) -> Callable[[Env], None]:
    def setup(env: Env) -> None:
        path = env.work / name
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return setup


def _write(name: str, data: bytes | str) -> Callable[[Env], None]:
    def setup(env: Env) -> None:
        path = env.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return setup


def _truncated_gzip_log(env: Env) -> None:
    import gzip

    data = gzip.compress((env.raw / "new.csv").read_bytes() * 20, mtime=0)
    (env.tmp / "new.csv.gz").write_bytes(data[: len(data) // 2])


def _os_error(target: str, code: int) -> Callable[[Env], None]:
    """Make `target` (module.attr) raise OSError(code) naming a file of the work dir."""
    def setup(env: Env) -> None:
        module, attr = target.rsplit(".", 1)

        def fail(*args, **kwargs):
            raise OSError(code, os.strerror(code), str(env.work / "events.parquet"))
        env.monkeypatch.setattr(f"{module}.{attr}", fail)
    return setup


def _link_artefact(name: str) -> Callable[[Env], None]:
    def setup(env: Env) -> None:
        (env.work / name).unlink()
        os.symlink(_victim(env), env.work / name)
    return setup


def _link_replaced(name: str) -> Callable[[Env], None]:
    def check(env: Env) -> None:
        _victim_intact(env)
        assert not (env.work / name).is_symlink()
    return check


def _no_space_for_synth(env: Env) -> None:
    import collections

    usage = collections.namedtuple("usage", "total used free")
    env.monkeypatch.setattr("shutil.disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))


def _nothing_in(name: str) -> Callable[[Env], None]:
    def check(env: Env) -> None:
        assert not (env.tmp / name).exists() or not any((env.tmp / name).iterdir())
    return check


def _synth_disk_full(env: Env) -> None:
    import dyembed.synth as synth

    real = synth._item_texts

    def items_then_full(*args, **kwargs):
        yield from real(*args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(env.tmp / "world" / "events.csv"))
    env.monkeypatch.setattr(synth, "_item_texts", items_then_full)


def _file(name: str) -> Callable[[Env], None]:
    return _write(name, "not a directory\n")


def _file_unchanged(name: str) -> Callable[[Env], None]:
    def check(env: Env) -> None:
        assert (env.tmp / name).read_text() == "not a directory\n"
    return check


def _dir(name: str) -> Callable[[Env], None]:
    return lambda env: (env.tmp / name).mkdir(parents=True, exist_ok=True)


# --------------------------------------------------------------------------- the table

W, T, R = "{w}", "{t}", "{raw}"
UPD = ["update", W, "--new-log", f"{R}/new.csv"]
BAD_VALUE = r"Invalid value for {}"
CFG = r"config key '{}'"
LOCK = r"lock file .*\.dyembed\.lock is "
CASES = [
    # ---- usage: ranges and types of every option, before any work (exit 2)
    Case("update --keep 0", UPD + ["--keep", "0"], 2, BAD_VALUE.format("--keep") + r": must be >= 1"),
    Case("update --keep -1", UPD + ["--keep", "-1"], 2, BAD_VALUE.format("--keep")),
    Case("update --keep x", UPD + ["--keep", "x"], 2, r"Invalid value for '--keep': Input should be a valid integer"),
    Case("update --wait -5", UPD + ["--wait", "-5"], 2, BAD_VALUE.format("--wait") + r": must be a number of seconds >= 0"),
    Case("update --wait nan", UPD + ["--wait", "nan"], 2, BAD_VALUE.format("--wait") + r".*got nan"),
    Case("update --wait inf", UPD + ["--wait", "inf"], 2, BAD_VALUE.format("--wait") + r".*got inf"),
    Case("state rollback --wait -1", ["state", "rollback", W, "--wait", "-1"], 2, BAD_VALUE.format("--wait")),
    Case("state rollback --wait nan", ["state", "rollback", W, "--wait", "nan"], 2, BAD_VALUE.format("--wait")),
    Case("state rollback --to 0", ["state", "rollback", W, "--to", "0"], 2, BAD_VALUE.format("--to")),
    Case("train --protocol bogus", ["train", W, "--protocol", "bogus"], 2, BAD_VALUE.format("--protocol")),
    Case("train --device tpu", ["train", W, "--device", "tpu"], 2, BAD_VALUE.format("--device")),
    Case("an unknown option", ["train", W, "--bogus"], 2, r"No such option: --bogus; see `.* train --help`"),
    Case("a missing argument", ["train"], 2, r"Missing argument"),
    Case("update without --new-log", ["update", W], 2, r"Missing option '--new-log'"),
    Case("--log-format xml", ["--log-format", "xml", "state", "list", W], 2, r"must be text or json"),
    Case("evaluate --test-start not a date", ["evaluate", W, "--test-start", "someday"], 2, BAD_VALUE.format("--test-start")),
    Case("train --epochs -1", ["train", W, "--epochs", "-1"], 2, CFG.format("train.epochs")),
    Case("evaluate --k 0", ["evaluate", W, "--k", "0"], 2, r"Invalid value for '--k': Input should be greater than or equal to 1"),
    Case("evaluate --test-fraction 1.5", ["evaluate", W, "--test-fraction", "1.5"], 2, CFG.format("evaluate.test_fraction")),
    Case("encode --batch-size 0", ["encode", W, "--batch-size", "0"], 2, CFG.format("encode.batch_size")),
    Case("synth --events 10^11", ["synth", "--out", f"{T}/s", "--events", "100000000000"], 2, CFG.format("synth.events") + r".*<= 1e\+09",
         check=_nothing_in("s")),
    Case("synth --users 0", ["synth", "--out", f"{T}/s", "--users", "0"], 2, CFG.format("synth.users"), check=_nothing_in("s")),
    # ---- config values (--set, --config): finite and in range, before any work (exit 2)
    *[Case(f"--set {kv}", ["train", W, "--set", kv], 2, CFG.format(re.escape(kv.split("=")[0])) + rest)
      for kv, rest in [("model.dim=0", r".*>= 1; got 0"), ("model.dim=-1", r".*got -1"), ("model.dim=1.5", r".*must be an integer"),
                       ("model.step_size=nan", r".*finite"), ("model.step_size=inf", r".*finite"), ("model.step_size=-1", r".*> 0"),
                       ("train.lr=nan", r".*finite"), ("runtime.lock_wait=nan", r".*finite"), ("runtime.keep_states=0", r".*>= 1"),
                       ("evaluate.test_fraction=1", r".*< 1"), ("data.chunk_rows=0", r".*>= 1"), ("model.temperature=0", r".*> 0"),
                       ("train.batch_size='big'", r".*must be an integer")]],
    Case("--set an unknown section", ["train", W, "--set", "bogus.key=1"], 2, r"unknown config section 'bogus'"),
    Case("--set an unknown key", ["train", W, "--set", "model.bogus=1"], 2, r"unknown config key 'model\.bogus'"),
    Case("--set without a value", ["train", W, "--set", "model.dim"], 2, r"--set expects section\.key=value"),
    Case("--config with step_size = inf", ["train", W, "--config", f"{T}/bad.toml"], 2, CFG.format(r"model\.step_size"),
         setup=_write("bad.toml", "[model]\nstep_size = inf\n")),
    Case("--config not TOML", ["train", W, "--config", f"{T}/bad.toml"], 2, r"is not valid TOML", setup=_write("bad.toml", "[model\n")),
    # ---- outputs checked before any work (exit 2)
    Case("synth --out an existing file", ["synth", "--out", f"{T}/afile"], 2, r"--out .*afile exists and is not a directory",
         setup=_file("afile"), check=_file_unchanged("afile")),
    Case("demo --out an existing file", ["demo", "--out", f"{T}/afile"], 2, r"--out .*afile exists and is not a directory",
         setup=_file("afile"), check=_file_unchanged("afile")),
    Case("evaluate --json-file a directory", ["evaluate", W, "--json-file", f"{T}/adir"], 2, r"--json-file .*adir is a directory", setup=_dir("adir")),
    Case("evaluate --dump-ranks a directory", ["evaluate", W, "--dump-ranks", f"{T}/adir"], 2, r"--dump-ranks .*adir is a directory",
         setup=_dir("adir")),
    Case("evaluate --plot a directory", ["evaluate", W, "--plot", f"{T}/adir"], 2, r"--plot .*adir is a directory", setup=_dir("adir")),
    Case("train --json-file a directory", ["train", W, "--json-file", f"{T}/adir"], 2, r"--json-file .*adir is a directory", setup=_dir("adir")),
    Case("train --tensorboard an existing file", ["train", W, "--tensorboard", f"{T}/afile"], 2, r"--tensorboard .*afile exists",
         setup=_file("afile")),
    Case("encode --json-file a directory", ["encode", W, "--json-file", f"{T}/adir"], 2, r"--json-file .*adir is a directory", setup=_dir("adir")),
    Case("evaluate --json-file under a file", ["evaluate", W, "--json-file", f"{T}/afile/report.json"], 2, r"afile is not a directory",
         setup=_file("afile")),
    # ---- inputs and state (exit 3 / 4), the work dir untouched
    Case("train --resume on a truncated events.parquet", ["train", W, "--resume"], 4, r"cannot read .*events\.parquet",
         setup=_truncate("events.parquet")),
    Case("update on a truncated events.parquet", UPD, 4, r"events\.parquet", setup=_truncate("events.parquet")),
    Case("state verify on a truncated U.npy", ["state", "verify", W], 4, r"U\.npy", setup=_truncate("state/U.npy")),
    Case("update with a truncated gzip log", ["update", W, "--new-log", f"{T}/new.csv.gz"], 3, r"new\.csv\.gz is not a complete gzip file",
         setup=_truncated_gzip_log),
    Case("update with an empty log", ["update", W, "--new-log", f"{T}/empty.csv"], 3, r"empty", setup=_write("empty.csv", "")),
    Case("update with a directory as the log", ["update", W, "--new-log", f"{T}/adir"], 3, r"adir", setup=_dir("adir")),
    Case("update with a missing log", ["update", W, "--new-log", f"{T}/nope.csv"], 3, r"not found"),
    Case("train on an empty directory", ["train", f"{T}/adir"], 3, r"item embeddings .*not found", setup=_dir("adir")),
    Case("train on a missing directory", ["train", f"{T}/nope"], 3, r"work directory not found"),
    # ---- the lock (exit 4 at once, naming the path); a link there is never followed
    *[Case(f"lock path is a directory: {cmd[0]}", cmd, 4, LOCK + r"a directory", setup=_lock_dir)
      for cmd in (["preprocess", W, "--append", "--events", f"{R}/new.csv"], ["train", W], UPD, ["encode", W])],
    *[Case(f"lock path is a symlink: {' '.join(cmd[:2]).replace(W, 'W')}", cmd, 4, LOCK + r"a symbolic link", setup=_lock_symlink,
           check=lambda env: _victim_intact(env))
      for cmd in (["preprocess", W, "--append", "--events", f"{R}/new.csv"], ["train", W], ["train", W, "--resume"], UPD,
                  ["encode", W], ["state", "rollback", W])],
    Case("lock path is a dangling symlink", ["train", W], 4, LOCK + r"a symbolic link", setup=_lock_dangling_symlink,
         check=_dangling_not_created),
    Case("lock path is a FIFO", ["train", W], 4, LOCK + r"not a regular file", setup=_lock_fifo),
    *[Case(f"a second writer: {cmd[0]}", cmd, 4, r"is locked by .*use --wait SECONDS", setup=_hold_lock)
      for cmd in (["preprocess", W, "--append", "--events", f"{R}/new.csv"], ["train", W], ["train", W, "--resume"], UPD,
                  ["encode", W], ["state", "rollback", W])],
    Case("a second writer with --wait 0.3", UPD + ["--wait", "0.3"], 4, r"after waiting 0\.3 s", setup=_hold_lock),
    # ---- --debug adds the traceback and keeps the exit code
    Case("--debug keeps exit 4", ["train", W], 4, r"is locked by", setup=_hold_lock, debug=True),
    Case("--debug keeps exit 2", ["train", W, "--set", "model.dim=0"], 2, CFG.format("model.dim"), debug=True),
    Case("--debug keeps exit 3", ["update", W, "--new-log", f"{T}/nope.csv"], 3, r"not found", debug=True),
    Case("--debug keeps exit 2 of a usage error", UPD + ["--keep", "0"], 2, BAD_VALUE.format("--keep"), debug=True),
    # ---- the machine: disk full, read-only, permissions → exit 4 naming the path, nothing replaced
    Case("disk full while preprocess writes", ["preprocess", W, "--append", "--events", f"{R}/new.csv"], 4,
         r"cannot write or open .*events\.parquet: the disk is full; nothing was replaced",
         setup=_os_error("dyembed.preprocess.run.write_table", errno.ENOSPC)),
    Case("read-only work dir (preprocess)", ["preprocess", W, "--append", "--events", f"{R}/new.csv"], 4,
         r"the file system is read-only", setup=_os_error("tempfile.mkstemp", errno.EROFS)),
    Case("permission denied (preprocess)", ["preprocess", W, "--append", "--events", f"{R}/new.csv"], 4,
         r"Permission denied", setup=_os_error("tempfile.mkstemp", errno.EACCES)),
    Case("quota exceeded (preprocess)", ["preprocess", W, "--append", "--events", f"{R}/new.csv"], 4,
         r"quota", setup=_os_error("dyembed.preprocess.run.write_table", errno.EDQUOT)),
    Case("read-only work dir (encode)", ["encode", W, "--set", "encode.seed=3"], 4, r"read-only",
         setup=_os_error("tempfile.mkstemp", errno.EROFS)),
    Case("synth with too little free space", ["synth", "--out", f"{T}/world", "--events", "100000"], 4, r"GB are free",
         setup=_no_space_for_synth, check=_nothing_in("world")),
    Case("disk full in the middle of synth: no partial items.jsonl", ["synth", "--out", f"{T}/world", "--events", "500"], 4,
         r"the disk is full", setup=_synth_disk_full, check=_nothing_in("world")),
    # ---- links planted at artefact names are replaced, never written through
    *[Case(f"{name} is a symlink to a victim", ["preprocess", W, "--events", f"{R}/base.csv", "--items", f"{R}/items.jsonl"], 0, "",
           setup=_link_artefact(name), check=_link_replaced(name))
      for name in ("manifest.json", "events.parquet", "users.parquet", "rejected.parquet")],
]


def snapshot(work: Path) -> dict[str, str]:
    return {str(p.relative_to(work)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(work.rglob("*")) if p.is_file() and not p.is_symlink() and p.name != ".dyembed.lock"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return shared_world(tmp_path_factory)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_cli(tmp_path: Path, world, monkeypatch, case: Case) -> None:
    src, raw, _ = world
    work = tmp_path / "work"
    shutil.copytree(src, work, symlinks=True)
    env = Env(work, raw, tmp_path, monkeypatch)
    try:
        if case.setup:
            case.setup(env)
        before = snapshot(work)
        args = [a.format(w=work, t=tmp_path, raw=raw) for a in case.args]
        result = runner.invoke(app, (["--debug"] if case.debug else []) + args)
    finally:
        for fh in env.held:
            fh.close()
    assert result.exit_code == case.code, result.output
    if case.code:
        lines = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(lines) == 1, result.output
        assert re.search(case.message, lines[0]), lines[0]
        assert ("Traceback" in result.output) == case.debug, result.output
        assert snapshot(work) == before
        assert not list(work.glob(".*.tmp")) and not list(work.glob("state.tmp-*"))
    if case.check:
        case.check(env)


# --------------------------------------------------------------------------- before TensorFlow

_PROBE = """
import sys
from dyembed_cli.app import main
sys.argv = ["dyembed"] + sys.argv[1:]
try:
    main()
except SystemExit as exc:
    code = exc.code
print("exit", code, "tensorflow imported" if "tensorflow" in sys.modules else "no tensorflow", file=sys.stderr)
"""


def _probe(args: list[str]) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize(("name", "setup", "args", "code", "message"), [
    ("model.dim=0", None, ["train", W, "--set", "model.dim=0"], 2, CFG.format("model.dim")),
    ("a second writer", _hold_lock, ["train", W], 4, r"is locked by"),
    ("a second writer, resume", _hold_lock, ["train", W, "--resume"], 4, r"is locked by"),
    ("a truncated events.parquet, resume", _truncate("events.parquet"), ["train", W, "--resume"], 4, r"cannot read"),
    ("a truncated state file, resume", _truncate("state/U.npy"), ["train", W, "--resume"], 4, r"U\.npy"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_refused_before_tensorflow_starts(tmp_path: Path, world, monkeypatch, name, setup, args, code, message) -> None:
    src, raw, _ = world
    work = tmp_path / "work"
    shutil.copytree(src, work)
    env = Env(work, raw, tmp_path, monkeypatch)
    try:
        if setup:
            setup(env)
        _, stderr = _probe([a.format(w=work) for a in args])
    finally:
        for fh in env.held:
            fh.close()
    lines = stderr.strip().splitlines()
    assert lines[-1] == f"exit {code} no tensorflow", stderr
    assert re.search(message, lines[-2]) and lines[-2].startswith("error:"), stderr
