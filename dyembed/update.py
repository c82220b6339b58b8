"""`dyembed update`: the nightly cron step in one call, under one work-directory lock.

    lock → preprocess --append (new log) → incremental encode → train --resume, which ranks each
    new event with its user's state BEFORE the event (θ frozen) → one JSON-able summary

The window's metrics come from the resume itself: `train --resume` replays exactly the rows after
the state's watermark with θ frozen, and ranks each event with its user's state before the event
(then the user steps), in the same single replay. So the window metrics are honest next-event
predictions on the very trajectory the saved state follows: no event is scored by a state that
has seen it. The window is never masked (repeats are real in a production stream).

Idempotence: an events file whose sha256 is already recorded in manifest.json's runs is not
appended again; encode and train are skipped when already up to date (nothing is rewritten, the
previous state versions are kept), and the summary says `"status": "already_applied"`. A run
killed after the append but before train is completed by the rerun (encode/train catch up).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dyembed.artefacts import read_json, require_file, sha256_file
from dyembed.config import Config, check_values
from dyembed.errors import ConfigError, InputDataError, StateError
from dyembed.lock import WorkdirLock

log = logging.getLogger(__name__)
Progress = Callable[[dict[str, Any]], None]


def state_version(manifest: dict[str, Any]) -> int:
    """The state's version number: the stored counter, or (older states) 1 + resumes so far."""
    from dyembed.state_versions import version_of

    return version_of(manifest)


def _applied_before(workdir: Path, digest: str) -> dict[str, Any] | None:
    """The preprocess run that already read an events file with this sha256, if any."""
    manifest = read_json(workdir / "manifest.json", "manifest")
    for run in manifest.get("runs", []):
        for record in run.get("inputs", []):
            if record.get("role") == "events" and record.get("sha256") == digest:
                return run
    return None


def _check_artefacts(workdir: Path) -> None:
    """The work dir's preprocess outputs are the ones manifest.json describes (sizes): a preprocess
    killed between its renames would otherwise surface later as a confusing count mismatch."""
    manifest = read_json(workdir / "manifest.json", "manifest")
    outputs = manifest.get("outputs") if isinstance(manifest, dict) else None
    for name, record in (outputs or {}).items():
        path = workdir / name
        if isinstance(record, dict) and path.is_file() and path.stat().st_size != record.get("bytes"):
            raise StateError(f"{path} does not match {workdir / 'manifest.json'} ({path.stat().st_size} bytes, manifest "
                             f"says {record.get('bytes')}): an interrupted or foreign write; restore the work dir's "
                             "artefacts (or preprocess again from the raw logs)")


def _pin_encoder(workdir: Path, cfg: Config) -> str | None:
    """Encode with the encoder the work dir was encoded with (its fingerprint), not today's config:
    old items must keep their vectors and new ones must live in the same space as θ."""
    path = workdir / "encode_manifest.json"
    if not path.is_file():
        return None
    manifest = read_json(path, "encode manifest")
    fp = manifest.get("fingerprint") or {}
    ecfg = cfg.encode
    ecfg.adapt_steps = 0  # an adapted model is pinned by its directory; never adapt again nightly
    for key in ("prefix", "normalize", "dtype"):
        if key in fp:
            setattr(ecfg, key, fp[key])
    if fp.get("encoder") == "hashing":
        ecfg.hashing_dim = int(fp.get("hashing_dim", ecfg.hashing_dim))
        ecfg.seed = int(fp.get("seed", ecfg.seed))
        return "hashing"
    for key in ("pooling", "max_length", "input_field"):
        if key in fp:
            setattr(ecfg, key, fp[key])
    model_dir = fp.get("model_dir") or (manifest.get("summary") or {}).get("model_dir")
    return f"hf:{model_dir}" if model_dir else None


def _encode_up_to_date(workdir: Path) -> bool:
    path = workdir / "encode_manifest.json"
    if not path.is_file() or not (workdir / "item_embeddings.parquet").is_file():
        return False
    record = (read_json(path, "encode manifest").get("items_file") or {})
    return record.get("sha256") == sha256_file(workdir / "items.parquet")


