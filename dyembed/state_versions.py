"""The state versions of a work directory: list, verify, roll back (`dyembed state …`).

Layout (written by dyembed.replay.state.save_state): `state/` is current; previous versions are
`state.prev/` (the newest), `state.prev.2/`, … `state.prev.N/` (N = runtime.keep_states). Each
holds a manifest.json with the sha256 and size of every other file of the directory.

Verification checks, per version: the manifest is readable JSON of the dyembed-state format;
every file it lists exists with the recorded size and sha256 (a truncated or bit-flipped file is
named); the .npy / .npz headers parse. Nothing here modifies a state except `rollback`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from dyembed.artefacts import sha256_file
from dyembed.errors import StateError
from dyembed.lock import WorkdirLock

STATE_DIR = "state"
PREV_DIR = "state.prev"
FORMAT = "dyembed-state"
_PREV_RE = re.compile(r"^state\.prev(?:\.(\d+))?$")


def prev_dir(workdir: Path, k: int) -> Path:
    """The k-th previous version (1 = the newest previous: state.prev/)."""
    return workdir / (PREV_DIR if k == 1 else f"{PREV_DIR}.{k}")


def previous_dirs(workdir: str | Path) -> list[Path]:
    """Existing previous-version directories, newest first (state.prev, state.prev.2, …)."""
    workdir = Path(workdir)
    found = []
    for path in workdir.iterdir() if workdir.is_dir() else []:
        m = _PREV_RE.match(path.name)
        if m and path.is_dir():
            found.append((int(m.group(1) or 1), path))
    return [p for _, p in sorted(found)]


def state_dirs(workdir: str | Path) -> list[Path]:
    """state/ (when present) then the previous versions, newest first."""
    workdir = Path(workdir)
    current = [workdir / STATE_DIR] if (workdir / STATE_DIR).is_dir() else []
    return current + previous_dirs(workdir)


def version_of(manifest: dict[str, Any]) -> int:
    """The stored version counter; states written before it existed: 1 + resumes so far."""
    if type(manifest.get("version")) is int:
        return int(manifest["version"])
    train = manifest.get("train")
    resumes = train.get("resumes") if isinstance(train, dict) else None
    return 1 + (len(resumes) if isinstance(resumes, list) else 0)


def read_state_manifest(directory: Path) -> dict[str, Any]:
    """manifest.json of one state directory, or StateError naming the file."""
    path = directory / "manifest.json"
    if not path.is_file():
        raise StateError(f"state manifest missing: {path}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateError(f"state manifest {path} is corrupt or truncated: {' '.join(str(exc).split())}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise StateError(f"state manifest {path} is not a dyembed state manifest")
    for name, record in manifest["files"].items():
        if not (isinstance(record, dict) and type(record.get("bytes")) is int and isinstance(record.get("sha256"), str)):
            raise StateError(f"state manifest {path} has a malformed entry for {name!r}")
    mark = manifest.get("watermark")
    if not (isinstance(mark, dict) and type(mark.get("rows")) is int and type(mark.get("last_ts")) is int):
        raise StateError(f"state manifest {path} has no valid watermark {{rows, last_ts}}")
    return manifest


def describe(directory: Path) -> dict[str, Any]:
    manifest = read_state_manifest(directory)
    return {
        "dir": directory.name,
        "path": str(directory),
        "version": version_of(manifest),
        "created": manifest.get("created"),
        "watermark": manifest.get("watermark"),
        "users": manifest.get("n_users"),
        "items": manifest.get("n_items"),
        "files": {name: {"bytes": rec.get("bytes"), "sha256": rec.get("sha256")}
                  for name, rec in manifest["files"].items() if isinstance(rec, dict)},
    }


def list_states(workdir: str | Path) -> list[dict[str, Any]]:
    """Every state version with its watermark and file checksums (current first)."""
    dirs = state_dirs(workdir)
    if not dirs:
        raise StateError(f"no trained state in {Path(workdir) / STATE_DIR} (run `dyembed train {workdir}` first)")
    return [describe(d) for d in dirs]


def _check_file(path: Path, record: Any) -> str | None:
    """A problem with one state file, or None."""
    if not isinstance(record, dict) or not isinstance(record.get("bytes"), int) or not isinstance(record.get("sha256"), str):
        return f"state manifest entry for {path} is malformed"
    if not path.is_file():
        return f"state file missing: {path}"
    size = path.stat().st_size
    if size != record["bytes"]:
        return f"state file {path} is truncated or resized ({size} bytes, manifest says {record['bytes']})"
    if sha256_file(path) != record["sha256"]:
        return f"state file {path} does not match its sha256 in manifest.json (corrupt or edited)"
    try:
        if path.suffix == ".npy":
            np.load(path, mmap_mode="r", allow_pickle=False)
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                for key in npz.files:
                    npz[key]
    except Exception as exc:  # noqa: BLE001 - any unreadable array is a corrupt state
        return f"state file {path} cannot be read: {' '.join(str(exc).split())}"
    return None


REQUIRED = ("theta.npz", "U.npy", "slots.npy", "count.npy", "last_ts.npy", "roles.npy", "config.toml")


def verify_dir(directory: Path) -> dict[str, Any]:
    """{"dir", "ok", "problem"?, version, watermark…}: every listed file's size and sha256 checked."""
    try:
        row = describe(directory)
    except StateError as exc:
        return {"dir": directory.name, "path": str(directory), "ok": False, "problem": str(exc)}
    manifest = read_state_manifest(directory)
    problems = [f"state file missing from {directory / 'manifest.json'}: {name}" for name in REQUIRED
                if name not in manifest["files"]]
    for name, record in manifest["files"].items():
        if "/" in name or name.startswith("."):
            problems.append(f"state manifest {directory / 'manifest.json'} lists a bad file name {name!r}")
            continue
        problem = _check_file(directory / name, record)
        if problem:
            problems.append(problem)
    row["ok"] = not problems
    if problems:
        row["problem"] = problems[0] if len(problems) == 1 else f"{problems[0]} (+{len(problems) - 1} more)"
    return row


