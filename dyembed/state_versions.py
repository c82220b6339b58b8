"""The state versions of a work directory: list, verify, roll back (`dyembed state …`).

Layout (written by dyembed.replay.state.save_state): `state/` is current; previous versions are
`state.prev/` (the newest), `state.prev.2/`, … `state.prev.N/` (N = runtime.keep_states). Each
holds a manifest.json with the sha256 and size of every other file of the directory.

Verification checks, per version: the manifest is readable JSON of the dyembed-state format;
every file it lists exists with the recorded size and sha256 (a truncated or bit-flipped file is
named); the .npy / .npz arrays parse and hold no NaN/inf; and its lineage (dyembed/lineage.py):
the current version must belong to the work dir's files (else it fails), a previous one is only
marked when it does not (rolling back to it is then refused). Nothing here modifies a state
except `rollback`.
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
            bad = _nonfinite_count(np.load(path, mmap_mode="r", allow_pickle=False))
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                bad = sum(_nonfinite_count(npz[key]) for key in npz.files)
        else:
            bad = 0
    except Exception as exc:  # noqa: BLE001 - any unreadable array is a corrupt state
        return f"state file {path} cannot be read: {' '.join(str(exc).split())}"
    if bad:
        return f"state file {path} holds {bad:,} non-finite numbers (NaN/inf): the state is unusable"
    return None


def _nonfinite_count(values: np.ndarray, block: int = 1 << 22) -> int:
    """NaN/inf entries of a (memory-mapped) array, read in blocks."""
    if not np.issubdtype(values.dtype, np.floating):
        return 0
    flat = values.reshape(-1)
    return sum(int(len(part) - np.count_nonzero(np.isfinite(part)))
               for part in (flat[lo:lo + block] for lo in range(0, len(flat), block)))


_NAME_RE = re.compile(r"^(?:eval/)?[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def required_files(manifest: dict[str, Any]) -> list[str]:
    """The files every state of this layout must list: θ, config, one .npy per user array (the
    required ones and those its manifest says were saved, e.g. recent.npy), and the evaluation
    snapshot's arrays + roles when the state has one."""
    from dyembed.replay.state import EVAL_DIR, ROLES_FILE, USER_FILES

    def arrays(part: dict[str, Any]) -> list[str]:  # the state's own, plus any optional one it says it saved
        saved = part.get("user_shapes") if isinstance(part.get("user_shapes"), dict) else {}
        return list(USER_FILES) + sorted(set(saved) - set(USER_FILES))

    names = ["theta.npz", "config.toml"] + [f"{n}.npy" for n in arrays(manifest)]
    if isinstance(manifest.get("eval"), dict):
        names += [f"{EVAL_DIR}/{n}.npy" for n in arrays(manifest["eval"])] + [f"{EVAL_DIR}/{ROLES_FILE}"]
    return names


def verify_dir(directory: Path) -> dict[str, Any]:
    """{"dir", "ok", "problem"?, version, watermark…}: every listed file's size and sha256 checked."""
    try:
        row = describe(directory)
    except StateError as exc:
        return {"dir": directory.name, "path": str(directory), "ok": False, "problem": str(exc)}
    manifest = read_state_manifest(directory)
    problems = [f"state file missing from {directory / 'manifest.json'}: {name}" for name in required_files(manifest)
                if name not in manifest["files"]]
    for name, record in manifest["files"].items():
        if not _NAME_RE.match(name) or ".." in name:
            problems.append(f"state manifest {directory / 'manifest.json'} lists a bad file name {name!r}")
            continue
        problem = _check_file(directory / name, record)
        if problem:
            problems.append(problem)
    row["ok"] = not problems
    if problems:
        row["problem"] = problems[0] if len(problems) == 1 else f"{problems[0]} (+{len(problems) - 1} more)"
    return row


def lineage_problems(workdir: str | Path, directories: list[Path]) -> dict[Path, str | None]:
    """For each state directory: why it does not belong to the work dir's files (None: it does).
    One scan of the work dir serves every version (dyembed/lineage.py)."""
    from dyembed import lineage

    manifests = {}
    for d in directories:
        try:
            manifests[d] = read_state_manifest(d)
        except StateError as exc:
            manifests[d] = {"problem": str(exc)}
    wanted: dict[str, set[int]] = {}
    for m in manifests.values():
        if isinstance(m.get("lineage"), dict):
            for key, values in lineage.marks(m["lineage"]).items():
                wanted.setdefault(key, set()).update(values)
    sc = lineage.scan(workdir, **{k: sorted(v) for k, v in wanted.items()})
    out: dict[Path, str | None] = {}
    for d, m in manifests.items():
        try:
            lineage.require(workdir, d, m.get("lineage"), sc)
            out[d] = None
        except StateError as exc:
            out[d] = str(exc)
    return out


def verify_states(workdir: str | Path, *, include_previous: bool = True) -> list[dict[str, Any]]:
    """verify_dir for each version (current first), plus its lineage: `lineage` is "ok" or why the
    version does not belong to the work dir's files; for the current version that fails it."""
    dirs = state_dirs(workdir)
    if not dirs:
        raise StateError(f"no trained state in {Path(workdir) / STATE_DIR} (run `dyembed train {workdir}` first)")
    if not include_previous:
        dirs = dirs[:1]
    rows = [verify_dir(d) for d in dirs]
    readable = [d for d, r in zip(dirs, rows) if r["ok"]]
    found = lineage_problems(workdir, readable) if readable else {}
    for d, row in zip(dirs, rows):
        row["files_ok"] = row["ok"]
        if d not in found:
            continue
        row["lineage"] = found[d] or "ok"
        if found[d] and d.name == STATE_DIR:
            row["ok"] = False
            row["problem"] = found[d]
    return rows


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
        foreign = lineage_problems(workdir, [target])[target]
        if foreign:
            raise StateError(f"cannot roll back to {target.name} (version {info['version']}): {foreign}")
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
