"""User state in memory (`UserState`) and the `state/` directory on disk.

On disk (`WORKDIR/state/`, format_version 1; documented in docs/model.md):

    manifest.json   format, version, watermark {rows, last_ts}, counts, θ and user-array shapes,
                    split info, training summary, sha256 + size of every file below
    config.toml     the resolved config the state was trained with
    theta.npz       P [D,d], b [n_items], log_tau [], log_alpha [] or [d], u0 [d],
                    E [n_items,d] (item residual, optional), logq [n_items] (sampled loss, optional)
    U.npy           user vectors [n_users, d] float32
    slots.npy       optimiser slots [n_slots, n_users, d] float32 (adagrad: G; adam: m, v)
    count.npy       updates per user [n_users] int32 (= Adam's per-user step count)
    last_ts.npy     time of each user's last replayed event [n_users] int64 (0 = none)
    recent.npy      the user's last H items, a ring buffer [n_users, H] int32 (-1 = empty; only
                    with model.history > 0; slot k mod H holds the item of the user's k-th event)
    roles.npy       the split role per event row used in training [rows] int8 (0/1/2)

Writes are atomic: every file goes to `state.tmp-<pid>/` through dyembed.artefacts, then the
directory is installed by renames only (as dyembed.state_versions.install_state_dir): older versions
shift down (state.prev → state.prev.2 …, `runtime.keep_states` kept), `state/` becomes
`state.prev/`, the new directory `state/`. A crash leaves either the old state or the new one in
`state/`; if it struck between the last two renames, `load_state` falls back to `state.prev/`.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dyembed import __version__
from dyembed.artefacts import atomic_path, file_record, read_json, sha256_file, write_json, write_text
from dyembed.errors import StateError

log = logging.getLogger(__name__)

FORMAT = "dyembed-state"
FORMAT_VERSION = 1
STATE_DIR = "state"
PREV_DIR = "state.prev"
USER_FILES = ("U", "slots", "count", "last_ts")
OPTIONAL_USER_FILES = ("recent",)  # saved when present


@dataclass
class UserState:
    """Per-user dynamic state: vectors, optimiser slots, update counts and last event times."""

    U: np.ndarray  # [n_users, d] float32
    slots: np.ndarray  # [n_slots, n_users, d] float32 (sgd 0, adagrad 1, adam 2)
    count: np.ndarray  # [n_users] int32
    last_ts: np.ndarray  # [n_users] int64
    recent: np.ndarray | None = None  # [n_users, H] int32 ring of recent items (-1 = empty), model.history > 0
    # (fields may also be StreamedArray, for writing/reading large tables in chunks)

    @property
    def n_users(self) -> int:
        return int(self.U.shape[0])

    @property
    def dim(self) -> int:
        return int(self.U.shape[1])

    @property
    def history(self) -> int:
        """H, the number of recent items kept per user (0: none)."""
        return 0 if self.recent is None else int(self.recent.shape[1])

    def arrays(self) -> dict[str, Any]:
        """name → array of every per-user array the state holds (what state/ stores)."""
        out = {name: getattr(self, name) for name in USER_FILES}
        out.update({name: getattr(self, name) for name in OPTIONAL_USER_FILES if getattr(self, name) is not None})
        return out

    def copy(self) -> "UserState":
        return UserState(**{name: np.array(a, copy=True) for name, a in self.arrays().items()})

    @classmethod
    def fresh(cls, n_users: int, dim: int, n_slots: int, *, init: str = "prior", u0: np.ndarray | None = None,
              seed: int = 0, init_scale: float = 0.1, history: int = 0) -> "UserState":
        """Users before any event: u = u0 (prior), 0 (zero) or N(0, init_scale²) (random); no recent items."""
        if init == "prior" and u0 is not None:
            U = np.broadcast_to(np.asarray(u0, np.float32), (n_users, dim)).copy()
        elif init == "random":
            U = (np.random.default_rng(seed).standard_normal((n_users, dim)) * init_scale).astype(np.float32)
        else:
            U = np.zeros((n_users, dim), np.float32)
        return cls(U=U, slots=np.zeros((n_slots, n_users, dim), np.float32),
                   count=np.zeros(n_users, np.int32), last_ts=np.zeros(n_users, np.int64),
                   recent=np.full((n_users, history), -1, np.int32) if history > 0 else None)

    def grown(self, n_users: int, fresh: "UserState") -> "UserState":
        """This state extended with the rows of `fresh` for users n_old..n_users-1 (new users)."""
        old = self.n_users
        if n_users <= old:
            return self
        return UserState(
            U=np.concatenate([self.U, fresh.U[old:n_users]]),
            slots=np.concatenate([self.slots, fresh.slots[:, old:n_users]], axis=1),
            count=np.concatenate([self.count, fresh.count[old:n_users]]),
            last_ts=np.concatenate([self.last_ts, fresh.last_ts[old:n_users]]),
            recent=None if self.recent is None else np.concatenate([self.recent, fresh.recent[old:n_users]]),
        )


class StreamedArray:
    """An array written or read in row chunks (C order), so a 1M-user table never needs a second
    full copy in memory: `chunks()` yields consecutive pieces whose concatenation is the array."""

    def __init__(self, shape: tuple[int, ...], dtype: Any, chunks: Callable[[], Iterator[np.ndarray]]):
        self.shape, self.dtype, self._chunks = tuple(shape), np.dtype(dtype), chunks

    def chunks(self) -> Iterator[np.ndarray]:
        return self._chunks()

    def materialize(self) -> np.ndarray:
        parts = [np.asarray(c, self.dtype).reshape(-1) for c in self.chunks()]
        return (np.concatenate(parts) if parts else np.zeros(0, self.dtype)).reshape(self.shape)


def npy_chunks(path: Path, rows: int = 16_384) -> StreamedArray:
    """A .npy file as a StreamedArray: flat C-order chunks of `rows` × shape[-1] items."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
        offset = fh.tell()
    if fortran:
        raise StateError(f"{path}: Fortran-ordered arrays are not supported")
    row_items = int(shape[-1]) if len(shape) > 1 else 1  # chunks of `rows` last-axis rows, in C order

    def gen() -> Iterator[np.ndarray]:
        total = int(np.prod(shape))
        step = max(1, rows) * row_items
        with open(path, "rb") as fh:
            fh.seek(offset)
            done = 0
            while done < total:
                n = min(step, total - done)
                chunk = np.fromfile(fh, dtype=dtype, count=n)
                if len(chunk) != n:
                    raise StateError(f"{path} is truncated")
                done += n
                yield chunk

    return StreamedArray(shape, dtype, gen)


