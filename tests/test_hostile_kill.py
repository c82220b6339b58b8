"""kill -9 of `preprocess --append` at random moments (issue 12 §7, slow tier): after every kill the
work dir is whole — each output matches the sha256 its manifest records, rows_in = events_out +
rejected — and is either the work dir before the append or after it; the rerun that follows gives
byte-identical files to an uninterrupted run. (train --resume and update: tests/test_crash_safety.py.)"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# manifest.json records the run's start time: compared by its counts, the tables byte by byte
OUTPUTS = ("events.parquet", "users.parquet", "items.parquet", "rejected.parquet")


def _log(path: Path, start: int, n: int) -> None:
    lines = ["user_id,item_id,timestamp"]
    for k in range(start, start + n):
        line = f"u{k % 997},i{k % 389},{1_600_000_000 + k}"
        lines.append('"' + line if k % 1000 == 7 else line)  # a broken quote now and then
        if k % 5000 == 3:
            lines.append("")
    path.write_text("\n".join(lines) + "\n")


def _cli(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dyembed", "--quiet", *map(str, args)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _files(work: Path) -> dict[str, str]:
    out = {name: hashlib.sha256((work / name).read_bytes()).hexdigest() for name in OUTPUTS}
    out["counts"] = json.dumps(json.loads((work / "manifest.json").read_text())["counts"], sort_keys=True)
    return out


def _whole(work: Path) -> None:
    manifest = json.loads((work / "manifest.json").read_text())
    for name, record in manifest["outputs"].items():
        assert hashlib.sha256((work / name).read_bytes()).hexdigest() == record["sha256"], name
    counts = manifest["counts"]
    assert counts["rows_in"] == counts["events_out"] + sum(counts["rejected"].values())


@pytest.mark.slow
def test_kill_preprocess_append_ten_times(tmp_path: Path) -> None:
    from dyembed.config import Config
    from dyembed.lock import settle_interrupted_writes
    from dyembed.preprocess.run import preprocess

    base, new = tmp_path / "base.csv", tmp_path / "new.csv"
    _log(base, 0, 50_000)
    _log(new, 50_000, 300_000)
    cfg = Config()
    cfg.data.events = str(base)
    cfg.data.max_future_days = -1
    start = tmp_path / "start"
    preprocess(start, cfg)
    before = _files(start)
    args = ["--set", "data.max_future_days=-1"]

    reference = tmp_path / "reference"
    shutil.copytree(start, reference)
    t0 = time.perf_counter()
    proc = _cli(["preprocess", reference, "--append", "--events", new, *args])
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    span = time.perf_counter() - t0
    after = _files(reference)

    rng = random.Random(12)
    work = tmp_path / "work"
    shutil.copytree(start, work)
    outcomes = []
    for _ in range(10):
        proc = _cli(["preprocess", work, "--append", "--events", new, *args])
        time.sleep(rng.uniform(0.3, 1.0) * span)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        settle_interrupted_writes(work)  # what every later command does first
        _whole(work)
        now = _files(work)
        assert now in (before, after)
        outcomes.append("after" if now == after else "before")
        if now == after:  # appended: start again from the old work dir
            shutil.rmtree(work)
            shutil.copytree(start, work)
    proc = _cli(["preprocess", work, "--append", "--events", new, *args])
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    assert _files(work) == after
    assert "before" in outcomes  # at least some kills landed inside the run
