"""One writer per work directory.

The lock is an `fcntl.flock` on `WORKDIR/.dyembed.lock`: the kernel releases it when the holder
dies (even by kill -9), so a dead process can never wedge a cron job. The file also records the
holder's pid, host, command and start time, for the message a second run prints, and so that a
lock file left by a dead process is reported (as a warning) when it is taken over.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any

from dyembed.artefacts import complete_pending_renames
from dyembed.errors import StateError

log = logging.getLogger(__name__)
LOCK_NAME = ".dyembed.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process"
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} ({holder.get('command', '?')}, since {holder.get('started', '?')})"


# locks this process holds, by path: a step called inside another (update → train) re-enters
_HELD: dict[Path, int] = {}


class WorkdirLock:
    """`with WorkdirLock(workdir, command="train", wait=0):` — exclusive, or StateError (exit 4).

    Re-entrant within one process (flock would otherwise block on our own second open).
    """

    def __init__(self, workdir: str | Path, *, command: str = "", wait: float = 0.0, poll: float = 0.1):
        self.path = Path(workdir) / LOCK_NAME
        self.command = command
        self.wait = max(0.0, float(wait))
        self.poll = poll
        self._fh = None

    def _read_holder(self, fh) -> dict[str, Any]:
        try:
            fh.seek(0)
            text = fh.read(64 << 10).strip()
            return json.loads(text) if text else {}
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return {}

    def _open(self):
        """The lock file, never through a symbolic link (a link planted at the lock path would make
        every writing command truncate its target), and only a regular file."""
        if self.path.parent.exists() and not self.path.parent.is_dir():
            raise StateError(f"work directory {self.path.parent} is not a directory")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StateError(f"lock file {self.path} is a symbolic link; remove it (dyembed never creates one) "
                                 "and rerun") from None
            if exc.errno == errno.EISDIR:
                raise StateError(f"lock file {self.path} is a directory; remove it and rerun") from None
            raise StateError(f"cannot open the lock file {self.path}: {exc.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StateError(f"lock file {self.path} is not a regular file; remove it and rerun")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "r+", encoding="utf-8")

    def acquire(self) -> "WorkdirLock":
        key = self.path.resolve()
        if _HELD.get(key):
            _HELD[key] += 1
            self._reentered = True
            return self
        self._reentered = False
        # a run that fails in a fresh directory should leave nothing behind, not just a lock file
        self._created_dir = not self.path.parent.exists()
        if not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = self._open()
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    fh.close()
                    raise StateError(f"cannot lock {self.path}: {exc.strerror}") from None
                if time.monotonic() >= deadline:
                    holder = self._read_holder(fh)
                    fh.close()
                    waited = f" after waiting {self.wait:g} s" if self.wait else ""
                    raise StateError(f"work directory {self.path.parent} is locked by {_describe(holder)}{waited}; use --wait SECONDS to wait for it") from None
                time.sleep(self.poll)
        previous = self._read_holder(fh)
        if previous.get("pid") and previous.get("pid") != os.getpid():
            same_host = previous.get("host") == socket.gethostname()
            state = "not running" if same_host and not _pid_alive(int(previous["pid"])) else "its lock was released"
            log.warning("taking over the stale lock of %s: %s", _describe(previous), state)
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                             "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
        fh.flush()
        self._fh = fh
        _HELD[key] = 1
        try:
            finished = complete_pending_renames(self.path.parent)
        except BaseException:
            self.release()
            raise
        if finished:
            log.warning("completed an interrupted write in %s (%d files renamed into place)", self.path.parent, finished)
        return self

    def release(self) -> None:
        key = self.path.resolve()
        if getattr(self, "_reentered", False):
            _HELD[key] -= 1
            self._reentered = False
            return
        if self._fh is None:
            return
        _HELD.pop(key, None)
        # empty the file before unlocking: an empty lock file means "cleanly released"
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.flush()
        if self._created_dir and [p.name for p in self.path.parent.iterdir()] == [LOCK_NAME]:
            self.path.unlink()  # still under our flock, so no other run is using the directory
            self.path.parent.rmdir()
        fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
        self._fh.close()
        self._fh = None

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def settle_interrupted_writes(workdir: str | Path) -> None:
    """For commands that only read a work dir: if a writer was killed in the middle of a group of
    renames (dyembed.artefacts.atomic_group), finish it first, so the reader never sees old and new
    files mixed. When a live writer holds the lock, nothing is done: it is finishing them itself."""
    from dyembed.artefacts import PENDING_RENAMES

    workdir = Path(workdir)
    if not (workdir / PENDING_RENAMES).is_file():
        return
    try:
        with WorkdirLock(workdir, command="complete an interrupted write"):
            pass  # acquiring the lock completes the pending renames
    except StateError:
        log.info("%s is locked by a running writer; it completes its own renames", workdir)