def window_metrics(ranks: np.ndarray, users: np.ndarray, ks: list[int]) -> dict[str, Any]:
    """Per-event and per-user means of Recall/NDCG/MRR@K of the window's prequential ranks."""
    from dyembed.evaluate.metrics import RankAccumulator

    acc = RankAccumulator(ks)
    acc.update(np.asarray(ranks, np.int64), np.asarray(users, np.int64))
    res = acc.result(bootstrap=0)
    rnd = lambda d: {k: (None if v is None else round(v, 6)) for k, v in d.items()}  # noqa: E731
    return {"events": res["events"], "users": res["users"], "per_event": rnd(res["per_event"]),
            "per_user": rnd(res["per_user"])}


def update(workdir: str | Path, cfg: Config, *, new_log: str | Path, new_items: str | Path | None = None,
           progress: Progress | None = None, user_id_salt: str | None = None) -> dict[str, Any]:
    """Append `new_log` to `workdir` and bring encode + state up to date; return the run's summary.

    `user_id_salt`: the salt of a work dir preprocessed with --hash-user-ids (checked first, then
    given to preprocess --append; ConfigError when missing, different, or for an unhashed dir).

    Raises InputDataError (3) for unusable inputs, ConfigError (2), StateError (4) when the work
    dir is locked, has no trained state, or its state is corrupt.
    `progress(record)` receives {"phase": "preprocess"|"encode"|"window"|"resume", "done", "total"}.
    """
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise InputDataError(f"work directory not found: {workdir}")
    check_values(cfg)
    with WorkdirLock(workdir, command="update", wait=cfg.runtime.lock_wait):
        return _update(workdir, copy.deepcopy(cfg), Path(new_log), None if new_items is None else Path(new_items), progress,
                       user_id_salt)