def verify_states(workdir: str | Path, *, include_previous: bool = True) -> list[dict[str, Any]]:
    dirs = state_dirs(workdir)
    if not dirs:
        raise StateError(f"no trained state in {Path(workdir) / STATE_DIR} (run `dyembed train {workdir}` first)")
    if not include_previous:
        dirs = dirs[:1]
    return [verify_dir(d) for d in dirs]


def install_state_dir(workdir: Path, tmp: Path, keep: int = 1) -> None:
    """Make the complete directory `tmp` the current state/, shifting older versions down.

    Renames only (each atomic): the oldest kept version (state.prev.<keep>) is removed, every
    state.prev.k moves to k+1 (oldest first), state/ → state.prev/, then tmp → state/. A crash
    at any point leaves the previous current version readable: either still in state/, or (after
    the one moment state/ is absent) in state.prev/, where loading falls back to it.
    """
    keep = max(1, int(keep))
    current = workdir / STATE_DIR
    for extra in previous_dirs(workdir):
        m = _PREV_RE.match(extra.name)
        if int(m.group(1) or 1) > keep:
            shutil.rmtree(extra, ignore_errors=True)
    if current.exists():
        oldest = prev_dir(workdir, keep)
        if oldest.exists():
            shutil.rmtree(oldest)
        for k in range(keep - 1, 0, -1):
            if prev_dir(workdir, k).exists():
                os.replace(prev_dir(workdir, k), prev_dir(workdir, k + 1))
        os.replace(current, prev_dir(workdir, 1))
    os.replace(tmp, current)


def next_version(workdir: str | Path) -> int:
    """1 + the highest version number of any readable state directory (monotonic across rollbacks)."""
    best = 0
    for d in state_dirs(workdir):
        try:
            best = max(best, version_of(read_state_manifest(d)))
        except StateError:
            continue
    return best + 1


def rollback(workdir: str | Path, *, version: int | None = None, wait: float = 0.0, keep: int | None = None) -> dict[str, Any]:
    """Make a previous version current again (verified first); the replaced one is kept as the
    newest previous version, so a rollback can itself be rolled back."""
    workdir = Path(workdir)
    with WorkdirLock(workdir, command="state rollback", wait=wait):
        previous = previous_dirs(workdir)
        if not (workdir / STATE_DIR).is_dir():
            raise StateError(f"no current state in {workdir / STATE_DIR} to roll back from")
        if not previous:
            raise StateError(f"no previous state version in {workdir} (state.prev/ is absent)")
        candidates = [(d, describe(d)) for d in previous]
        if version is None:
            target, info = candidates[0]
        else:
            match = [(d, i) for d, i in candidates if i["version"] == version]
            if not match:
                have = ", ".join(str(i["version"]) for _, i in candidates)
                raise StateError(f"no previous state version {version} in {workdir} (previous versions: {have})")
            target, info = match[0]
        check = verify_dir(target)
        if not check["ok"]:
            raise StateError(f"cannot roll back to {target.name}: {check['problem']}")
        replaced = describe(workdir / STATE_DIR)
        tmp = workdir / f"state.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        try:
            shutil.copytree(target, tmp)
            install_state_dir(workdir, tmp, keep=max(keep or 1, len(previous)))
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return {"restored": info["version"], "replaced": replaced["version"], "watermark": info["watermark"]}
