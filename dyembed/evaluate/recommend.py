"""`dyembed recommend`: the top-K items for users from the current state.

Scores are the model's own (dyembed.replay.scoring: s_j = (u + c W) · v_j / τ + b_j + β h_j), with
the user's serving state after their last replayed event (the serving state has consumed every
event up to its watermark, test rows of the training split included; its lineage is checked
against the work dir first, so a renumbered users.parquet or a rewritten log is refused, never
served). Everything here is numpy: TensorFlow is never imported.

Seen items: `mask_seen` (evaluate.mask_seen, `--mask-seen`, the same key and rule as evaluate:
dyembed/masking.py decides on the whole log; auto masks unless repeats are common) removes the
items of the user's events (dyembed/replay/seen.py) from their list.

Users: an id that users.parquet does not know is an InputDataError (exit 3) naming how many (and,
unless the ids are hashed, which); with `allow_unknown` they get the cold-start list (u = the
learned prior u0) and `unknown` = True in the output. A known user the state has no step for yet
(events appended after the last train) gets the cold-start list with a note.

All users (no ids given) are streamed to the output file in blocks of users, so memory stays at
one [block, n_items] score matrix plus the event log.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dyembed.artefacts import atomic_path, require_file
from dyembed.config import Config, check_values
from dyembed.errors import ConfigError, InputDataError
from dyembed.evaluate import baselines as bl
from dyembed.lock import settle_interrupted_writes
from dyembed.masking import decide as decide_masking
from dyembed.replay.scoring import score_users
from dyembed.replay.seen import seen_items

log = logging.getLogger(__name__)

FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl"}
SNIPPET_CHARS = 80
MAX_RETURNED_ROWS = 10_000  # rows kept in the returned summary (the file gets all of them)


def read_users_file(path: str | Path) -> list[str]:
    """One user id per line; blank lines and a `user_id` header line are skipped."""
    path = require_file(path, "users file")
    ids = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    ids = [i for i in ids if i]
    if ids and ids[0] == "user_id":
        ids = ids[1:]
    if not ids:
        raise InputDataError(f"users file {path} lists no user ids")
    return ids


class _Catalogue:
    """Item ids and text snippets, indexed by item_idx."""

    def __init__(self, workdir: Path):
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        path = require_file(workdir / "items.parquet", "items file")
        table = pq.read_table(path, columns=["item_idx", "item_id", "text"]).sort_by("item_idx")
        self.item_ids = np.asarray(table.column("item_id").to_pylist(), dtype=object)
        text = pc.utf8_slice_codeunits(pc.fill_null(table.column("text"), ""), 0, SNIPPET_CHARS + 1)
        self.snippets = np.asarray([t if len(t) <= SNIPPET_CHARS else t[: SNIPPET_CHARS - 1] + "…"
                                    for t in text.to_pylist()], dtype=object)


def _user_index(workdir: Path) -> dict[str, int]:
    import pyarrow.parquet as pq

    path = require_file(workdir / "users.parquet", "users file")
    table = pq.read_table(path, columns=["user_idx", "user_id"])
    return dict(zip(table.column("user_id").to_pylist(), table.column("user_idx").to_pylist()))


def output_schema():
    """The Arrow schema of recommend's rows (files, and the Python API's tables)."""
    import pyarrow as pa

    return pa.schema([("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()),
                      ("score", pa.float32()), ("text", pa.string()), ("cold_start", pa.bool_()),
                      ("unknown", pa.bool_())])


def _writer(path: Path, fmt: str):
    """A (write(rows dict of columns), close()) pair for the output format."""
    import pyarrow as pa

    schema = output_schema()
    if fmt == "parquet":
        import pyarrow.parquet as pq

        w = pq.ParquetWriter(path, schema, compression="zstd")
        return (lambda cols: w.write_table(pa.table(cols, schema=schema))), w.close
    if fmt == "csv":
        import pyarrow.csv as pacsv

        w = pacsv.CSVWriter(path, schema)
        return (lambda cols: w.write_table(pa.table(cols, schema=schema))), w.close
    fh = open(path, "w", encoding="utf-8")

    def write(cols: dict[str, Any]) -> None:
        keys = list(cols)
        for values in zip(*(cols[k] for k in keys)):
            row = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in zip(keys, values)}
            row["score"] = round(float(row["score"]), 6)
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")

    return write, fh.close


def score_topk(scores: np.ndarray, k: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k item indices and scores [b, k] of a score block, masked items excluded; -1 / NaN pad
    when fewer than k items are left."""
    top = bl.topk_items(scores, k, mask)
    top_scores = np.where(top >= 0, np.take_along_axis(scores, np.maximum(top, 0), 1), np.nan)
    return top, top_scores


