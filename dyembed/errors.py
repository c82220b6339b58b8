"""The one error type the library raises; the CLI turns it into `error: …` and an exit code.

Exit codes are shared by every command (documented in README.md):
0 ok · 1 unexpected · 2 usage or config error · 3 invalid input data · 4 state conflict.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_STATE = 4


class DyembedError(Exception):
    """Base error: a one-line, user-facing message and the exit code that goes with it."""

    exit_code = EXIT_UNEXPECTED

    def __init__(self, message: str, *, exit_code: int | None = None):
        # Keep messages one line: the CLI prints exactly this after "error: ".
        super().__init__(" ".join(str(message).split()))
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(DyembedError):
    """Bad flag, unknown config key, wrong type, unsupported option (exit 2)."""

    exit_code = EXIT_USAGE


class InputDataError(DyembedError):
    """A missing, empty or unusable input file or artefact (exit 3)."""

    exit_code = EXIT_INPUT


class StateError(DyembedError):
    """A locked, incompatible or corrupt state (exit 4)."""

    exit_code = EXIT_STATE


class DivergedError(StateError):
    """A training or replay run produced non-finite numbers: nothing was saved (exit 4)."""
