"""What every command shares: global flags, config resolution, error → exit code, progress bars."""

from __future__ import annotations

import errno
import functools
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from dyembed.config import Config, load_config
from dyembed.errors import EXIT_STATE, EXIT_UNEXPECTED, EXIT_USAGE, DyembedError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Globals:
    quiet: bool = False
    verbose: bool = False
    debug: bool = False
    log_format: str = "text"


GLOBALS = Globals()
# tables go to stdout, messages and progress to stderr (so `--json -` stays clean for scripts)
# (a file or pipe gets a wide table instead of rich's 80-column default)
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML config file (defaults < file < flags < --set).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override any key: --set model.dim=32 (repeatable).")]


class _JsonLogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        import json

        return json.dumps({"level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()})


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at emit time (test runners swap it between commands)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging() -> None:
    if not GLOBALS.debug:
        # TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) is not for users; --debug shows it
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    handler = _StderrHandler()
    if GLOBALS.log_format == "json":
        handler.setFormatter(_JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("dyembed")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if GLOBALS.debug else logging.INFO if GLOBALS.verbose else logging.WARNING)
    root.propagate = False


def fail(message: str, code: int) -> typer.Exit:
    err.print(f"error: {message}", markup=False)
    return typer.Exit(code)


# OS errors of the machine rather than of dyembed: a full disk, a read-only or foreign-owned
# directory, a path of the wrong kind. Exit 4 (the work dir / output cannot be written), naming the path.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR,
                      errno.ENOTDIR, errno.ELOOP, errno.EEXIST, errno.ENAMETOOLONG, errno.EMFILE, errno.ENFILE}


def environment_error(exc: OSError) -> str | None:
    """The one-line message for an OS error of the machine (see ENVIRONMENT_ERRNOS), else None."""
    if exc.errno not in ENVIRONMENT_ERRNOS:
        return None
    path = exc.filename if exc.filename is not None else "a file"
    what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
            errno.EROFS: "the file system is read-only"}.get(exc.errno, exc.strerror or "")
    return f"cannot write or open {path}: {what}; nothing was replaced (the previous outputs and state are intact)"


def _debug_traceback() -> None:
    import traceback

    traceback.print_exc(file=sys.stderr)


def guarded(fn: F) -> F:
    """Turn DyembedError into `error: …` + its exit code, a usage error into exit 2, an OS error of
    the machine (disk full, read-only, permissions) into exit 4, anything else into exit 1.
    --debug adds the traceback; the exit code stays the same."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        setup_logging()
        try:
            return fn(*args, **kwargs)
        except DyembedError as exc:
            if GLOBALS.debug:
                _debug_traceback()
            raise fail(str(exc), exc.exit_code) from None
        except typer.BadParameter as exc:
            if GLOBALS.debug:
                _debug_traceback()
            raise fail(" ".join(exc.format_message().split()), EXIT_USAGE) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except OSError as exc:
            if GLOBALS.debug:
                _debug_traceback()
            message = environment_error(exc)
            if message is not None:
                raise fail(message, EXIT_STATE) from None
            text = " ".join(f"{type(exc).__name__}: {exc}".split())
            raise fail(f"unexpected {text} (rerun with --debug for the traceback)", EXIT_UNEXPECTED) from None
        except Exception as exc:  # noqa: BLE001 - the last line of defence of a CLI
            if GLOBALS.debug:
                _debug_traceback()
            text = " ".join(f"{type(exc).__name__}: {exc}".split())
            raise fail(f"unexpected {text} (rerun with --debug for the traceback)", EXIT_UNEXPECTED) from None

    return wrapper  # type: ignore[return-value]


def resolve_config(
    config: Path | None,
    sets: list[str] | None,
    flags: dict[str, Any] | None = None,
    workdir: Path | None = None,
) -> Config:
    """Defaults < config file (or the work dir's saved config.toml when none is given) < flags < --set."""
    path = config
    if path is None and workdir is not None and (Path(workdir) / "config.toml").is_file():
        path = Path(workdir) / "config.toml"
    return load_config(path, overrides=sets, flags=flags)


def show_progress() -> bool:
    """Bars only for a human: not with --quiet, not when stderr is a pipe or file."""
    return not GLOBALS.quiet and sys.stderr.isatty()


def progress_bar(total: int | None, desc: str, unit: str = "it"):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=not show_progress(), file=sys.stderr, dynamic_ncols=True)


def note(message: str) -> None:
    """A one-line message for the human at the terminal (silenced by --quiet)."""
    if not GLOBALS.quiet:
        err.print(message, markup=False)


def check_output(path: str | Path | None, flag: str, *, kind: str = "file") -> None:
    """Before any work: an output path a command will write must be of the right kind and in a
    writable place (exit 2 for the kind, 4 when the place cannot be written), so that a run does
    not fail after minutes of work. `kind`: "file" or "dir"; None and "-" (stdout) pass."""
    from dyembed.errors import ConfigError, StateError

    if path is None or str(path) == "-":
        return
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise ConfigError(f"{flag} {path} is a directory; give a file name")
    if kind == "dir" and path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} exists and is not a directory; give a directory (new or existing)")
    place = path if kind == "dir" and path.is_dir() else path.parent
    while not place.exists() and place != place.parent:
        place = place.parent
    if not place.is_dir():
        raise ConfigError(f"{flag} {path}: {place} is not a directory")
    if not os.access(place, os.W_OK | os.X_OK):
        raise StateError(f"cannot write {flag} {path}: {place} is not writable")
