"""User state in memory (`UserState`) and the `state/` directory on disk.

On disk (`WORKDIR/state/`, format_version 2; documented in docs/model.md):

    manifest.json   format, version, watermark {rows, last_ts}, counts, θ and user-array shapes,
                    lineage (what the state consumed: dyembed/lineage.py), the evaluation
                    snapshot's facts (`eval`), training summary, sha256 + size of every file below
    config.toml     the resolved config the state was trained with
    theta.npz       P [D,d], b [n_items], log_tau [], log_alpha [] or [d], u0 [d],
                    E [n_items,d] (item residual, optional), logq [n_items] (sampled loss, optional)
    <array>.npy     the serving users after every event row of the watermark, one file per array
                    of UserState.arrays(): U [n_users, d], slots [n_slots, n_users, d],
                    count [n_users] int32, last_ts [n_users] int64, recent [n_users, H] int32 (the
                    user's last H items, a ring buffer, -1 = empty; only with model.history > 0)
    eval/           the evaluation snapshot (only for a loo / temporal split): the same user arrays
                    at the split boundary (after each user's train + validation rows), and
                    roles.npy, the split role of each event row used in training [rows] int8

Writes are atomic (StateWriter): every file goes to `state.tmp-<pid>/` through dyembed.artefacts,
then the directory is installed by renames only (dyembed.state_versions.install_state_dir): older
versions shift down (state.prev → state.prev.2 …, `runtime.keep_states` kept), `state/` becomes
`state.prev/`, the new directory `state/`. A crash leaves either the old state or the new one in
`state/`; if it struck between the last two renames, `load_state` falls back to `state.prev/`.
Nothing with a NaN or an infinity is ever written, nor loaded (StateError, exit 4).
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
from dyembed.artefacts import atomic_path, file_record, sha256_file, write_json, write_text
from dyembed.errors import StateError

log = logging.getLogger(__name__)

FORMAT = "dyembed-state"
FORMAT_VERSION = 2
STATE_DIR = "state"
PREV_DIR = "state.prev"
EVAL_DIR = "eval"  # the evaluation snapshot, inside a state directory
ROLES_FILE = "roles.npy"
USER_FILES = ("U", "slots", "count", "last_ts")  # every state has them
OPTIONAL_USER_FILES = ("recent",)  # saved when present (UserState.arrays())


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


def _nonfinite(values: np.ndarray) -> int:
    return 0 if not np.issubdtype(values.dtype, np.floating) else int(values.size - np.count_nonzero(np.isfinite(values)))


def nonfinite_error(what: str, count: int) -> StateError:
    return StateError(f"refusing to write a state with non-finite numbers: {what} has {count:,} NaN/inf values (the "
                      "replay diverged: lower model.step_size or train.lr, or check the events' weights); the previous "
                      "state is kept")


def _save_npy(path: Path, array: Any) -> None:
    """Write one array (in chunks for a StreamedArray); StateError on any NaN/inf, before the rename."""
    bad = 0
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            if isinstance(array, StreamedArray):
                np.lib.format.write_array_header_1_0(
                    fh, {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False, "shape": array.shape})
                for chunk in array.chunks():
                    chunk = np.ascontiguousarray(chunk, array.dtype)
                    bad += _nonfinite(chunk)
                    fh.write(chunk.tobytes())
            else:
                array = np.ascontiguousarray(array)
                bad = _nonfinite(array)
                np.save(fh, array, allow_pickle=False)
        if bad:
            raise nonfinite_error(path.name, bad)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    for name, values in arrays.items():
        if _nonfinite(values):
            raise nonfinite_error(f"{path.name} ({name})", _nonfinite(values))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


class StateWriter:
    """A new state version, built file by file in `state.tmp-<pid>/`, installed by `commit()`.

        with StateWriter(workdir, keep=2) as w:
            w.users(snapshot, EVAL_DIR)       # e.g. the evaluation snapshot, before replaying on
            w.array(f"{EVAL_DIR}/{ROLES_FILE}", roles)
            w.users(serving)
            w.commit(theta=…, manifest=…, config_toml=…)

    On any error (also a NaN/inf found while writing) the temp directory is removed and the
    current state stays as it was. The manifest gets `version`: 1 + the highest version of any
    state directory present, so versions only grow, even across `dyembed state rollback`."""

    def __init__(self, workdir: str | Path, *, keep: int = 1):
        self.workdir, self.keep = Path(workdir), keep
        self.tmp = self.workdir / f"state.tmp-{os.getpid()}"
        self.records: dict[str, dict[str, Any]] = {}  # files taken over from another version

    def __enter__(self) -> "StateWriter":
        for stale in self.workdir.glob("state.tmp-*"):
            if stale.is_symlink():  # never dyembed's: removed, never followed
                stale.unlink()
            shutil.rmtree(stale, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)

    def array(self, name: str, values: Any) -> None:
        _save_npy(self.tmp / name, values)

    def users(self, users: UserState, sub: str = "") -> dict[str, Any]:
        """Every user array as `<sub>/<name>.npy`; returns their shapes and dtypes for the manifest."""
        arrays = users.arrays()
        for name, values in arrays.items():
            self.array(f"{sub}/{name}.npy" if sub else f"{name}.npy", values)
        return {"user_shapes": {name: list(v.shape) for name, v in arrays.items()},
                "user_dtypes": {name: np.dtype(v.dtype).name for name, v in arrays.items()}}

    def link(self, source: Path, names: dict[str, dict[str, Any]]) -> None:
        """Take files of an installed version over unchanged (hard links; a copy where links fail),
        after checking them against their manifest records."""
        for name, record in names.items():
            src, dst = source / name, self.tmp / name
            if not src.is_file() or src.stat().st_size != record["bytes"] or sha256_file(src) != record["sha256"]:
                raise StateError(f"state file {src} does not match its checksum in manifest.json (corrupt or edited)")
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
            self.records[name] = {"bytes": record["bytes"], "sha256": record["sha256"]}

    def commit(self, *, theta: dict[str, np.ndarray], manifest: dict[str, Any], config_toml: str) -> Path:
        from dyembed.state_versions import install_state_dir, next_version

        theta = {k: np.asarray(v) for k, v in theta.items()}
        _save_npz(self.tmp / "theta.npz", theta)
        write_text(self.tmp / "config.toml", config_toml)
        files = {}
        for path in sorted(p for p in self.tmp.rglob("*") if p.is_file()):
            name = path.relative_to(self.tmp).as_posix()
            if name in self.records:
                files[name] = self.records[name]
            else:
                record = file_record(path)
                files[name] = {"bytes": record["bytes"], "sha256": record["sha256"]}
        full = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "dyembed_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "version": next_version(self.workdir),
            **manifest,
            "theta_shapes": {k: list(np.shape(v)) for k, v in theta.items()},
            "files": files,
        }
        write_json(self.tmp / "manifest.json", full)
        install_state_dir(self.workdir, self.tmp, keep=self.keep)
        return self.workdir / STATE_DIR


def save_state(workdir: str | Path, *, users: UserState, theta: dict[str, np.ndarray], manifest: dict[str, Any],
               config_toml: str, keep: int = 1, snapshot: tuple[UserState, np.ndarray] | None = None) -> Path:
    """Write `WORKDIR/state/` atomically in one go: the serving users, θ and, when given, the
    evaluation snapshot (users at the split boundary, roles per row) in `eval/`."""
    with StateWriter(workdir, keep=keep) as writer:
        if snapshot is not None:
            snap_users, roles = snapshot
            shapes = writer.users(snap_users, EVAL_DIR)
            writer.array(f"{EVAL_DIR}/{ROLES_FILE}", np.asarray(roles, np.int8))
            manifest = {**manifest, "eval": {**(manifest.get("eval") or {}), **shapes}}
        return writer.commit(theta=theta, manifest={**manifest, **writer.users(users)}, config_toml=config_toml)


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


def check_format(directory: Path, manifest: dict[str, Any], workdir: str | Path) -> None:
    version = manifest.get("format_version")
    if version == FORMAT_VERSION:
        return
    if version == 1:
        raise StateError(f"{directory} was written by an older dyembed (state format 1: no lineage record, and under "
                         f"loo/temporal it left the test rows out of the serving state): run `dyembed train {workdir}` again")
    raise StateError(f"{directory / 'manifest.json'} is not a dyembed state of format version {FORMAT_VERSION}")


def read_manifest(workdir: str | Path) -> dict[str, Any]:
    from dyembed.state_versions import read_state_manifest

    directory = state_dir(workdir)
    manifest = read_state_manifest(directory)  # corrupt / wrong-shaped JSON → StateError naming the file
    check_format(directory, manifest, workdir)
    return manifest


def no_snapshot_error(workdir: str | Path, manifest: dict[str, Any]) -> StateError:
    """Why a state has no evaluation snapshot, and what to run."""
    split = manifest.get("split") or {}
    dropped = (manifest.get("eval_dropped") or "")
    if dropped:
        why = dropped
    elif split.get("protocol") == "none":
        why = "it was trained with --protocol none (every event is a training event: there is no test split)"
    else:
        why = "it has none"
    return StateError(f"{state_dir(workdir)} cannot be evaluated: {why}; run `dyembed train {workdir} --protocol loo` "
                      "(or --protocol temporal) to fit θ on a split and keep the evaluation snapshot")


def _finite_chunks(array: StreamedArray, path: Path) -> StreamedArray:
    def gen() -> Iterator[np.ndarray]:
        for chunk in array.chunks():
            if _nonfinite(chunk):
                raise _nonfinite_state(path)
            yield chunk

    return StreamedArray(array.shape, array.dtype, gen)


def _nonfinite_state(path: Path) -> StateError:
    return StateError(f"state file {path} holds non-finite numbers (NaN/inf): the state is unusable; roll back "
                      "(`dyembed state rollback`) or train again")


def load_state(workdir: str | Path, *, verify: bool = True, streamed: bool = False, view: str = "serving"
               ) -> tuple[dict[str, Any], dict[str, np.ndarray], UserState, np.ndarray | None]:
    """(manifest, θ arrays, user state, roles) from `WORKDIR/state/`; checksums verified.

    view="serving": the users after every event of the watermark (recommend, update, resume);
    roles is None. view="eval": the evaluation snapshot (users at the split boundary) and the
    role of each row it was split on; StateError when the state has no snapshot (protocol none).
    streamed=True: the user arrays are StreamedArray readers (the engine fills its table from
    them chunk by chunk) instead of in-memory arrays. Any NaN/inf is a StateError."""
    if view not in ("serving", "eval"):
        raise ValueError(view)
    directory = state_dir(workdir)
    manifest = read_manifest(workdir)
    sub = ""
    if view == "eval":
        if not isinstance(manifest.get("eval"), dict):
            raise no_snapshot_error(workdir, manifest)
        sub = EVAL_DIR + "/"
    for name, record in manifest.get("files", {}).items():
        if name.startswith(EVAL_DIR + "/") != bool(sub) and name not in ("theta.npz", "config.toml"):
            continue  # the other view's arrays are not read
        path = directory / name
        if not path.is_file():
            raise StateError(f"state file missing: {path}")
        if path.stat().st_size != record["bytes"] or (verify and sha256_file(path) != record["sha256"]):
            raise StateError(f"state file {path} does not match its checksum in manifest.json (corrupt or edited)")
    shapes = (manifest["eval"] if sub else manifest).get("user_shapes") or {}
    arrays: dict[str, Any] = {}
    try:
        with np.load(directory / "theta.npz", allow_pickle=False) as npz:
            theta = {k: npz[k] for k in npz.files}
        names = list(USER_FILES) + [n for n in OPTIONAL_USER_FILES if f"{sub}{n}.npy" in manifest.get("files", {})]
        for name in names:
            path = directory / f"{sub}{name}.npy"
            if streamed:
                arrays[name] = _finite_chunks(npy_chunks(path), path)
            else:
                arrays[name] = np.load(path, allow_pickle=False)
                if _nonfinite(arrays[name]):
                    raise _nonfinite_state(path)
        roles = np.load(directory / EVAL_DIR / ROLES_FILE, allow_pickle=False) if sub else None
    except (OSError, ValueError) as exc:
        raise StateError(f"cannot read the state in {directory}: {exc}") from None
    if any(_nonfinite(v) for v in theta.values()):
        raise _nonfinite_state(directory / "theta.npz")
    users = UserState(**arrays)
    if any(list(arrays[name].shape) != shapes.get(name, list(arrays[name].shape)) for name in arrays) or \
            len(users.U.shape) != 2 or len(users.slots.shape) != 3 or tuple(users.slots.shape[1:]) != tuple(users.U.shape):
        raise StateError(f"state arrays in {directory / sub} have inconsistent shapes")
    return manifest, theta, users, roles