def _update(workdir: Path, cfg: Config, new_log: Path, new_items: Path | None, progress: Progress | None,
            user_id_salt: str | None = None) -> dict[str, Any]:
    from dyembed.encode.run import encode
    from dyembed.preprocess.pseudonym import check_workdir_salt
    from dyembed.preprocess.run import preprocess
    from dyembed.replay.io import events_rows
    from dyembed.replay.state import read_manifest, state_dir
    from dyembed.replay.train import resume_with_window_ranks
    from dyembed.state_versions import lineage_problems, verify_dir

    started = time.perf_counter()
    durations: dict[str, float] = {}
    # no trained state, or a damaged one → StateError (exit 4) before anything is touched
    check = verify_dir(state_dir(workdir))
    if not check["ok"]:
        raise StateError(f"{check['problem']}; see `dyembed state verify {workdir}` (and `dyembed state rollback`)")
    before = read_manifest(workdir)
    _check_artefacts(workdir)
    require_file(new_log, "new events file")
    if new_items is not None:
        require_file(new_items, "new items file")
    if cfg.data.allow_late == "keep":
        raise ConfigError("data.allow_late = keep inserts rows before the state's watermark, which `update` cannot "
                          "replay incrementally; use drop or clamp (or preprocess + train from scratch)")
    # --hash-user-ids: the same salt as the work dir's (also when the file turns out to be applied already)
    check_workdir_salt(workdir, user_id_salt)
    # the state must belong to this work dir's files before anything is appended to them: a log
    # rewritten under it would lose events silently (dyembed/lineage.py)
    foreign = lineage_problems(workdir, [state_dir(workdir)])[state_dir(workdir)]
    if foreign:
        raise StateError(foreign)
    cfg.data.events = str(new_log)
    if new_items is not None:
        cfg.data.items = str(new_items)

    digest = sha256_file(new_log)
    earlier = _applied_before(workdir, digest)
    summary: dict[str, Any] = {"workdir": str(workdir), "new_log": str(new_log), "new_log_sha256": digest,
                               "status": "updated", "state_version_before": state_version(before)}
    t0 = time.perf_counter()
    if earlier is not None:
        summary["status"] = "already_applied"
        summary["already_applied_at"] = earlier.get("started_at")
        summary.update(events_in=0, events_added=0, events_rejected=0, rejected={}, new_users=0, new_items=0)
        log.info("events file %s was already appended (%s); nothing to add", new_log, earlier.get("started_at"))
    else:
        pre = preprocess(workdir, cfg, append=True, user_id_salt=user_id_salt,
                         progress=(lambda n: progress({"phase": "preprocess", "done": n, "total": None})) if progress else None)
        summary.update(events_in=pre["rows_in"], events_added=pre["events_out"], events_rejected=pre["rejected_total"],
                       rejected=pre["rejected"], new_users=pre["new_users"], new_items=pre["new_items"])
    durations["preprocess"] = round(time.perf_counter() - t0, 3)

    t0 = time.perf_counter()
    if _encode_up_to_date(workdir):
        summary["items_encoded"] = 0
    else:
        pinned = _pin_encoder(workdir, cfg)
        old_fp = read_json(workdir / "encode_manifest.json", "encode manifest").get("fingerprint_id") \
            if (workdir / "encode_manifest.json").is_file() else None
        enc = encode(workdir, cfg, model=pinned,
                     progress=(lambda d, t: progress({"phase": "encode", "done": d, "total": t})) if progress else None)
        if old_fp is not None and enc["fingerprint_id"] != old_fp:
            raise StateError(f"the encoder's fingerprint changed ({old_fp} → {enc['fingerprint_id']}): item vectors no "
                             f"longer match the trained state; run `dyembed train {workdir}` again")
        summary["items_encoded"] = enc["items_encoded"]
    durations["encode"] = round(time.perf_counter() - t0, 3)

    t0 = time.perf_counter()
    mark = before["watermark"]["rows"]
    pending = events_rows(workdir) - mark
    metrics = None
    users_updated = 0
    if pending > 0:
        res, ranks, users = resume_with_window_ranks(
            workdir, cfg, progress=(lambda r: progress({"phase": "resume", "done": r["done"], "total": r["total"]}))
            if progress else None)
        durations["train_resume"] = round(time.perf_counter() - t0, 3)
        metrics = window_metrics(ranks, users, list(cfg.evaluate.ks))
        users_updated = int(len(np.unique(users)))
        summary["events_replayed"] = res["new_events"]
    else:
        summary["events_replayed"] = 0
        if summary["status"] == "updated" and summary["events_added"] == 0:
            summary["status"] = "nothing_new"
    after = read_manifest(workdir)
    summary.update(users_updated=users_updated, metrics=metrics, state_version=state_version(after),
                   watermark=after["watermark"], users=after.get("n_users"), items=after.get("n_items"))
    warnings = []
    n_future = (summary.get("rejected") or {}).get("future_timestamp", 0)
    if n_future:
        # preprocess quarantined them (and logged it); the JSON summary tells the cron consumer too
        warnings.append(f"{n_future} row(s) dated more than {cfg.data.max_future_days:g} days in the future were "
                        "quarantined (future_timestamp, data.max_future_days): check the log's clock")
    # still possible with data.max_future_days < 0 (check off) or > 1, or a log appended before the check existed
    future = int(after["watermark"].get("last_ts") or 0) - int(time.time())
    if future > 86_400:
        # one far-future timestamp moves the watermark: later nights' events would all count as late
        warnings.append(f"the watermark time is {future / 86_400:,.0f} days in the future: check the log's timestamps "
                        "(events older than it are handled by data.allow_late)")
        log.warning("%s", warnings[-1])
    summary["warnings"] = warnings
    durations["total"] = round(time.perf_counter() - started, 3)
    summary["durations"] = durations
    from dyembed.tracking import log_update

    log_update(cfg.train.tensorboard, summary, cfg)
    log.info("update %s: %s, %d events added, %d rejected, %d replayed, state version %d", workdir, summary["status"],
             summary["events_added"], summary["events_rejected"], summary["events_replayed"], summary["state_version"])
    return summary
