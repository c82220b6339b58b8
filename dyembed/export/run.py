"""`dyembed export WORKDIR --out DIR`: the serving state as a SavedModel plus ANN tables.

    DIR/export.json                 what was exported: state version, watermark, sizes, signatures
    DIR/saved_model/<version>/      the SavedModel (<version> = the state's version number, so a
                                    newer export is a higher TensorFlow Serving version)
    DIR/ann/users.parquet           user_id, vector [d + 1], cold_start, recent (most recent first)
    DIR/ann/items.parquet           item_id, vector [d + 1]   (dot product = score without β h)
    DIR/ann/items.faiss             exact inner-product index over the item rows (with faiss-cpu)

Everything is built in a hidden temp directory beside DIR and installed by renames, after the
saved model was loaded back and checked against the numpy scorer, so DIR never holds a half
export: a crash leaves the previous export (or, between the two renames of --force, the
previous one under .DIR.old-<pid>) and a temp directory that the next run removes.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from dyembed import __version__
from dyembed.artefacts import write_json
from dyembed.errors import ConfigError, InputDataError

log = logging.getLogger(__name__)

FORMAT = "dyembed-export"
FORMAT_VERSION = 1
MANIFEST = "export.json"
CHECK_USERS = 16  # users the loaded model is checked on before the export is installed


def check_out(out: Path, workdir: Path, force: bool) -> None:
    """--out must be a new or empty directory, or (with --force) an earlier export; never the work dir."""
    out_r, work_r = out.resolve(), workdir.resolve()
    if out_r == work_r or out_r in work_r.parents:
        raise ConfigError(f"--out {out} would hold the work directory {workdir}; choose another directory")
    if out.is_file() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"--out {out} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ConfigError(f"--out {out} exists and is not empty (add --force to replace an earlier export)")
        if not (out / MANIFEST).is_file():
            raise ConfigError(f"--out {out} is not a dyembed export (no {MANIFEST}): refusing to replace it, even with --force")


def _remove_stale(out: Path) -> None:
    """Temp directories of export runs that died (their pid is gone)."""
    for stale in out.parent.glob(f".{out.name}.tmp-*"):
        try:
            pid = int(stale.name.rsplit("-", 1)[1])
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(stale, ignore_errors=True)
        except PermissionError:
            pass


def _install(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def export(workdir: str | Path, out: str | Path, *, force: bool = False, faiss: bool = True,
           hashed_ids: bool = False) -> dict[str, Any]:
    """Write the export of `workdir`'s serving state to `out`; returns the summary (export.json's content).

    ConfigError (2): bad --out, a work dir with hashed user ids without `hashed_ids`; InputDataError (3):
    no work dir; StateError (4): no trained state, a corrupt or foreign one."""
    from dyembed.lock import WorkdirLock, settle_interrupted_writes
    from dyembed.preprocess.pseudonym import check_workdir_salt

    started = time.perf_counter()
    workdir, out = Path(workdir), Path(out)
    if not workdir.is_dir():
        raise InputDataError(f"work directory not found: {workdir}")
    check_out(out, workdir, force)
    settle_interrupted_writes(workdir)
    if check_workdir_salt(workdir, None, salt_required=False) and not hashed_ids:
        raise ConfigError(f"{workdir} has hashed user ids (preprocess --hash-user-ids): the export would be keyed by the "
                          "pseudonyms, so every request must carry them; pass --hashed-ids to export anyway")

    from dyembed.export.tables import load_tables

    # under the work dir's lock: a concurrent `update` could otherwise swap the state or append
    # to the log between the reads (the export would mix two versions); locked → exit 4 at once
    with WorkdirLock(workdir, command="export"):
        tables = load_tables(workdir)
    durations = {"load": round(time.perf_counter() - started, 3)}
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        summary = _write(tables, tmp, faiss=faiss, durations=durations, workdir=workdir, hashed_ids=hashed_ids)
        _install(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary["durations"]["total"] = round(time.perf_counter() - started, 3)
    summary["out"] = str(out)
    return summary


def _write(tables, tmp: Path, *, faiss: bool, durations: dict[str, float], workdir: Path,
           hashed_ids: bool) -> dict[str, Any]:
    from dyembed.envcheck import import_tensorflow
    from dyembed.export import ann, savedmodel

    tf = import_tensorflow()
    version = int(tables.info["state_version"])
    model_dir = tmp / "saved_model" / str(version)
    t0 = time.perf_counter()
    module = savedmodel.build_module(tf, tables)
    savedmodel.save(tf, module, model_dir)
    del module
    durations["saved_model"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    _check_loaded(tf, model_dir, tables)
    durations["check"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    ann_info = ann.write_tables(tables, tmp / "ann", faiss=faiss)
    durations["ann"] = round(time.perf_counter() - t0, 3)
    summary = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dyembed_version": __version__,
        "tensorflow_version": tf.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "workdir": str(workdir.resolve()),
        **tables.info,
        "n_users": tables.n_users,
        "n_items": tables.n_items,
        "dim": tables.dim,
        "feature_dim": tables.feature_dim,
        "history": tables.history,
        "uses_weights": tables.uses_weights,
        "user_ids": "pseudonyms (preprocess --hash-user-ids)" if hashed_ids else "raw",
        "saved_model": f"saved_model/{version}",
        "signatures": list(savedmodel.SIGNATURES),
        "saved_model_bytes": _dir_bytes(model_dir),
        "ann": ann_info,
        "ann_bytes": _dir_bytes(tmp / "ann"),
        "durations": durations,
    }
    if faiss and ann_info["faiss"] is None:
        summary["notes"] = ["faiss is not installed (pip install 'dyembed[faiss]'): no items.faiss written"]
    write_json(tmp / MANIFEST, summary)
    return summary


def _check_loaded(tf, model_dir: Path, tables) -> None:
    """The saved model, loaded back, scores a few users as the numpy scorer does (else nothing is installed)."""
    from dyembed.replay.scoring import score_users

    loaded = tf.saved_model.load(str(model_dir))
    rows = np.arange(min(CHECK_USERS, tables.n_users))
    rows = rows[~tables.cold()[rows]]
    if not len(rows):
        return
    users = tables.users
    got = loaded.signatures["recommend"](user_ids=tf.constant([str(u) for u in tables.user_ids[rows]]),
                                         k=tf.constant(1), exclude_seen=tf.constant(False))
    want = score_users(tables.theta, tables.V, users.U[rows], None if users.recent is None else users.recent[rows],
                       users.count[rows]).max(axis=1)
    if not np.allclose(got["scores"].numpy()[:, 0], want, rtol=1e-4, atol=1e-5):
        raise RuntimeError("the saved model's scores differ from dyembed's scorer; nothing was exported")