def _save_npy(path: Path, array: Any) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            if isinstance(array, StreamedArray):
                np.lib.format.write_array_header_1_0(
                    fh, {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False, "shape": array.shape})
                for chunk in array.chunks():
                    fh.write(np.ascontiguousarray(chunk, array.dtype).tobytes())
            else:
                np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def save_state(workdir: str | Path, *, users: UserState, theta: dict[str, np.ndarray], roles: np.ndarray,
               manifest: dict[str, Any], config_toml: str, keep: int = 1) -> Path:
    """Write `WORKDIR/state/` atomically, keeping `keep` previous versions (state.prev, state.prev.2, …).

    The manifest gets `version`: 1 + the highest version of any state directory present, so
    versions only grow, even across `dyembed state rollback` (dyembed/state_versions.py)."""
    from dyembed.state_versions import next_version

    workdir = Path(workdir)
    for stale in workdir.glob("state.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = workdir / f"state.tmp-{os.getpid()}"
    tmp.mkdir(parents=True)
    try:
        _save_npz(tmp / "theta.npz", {k: np.asarray(v) for k, v in theta.items()})
        user_arrays = users.arrays()
        for name, array in user_arrays.items():
            _save_npy(tmp / f"{name}.npy", array)
        _save_npy(tmp / "roles.npy", np.asarray(roles, np.int8))
        write_text(tmp / "config.toml", config_toml)
        files = {}
        for path in sorted(tmp.iterdir()):
            record = file_record(path)
            files[path.name] = {"bytes": record["bytes"], "sha256": record["sha256"]}
        full = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "dyembed_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "version": next_version(workdir),
            **manifest,
            "theta_shapes": {k: list(np.shape(v)) for k, v in theta.items()},
            "user_shapes": {name: list(a.shape) for name, a in user_arrays.items()},
            "user_dtypes": {name: np.dtype(a.dtype).name for name, a in user_arrays.items()},
            "files": files,
        }
        write_json(tmp / "manifest.json", full)
        _install(workdir, tmp, keep)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return workdir / STATE_DIR


