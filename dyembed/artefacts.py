"""Atomic writes and small artefact helpers.

Every file dyembed writes goes to a temporary name in the same directory first and is then
renamed over the target (`os.replace` is atomic on POSIX), so a crash never leaves a half-written
artefact where a previous good one stood.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dyembed.errors import InputDataError

SCHEMA_VERSION = 1
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `target`; on success it replaces `target`, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; artefacts get the usual mode
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


PENDING_RENAMES = ".dyembed.pending-renames.json"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicGroup:
    """Temp paths for several files of one directory that must be replaced together."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.pairs: list[tuple[Path, Path]] = []  # (temp, target), in rename order

    def path(self, name: str) -> Path:
        """A temp path for `directory/name`; renamed in the order asked for (ask for the manifest last)."""
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.directory)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)
        self.pairs.append((Path(tmp), self.directory / name))
        return Path(tmp)


@contextlib.contextmanager
def atomic_group(directory: str | Path) -> Iterator[AtomicGroup]:
    """Replace several files of `directory` as one: all of them or none, even across kill -9.

    The files are written to temp names; on success each is fsynced, a journal listing the
    (temp → target) renames is written atomically, the renames are done, and the journal removed.
    A crash before the journal leaves the old files; a crash after it is rolled forward by
    `complete_pending_renames` (called whenever the work dir's lock is taken), so readers never
    see a mix of old and new files for longer than that. On an exception the temps are removed.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    group = AtomicGroup(directory)
    journal = directory / PENDING_RENAMES
    try:
        yield group
        for tmp, _ in group.pairs:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        write_json(journal, {"renames": [[tmp.name, target.name] for tmp, target in group.pairs]})
        _fsync_dir(directory)
        for tmp, target in group.pairs:
            os.replace(tmp, target)
        _fsync_dir(directory)
        journal.unlink()
    finally:
        if not journal.exists():
            for tmp, _ in group.pairs:
                if tmp.exists():
                    tmp.unlink()


def complete_pending_renames(directory: str | Path) -> int:
    """Finish a group replace that a crash interrupted after its journal was written (see
    atomic_group); returns how many renames were still pending. Call it only under the lock."""
    directory = Path(directory)
    journal = directory / PENDING_RENAMES
    if not journal.is_file():
        return 0
    try:
        renames = json.loads(journal.read_text(encoding="utf-8"))["renames"]
        pairs = [(directory / str(tmp), directory / str(target)) for tmp, target in renames]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        from dyembed.errors import StateError

        raise StateError(f"{journal} is unreadable ({exc}): an interrupted write cannot be completed; "
                         "remove the file and run preprocess again") from None
    pending = 0
    for tmp, target in pairs:
        if tmp.exists():  # else it was renamed before the crash
            os.replace(tmp, target)
            pending += 1
    _fsync_dir(directory)
    journal.unlink()
    return pending


def write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _json_text(payload: Any) -> str:
    return json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n"


def write_json(target: str | Path, payload: Any) -> None:
    write_text(target, _json_text(payload))


def write_json_to(path: str | Path, payload: Any) -> None:
    """Plain (non-atomic) JSON write, for a temp path that is renamed later (atomic_group)."""
    Path(path).write_text(_json_text(payload), encoding="utf-8")


def read_json(path: str | Path, what: str = "file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputDataError(f"{what} {path} is not valid JSON: {exc}") from None


def write_table(table: Any, path: str | Path) -> None:
    """Plain parquet write (zstd; deterministic bytes for equal tables), e.g. to an atomic_group path."""
    import pyarrow.parquet as pq

    pq.write_table(table, path, compression="zstd")


def write_parquet(target: str | Path, table: Any) -> None:
    """Write a pyarrow Table atomically."""
    with atomic_path(target) as tmp:
        write_table(table, tmp)


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(path: str | Path) -> dict[str, Any]:
    """Name, size and sha256 of an input or output file, for manifests."""
    path = Path(path)
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def require_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputDataError(f"{what} not found: {path}")
    if not path.is_file():
        raise InputDataError(f"{what} is not a file: {path}")
    if path.stat().st_size == 0:
        raise InputDataError(f"{what} is empty: {path}")
    return path