def recommend(workdir: str | Path, cfg: Config, *, user_ids: Sequence[str] | None = None,
              users_file: str | Path | None = None, k: int = 10, mask_seen: str | None = None,
              allow_unknown: bool = False, out: str | Path | None = None,
              progress: Callable[[int, int], None] | None = None, user_id_salt: str | None = None) -> dict[str, Any]:
    """Top-k lists for the given users (ids and/or a users file), or for every user when none is
    given (then `out` is required). Returns a summary with the rows (up to 10,000) and notes.

    `mask_seen` auto | on | off (None: cfg.evaluate.mask_seen). Work dirs preprocessed with
    --hash-user-ids need `user_id_salt` (ConfigError, exit 2, without it): raw ids are hashed for
    the lookup, stored pseudonyms are taken as they are, and the output shows pseudonyms only."""
    from dyembed.replay import api

    workdir = Path(workdir)
    settle_interrupted_writes(workdir)  # a writer killed mid-rename: finish it first
    check_values(cfg)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"--k must be a positive integer, got {k!r}")
    k = int(k)
    setting = cfg.evaluate.mask_seen if mask_seen is None else mask_seen
    fmt = None
    if out is not None:
        fmt = FORMATS.get(Path(out).suffix.lower())
        if fmt is None:
            raise ConfigError(f"--out {out}: unknown format; use a .parquet, .csv or .jsonl file name")
    requested: list[str] | None = [str(u) for u in (user_ids or [])]
    if users_file is not None:
        requested += read_users_file(users_file)
    if not requested:
        requested = None
        if out is None:
            raise ConfigError("recommending for all users needs --out FILE (.parquet, .csv or .jsonl)")
    # -- hashed user ids (preprocess --hash-user-ids; owner: preprocess): the salt first, before any work --
    from dyembed.preprocess.pseudonym import Pseudonymiser, check_workdir_salt, lookup_ids

    ids_hashed = check_workdir_salt(workdir, user_id_salt, salt_required=True)

    # the command's runtime settings, not the saved state's (nothing here runs in TensorFlow)
    trained = api.load_trained(workdir, runtime=cfg.runtime)
    V = np.asarray(trained.item_matrix(), np.float32)
    trained.release_features()  # only V is needed from here (X: 1.5 GB at 1M items × D 384)
    U_state = trained.state.U
    recent_state = trained.state.recent
    prior = np.asarray(trained.prior(), dtype=np.float64)
    catalogue = _Catalogue(workdir)
    n_items = V.shape[0]
    index = _user_index(workdir)
    if requested is not None:
        requested = lookup_ids(requested, index, Pseudonymiser(user_id_salt) if user_id_salt is not None else None)

    notes: list[str] = []
    if requested is None:
        ids = np.empty(len(index), dtype=object)
        for uid, idx in index.items():
            ids[idx] = uid
        targets: list[tuple[str, int]] = [(str(ids[i]), i) for i in range(len(ids))]
    else:
        targets = [(uid, index.get(uid, -1)) for uid in requested]
    unknown = [uid for uid, idx in targets if idx < 0]
    if unknown:
        # hashed ids: a count only (the lookup ids are pseudonyms of whatever was typed)
        shown = "" if ids_hashed else ": " + ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        what = f"{len(unknown)} of {len(targets)} user id(s) not in {workdir}/users.parquet{shown}"
        if not allow_unknown:
            raise InputDataError(f"{what}; check the ids{' (and the salt)' if ids_hashed else ''}, "
                                 "or pass --allow-unknown to list them with the cold-start list")
        notes.append(f"{what}: cold-start list from the learned prior (unknown = true)")
    # a user the state has no row for yet (added after the last train) → the prior too
    never_updated = np.asarray(trained.state.count) == 0
    idle = sum(1 for _, idx in targets if idx >= U_state.shape[0] or (idx >= 0 and never_updated[idx]))
    if idle:
        notes.append(f"{idle} user(s) have no replayed event yet (events appended after the last train / update: run "
                     "`dyembed train --resume`): their list is the cold-start list too")

    log_ = _load_log(workdir)
    masking = decide_masking(setting, log_.user_idx, log_.item_idx, cfg.evaluate.repeat_threshold)
    seen = seen_items(max(len(index), U_state.shape[0]), log_.user_idx, log_.item_idx) if masking.masked else None
    del log_

    per_block = bl.block_size(n_items, cfg.evaluate.max_block_mb)
    rows: list[dict[str, Any]] = []
    written = 0
    sink = None
    n_state = U_state.shape[0]
    with _maybe_atomic(out) as tmp:
        if tmp is not None:
            sink = _writer(tmp, fmt)
        try:
            for lo in range(0, len(targets), per_block):
                block = targets[lo:lo + per_block]
                idx = np.array([i for _, i in block], dtype=np.int64)
                unknown_row = idx < 0
                in_state = (idx >= 0) & (idx < n_state)
                safe = np.where(in_state, idx, 0)
                cold = ~in_state | never_updated[safe]
                U = np.where(cold[:, None], prior[None, :], U_state[safe])
                recent = count = None
                if recent_state is not None:  # cold users: no recent items
                    recent = np.where(cold[:, None], -1, recent_state[safe])
                    count = np.where(cold, 0, trained.state.count[safe])
                mask = None
                if seen is not None:
                    mask = seen.mask(np.maximum(idx, 0), n_items)
                    mask[unknown_row] = False  # an unknown id has no events; a known cold user keeps its seen items
                top, top_scores = score_topk(score_users(trained.theta, V, U, recent, count), k, mask)
                cols = _columns(block, top, top_scores, cold, unknown_row, catalogue)
                if sink is not None:
                    sink[0](cols)
                written += len(cols["user_id"])
                if len(rows) < MAX_RETURNED_ROWS:
                    keys = list(cols)
                    rows.extend(dict(zip(keys, vals)) for vals in zip(*(cols[c] for c in keys)))
                if progress:
                    progress(min(lo + per_block, len(targets)), len(targets))
        finally:
            if sink is not None:
                sink[1]()
    state_manifest = trained.manifest
    return {
        "k": k, "mask_seen": masking.to_dict(), "exclude_seen": masking.masked,
        "users": len(targets), "unknown_users": len(unknown), "cold_start_users": len(unknown) + idle,
        "state_version": state_manifest.get("version"),
        "rows": rows[:MAX_RETURNED_ROWS], "rows_written": written if out is not None else 0,
        "out": str(out) if out is not None else None, "format": fmt, "notes": notes,
    }


def _columns(block, top, top_scores, cold, unknown, catalogue: _Catalogue) -> dict[str, list]:
    valid = top >= 0
    n_per = valid.sum(1)
    user_id = np.repeat(np.array([u for u, _ in block], dtype=object), n_per)
    rank = np.concatenate([np.arange(1, n + 1) for n in n_per]) if len(n_per) else np.zeros(0, int)
    items = top[valid]
    return {
        "user_id": user_id.tolist(),
        "rank": rank.astype(np.int32).tolist(),
        "item_id": catalogue.item_ids[items].tolist(),
        "score": top_scores[valid].astype(np.float32).tolist(),
        "text": catalogue.snippets[items].tolist(),
        "cold_start": np.repeat(cold, n_per).tolist(),
        "unknown": np.repeat(unknown, n_per).tolist(),
    }


class _maybe_atomic:
    """atomic_path(out) when out is given, else a no-op context yielding None."""

    def __init__(self, out):
        self._cm = atomic_path(out) if out is not None else None

    def __enter__(self):
        return self._cm.__enter__() if self._cm else None

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc) if self._cm else False


def _load_log(workdir: Path) -> bl.EventLog:
    from dyembed.evaluate.run import load_event_log

    return load_event_log(workdir)