def _install(workdir: Path, tmp: Path, keep: int) -> None:
    """Renames only (each atomic): see dyembed.state_versions.install_state_dir."""
    from dyembed.state_versions import install_state_dir

    install_state_dir(workdir, tmp, keep=keep)


def state_dir(workdir: str | Path) -> Path:
    """The directory holding the current state (state/, or state.prev/ after an interrupted swap)."""
    workdir = Path(workdir)
    current, prev = workdir / STATE_DIR, workdir / PREV_DIR
    if (current / "manifest.json").is_file():
        return current
    if (prev / "manifest.json").is_file():
        log.warning("state/ is missing or incomplete; using the previous state in %s", prev)
        return prev
    raise StateError(f"no trained state in {current} (run `dyembed train {workdir}` first)")


def read_manifest(workdir: str | Path) -> dict[str, Any]:
    from dyembed.state_versions import read_state_manifest

    directory = state_dir(workdir)
    manifest = read_state_manifest(directory)  # corrupt / wrong-shaped JSON → StateError naming the file
    if manifest.get("format_version") != FORMAT_VERSION:
        raise StateError(f"{directory / 'manifest.json'} is not a dyembed state of format version {FORMAT_VERSION}")
    return manifest


def load_state(workdir: str | Path, *, verify: bool = True, streamed: bool = False
               ) -> tuple[dict[str, Any], dict[str, np.ndarray], UserState, np.ndarray]:
    """(manifest, θ arrays, user state, roles) from `WORKDIR/state/`; checksums verified.

    streamed=True: the user arrays are StreamedArray readers (the engine fills its table from
    them chunk by chunk) instead of in-memory arrays."""
    directory = state_dir(workdir)
    manifest = read_manifest(workdir)
    for name, record in manifest.get("files", {}).items():
        path = directory / name
        if not path.is_file():
            raise StateError(f"state file missing: {path}")
        if path.stat().st_size != record["bytes"] or (verify and sha256_file(path) != record["sha256"]):
            raise StateError(f"state file {path} does not match its checksum in manifest.json (corrupt or edited)")
    try:
        with np.load(directory / "theta.npz", allow_pickle=False) as npz:
            theta = {k: npz[k] for k in npz.files}
        names = list(USER_FILES) + [n for n in OPTIONAL_USER_FILES if f"{n}.npy" in manifest.get("files", {})]
        if streamed:
            arrays = {name: npy_chunks(directory / f"{name}.npy") for name in names}
        else:
            arrays = {name: np.load(directory / f"{name}.npy", allow_pickle=False) for name in names}
        roles = np.load(directory / "roles.npy", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise StateError(f"cannot read the state in {directory}: {exc}") from None
    users = UserState(**arrays)
    if len(users.U.shape) != 2 or len(users.slots.shape) != 3 or tuple(users.slots.shape[1:]) != tuple(users.U.shape):
        raise StateError(f"state arrays in {directory} have inconsistent shapes")
    return manifest, theta, users, roles
