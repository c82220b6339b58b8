"""Lineage: what a user state consumed, and the check that the work directory still holds it.

A state means something only together with the artefacts it was replayed from: the events it
consumed (a prefix of events.parquet), the id maps (users.parquet / items.parquet: which id each
row of the state stands for), the item vectors (item_embeddings.parquet and the encoder that made
them) and the preprocess settings that define the log. `train` records digests of all of them in
the state manifest (`lineage`; the evaluation snapshot's own in `eval.lineage`), and every command
that reads a state recomputes them from the work dir and refuses (StateError, exit 4) what does
not belong together, naming what differs and what to run.

Digests are sha256 over decoded values, never file bytes, so a file rewritten with the same
content (every `preprocess --append` rewrites events.parquet) keeps its digest:

- events: chunks of EVENT_CHUNK_ROWS rows; a chunk's digest covers user_idx (int32), item_idx
  (int32), ts (int64) and weight (float32, when the column exists), column by column. A prefix is
  verified in one streaming pass, and the first differing chunk says where the log changed.
- users / items: the user_id / item_id of the first n rows (by index): lengths, then bytes.
- item vectors: the stored vectors (as float32) of the first n items, in chunks; beside them the
  encoder's fingerprint id from encode_manifest.json, which tells "another model" (retrain) from
  "some item texts were re-encoded" (which `train --resume` takes in).
- the evaluation snapshot: the rows it consumed (the split's non-test rows), in row order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dyembed.errors import StateError

LINEAGE_FORMAT = 1
EVENT_CHUNK_ROWS = 1 << 20
VECTOR_CHUNK_ROWS = 1 << 14
EVENT_DTYPES = {"user_idx": "<i4", "item_idx": "<i4", "ts": "<i8", "weight": "<f4"}
VECTOR_DTYPES = {"embedding": "<f4"}
# preprocess settings a state's log is defined by: appends keep them (preprocess refuses others)
PREPROCESS_KEYS = ("format", "text_template", "language")


class RowDigest:
    """sha256 digests of a table's rows in chunks of `chunk_rows`, fed in pieces of any size.

    `marks`: prefix lengths whose digests are wanted besides the whole table's (a state's
    watermark), kept with one copy of the running hash, so one pass serves both."""

    def __init__(self, dtypes: Mapping[str, str], chunk_rows: int, marks: Iterable[int] = ()):
        self.dtypes = dict(dtypes)
        self.chunk_rows = int(chunk_rows)
        self.marks = sorted({int(m) for m in marks if int(m) > 0})
        self.rows = 0
        self.chunks: list[str] = []
        self._partial: dict[int, str] = {}
        self._new_chunk()

    def _new_chunk(self) -> None:
        self._hashers = {name: hashlib.sha256() for name in self.dtypes}
        self._in_chunk = 0

    def _chunk_digest(self, hashers: dict[str, Any], rows: int) -> str:
        outer = hashlib.sha256(f"{rows}".encode())
        for name in self.dtypes:
            outer.update(name.encode())
            outer.update(hashers[name].digest())
        return outer.hexdigest()

    def update(self, **arrays: np.ndarray) -> None:
        if set(arrays) != set(self.dtypes):
            raise ValueError(f"RowDigest columns {sorted(self.dtypes)}, got {sorted(arrays)}")
        arrays = {k: np.ascontiguousarray(v, dtype=self.dtypes[k]) for k, v in arrays.items()}
        n = len(next(iter(arrays.values())))
        pos = 0
        while pos < n:
            stop = min(self.rows + n - pos, self.rows + self.chunk_rows - self._in_chunk)
            mark = next((m for m in self.marks if m > self.rows), None)
            if mark is not None:
                stop = min(stop, mark)
            take = stop - self.rows
            for name, values in arrays.items():
                self._hashers[name].update(memoryview(values[pos:pos + take]).cast("B"))
            pos += take
            self.rows += take
            self._in_chunk += take
            if self._in_chunk == self.chunk_rows:
                self.chunks.append(self._chunk_digest(self._hashers, self._in_chunk))
                self._new_chunk()
            elif self.rows in self.marks:
                self._partial[self.rows] = self._chunk_digest({k: h.copy() for k, h in self._hashers.items()},
                                                              self._in_chunk)

    def record(self, rows: int | None = None) -> dict[str, Any]:
        """{rows, chunk_rows, columns, chunks} of the first `rows` rows (a mark, or all)."""
        rows = self.rows if rows is None else int(rows)
        if rows > self.rows:
            raise ValueError(f"only {self.rows} rows were digested, not {rows}")
        chunks = self.chunks[: rows // self.chunk_rows]
        if rows % self.chunk_rows and rows != self.rows and rows not in self._partial:
            raise ValueError(f"no digest of the first {rows} rows: pass it as a mark")
        if rows % self.chunk_rows:
            chunks.append(self._chunk_digest(self._hashers, self._in_chunk) if rows == self.rows else self._partial[rows])
        return {"rows": rows, "chunk_rows": self.chunk_rows, "columns": list(self.dtypes), "chunks": chunks}

    def first_difference(self, expected: Mapping[str, Any]) -> int | None:
        """The first row of the first chunk where this table's prefix differs from `expected`
        (a record()); None when the prefix is the same. Needs rows >= expected["rows"]."""
        if (expected.get("chunk_rows") != self.chunk_rows or list(expected.get("columns", [])) != list(self.dtypes)):
            return 0
        mine = self.record(expected["rows"])["chunks"]
        for k, (a, b) in enumerate(zip(mine, expected["chunks"])):
            if a != b:
                return k * self.chunk_rows
        return None if len(mine) == len(expected["chunks"]) else 0


def event_digest(marks: Iterable[int] = (), *, weight: bool) -> RowDigest:
    dtypes = {k: v for k, v in EVENT_DTYPES.items() if weight or k != "weight"}
    return RowDigest(dtypes, EVENT_CHUNK_ROWS, marks)


def vector_digest(marks: Iterable[int] = ()) -> RowDigest:
    """For dyembed.replay.io.load_features(…, digest=…): the raw stored vectors of every item."""
    return RowDigest(VECTOR_DTYPES, VECTOR_CHUNK_ROWS, marks)


def feed_events(digest: RowDigest, ev: Any) -> None:
    """Feed an Events slice (dyembed.replay.io) into an event_digest()."""
    cols = {"user_idx": ev.user_idx, "item_idx": ev.item_idx, "ts": ev.ts}
    if "weight" in digest.dtypes:
        cols["weight"] = ev.weight
    digest.update(**cols)


# --------------------------------------------------------------------------- the work dir's side


def _ids_digests(path: Path, idx_column: str, column: str, marks: Iterable[int]) -> tuple[int, dict[int, str]]:
    """(rows, {n: digest of the ids of rows 0..n-1}) for each mark n <= rows, and for n = rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=[idx_column, column]).sort_by(idx_column)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for unreadable files
        raise StateError(f"cannot read {path} to check the state's lineage: {' '.join(str(exc).split())}") from None
    rows = table.num_rows
    ids = table.column(column).combine_chunks() if rows else pa.array([], pa.string())
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    ids = ids.cast(pa.large_string())
    index = np.ascontiguousarray(table.column(idx_column).to_numpy(), "<i8")
    offsets = np.frombuffer(ids.buffers()[1], np.int64)[ids.offset:ids.offset + rows + 1] if rows else np.zeros(1, np.int64)
    data = ids.buffers()[2]
    valid = np.ones(rows, bool) if ids.null_count == 0 else np.asarray(ids.is_valid().to_numpy(zero_copy_only=False))
    out = {}
    for n in sorted({int(m) for m in marks if 0 < int(m) <= rows} | {rows}):
        h = hashlib.sha256(f"{n}".encode())
        h.update(memoryview(index[:n]).cast("B"))
        h.update(memoryview(np.ascontiguousarray(np.diff(offsets[: n + 1]), "<i8")).cast("B"))
        h.update(memoryview(valid[:n].astype(np.uint8)).cast("B"))
        if data is not None and n:
            h.update(memoryview(data)[int(offsets[0]):int(offsets[n])])
        out[n] = h.hexdigest()
    return rows, out


def _preprocess_record(workdir: Path) -> dict[str, Any] | None:
    path = workdir / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {"unreadable": str(path)}
    if not isinstance(manifest, dict):
        return {"unreadable": str(path)}
    record = {key: manifest.get(key) for key in PREPROCESS_KEYS}
    ids = manifest.get("user_ids") if isinstance(manifest.get("user_ids"), dict) else {}
    check = ids.get("salt_check") if isinstance(ids.get("salt_check"), dict) else {}
    record["user_ids_hashed"] = bool(ids.get("hashed"))
    record["salt_check"] = check.get("digest")
    return record


def _encoder_id(workdir: Path) -> str | None:
    path = workdir / "encode_manifest.json"
    try:
        return str(json.loads(path.read_text(encoding="utf-8")).get("fingerprint_id")) if path.is_file() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return "unreadable"


@dataclass
class Scan:
    """Digests of a work dir's artefacts, for the prefixes a state (or states) need checked."""

    workdir: Path
    events: RowDigest | None = None  # the whole log (with marks)
    history: RowDigest | None = None  # rows whose role is not test, among the first len(roles) rows
    users_rows: int | None = None  # rows of users.parquet (None: no such file)
    users: dict[int, str] = field(default_factory=dict)
    items_rows: int | None = None
    items: dict[int, str] = field(default_factory=dict)
    vectors: RowDigest | None = None
    vector_dim: int | None = None
    encoder: str | None = None
    preprocess: dict[str, Any] | None = None


def scan(workdir: str | Path, *, event_marks: Iterable[int] = (), history_roles: np.ndarray | None = None,
         user_marks: Iterable[int] = (), item_marks: Iterable[int] = (), vectors: RowDigest | None = None,
         vector_marks: Iterable[int] = (), events: bool = True) -> Scan:
    """Digest the work dir: events (one streaming pass, unless `events` is False), the id maps,
    the item vectors (`vectors`: a vector_digest() that load_features already filled; else one
    streaming pass here), the encoder id and the preprocess settings."""
    from dyembed.replay.io import EMBEDDINGS_FILE, iter_events, iter_feature_blocks

    workdir = Path(workdir)
    out = Scan(workdir, encoder=_encoder_id(workdir), preprocess=_preprocess_record(workdir))
    if events or history_roles is not None:
        out.events, out.history = _scan_events(workdir, event_marks, history_roles, iter_events)
    for name, idx, col, marks in (("users", "user_idx", "user_id", user_marks), ("items", "item_idx", "item_id", item_marks)):
        path = workdir / f"{name}.parquet"
        if path.is_file():
            rows, digests = _ids_digests(path, idx, col, marks)
            setattr(out, f"{name}_rows", rows)
            setattr(out, name, digests)
    if vectors is None and (workdir / EMBEDDINGS_FILE).is_file():
        vectors = vector_digest(vector_marks)
        for _, block in iter_feature_blocks(workdir):
            vectors.update(embedding=block)
    out.vectors = vectors
    if vectors is not None and vectors.rows:
        out.vector_dim = _vector_dim(workdir)
    return out


def _vector_dim(workdir: Path) -> int | None:
    import pyarrow.parquet as pq

    try:
        kind = pq.read_schema(workdir / "item_embeddings.parquet").field("embedding").type
        return int(kind.list_size)
    except Exception:  # noqa: BLE001 - load_features reports an unreadable file itself
        return None


def _scan_events(workdir: Path, marks: Iterable[int], roles: np.ndarray | None, iter_events):
    import pyarrow.parquet as pq

    from dyembed.replay.io import EVENTS_FILE

    path = workdir / EVENTS_FILE
    if not path.is_file():
        return None, None
    try:
        weight = "weight" in pq.read_schema(path).names
        events = event_digest(marks, weight=weight)
        history = event_digest(weight=weight) if roles is not None else None
        for ev in iter_events(workdir, chunk_rows=1 << 18):
            feed_events(events, ev)
            if history is not None and ev.offset < len(roles):
                part = ev.take(np.flatnonzero(roles[ev.offset:ev.offset + len(ev)] != 2))
                feed_events(history, part)
    except StateError:
        raise
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign events file
        raise StateError(f"cannot read {path} to check the state's lineage: {' '.join(str(exc).split())}") from None
    return events, history


# --------------------------------------------------------------------------- records


def record(sc: Scan, *, rows: int, n_users: int, n_items: int) -> dict[str, Any]:
    """The lineage of a state that consumed the first `rows` events, knows `n_users` users and
    `n_items` items (the prefixes must have been scanned: marks, or the whole files)."""
    if sc.events is None or sc.events.rows < rows:
        raise StateError(f"{sc.workdir / 'events.parquet'} changed while the state was being built")
    users = min(n_users, sc.users_rows) if sc.users_rows is not None else None
    items = min(n_items, sc.items_rows) if sc.items_rows is not None else None
    return {
        "format": LINEAGE_FORMAT,
        "events": sc.events.record(rows),
        "users": None if users is None else {"rows": users, "sha256": sc.users[users] if users else None},
        "items": None if items is None else {"rows": items, "sha256": sc.items[items] if items else None},
        "vectors": None if sc.vectors is None else {"dim": sc.vector_dim, "encoder": sc.encoder,
                                                     **sc.vectors.record(min(n_items, sc.vectors.rows))},
        "preprocess": sc.preprocess,
    }


def eval_record(sc: Scan, *, n_users: int) -> dict[str, Any]:
    """The evaluation snapshot's lineage: the history rows it consumed and the users it knows."""
    users = min(n_users, sc.users_rows) if sc.users_rows is not None else None
    return {"format": LINEAGE_FORMAT, "history": sc.history.record(),
            "users": None if users is None else {"rows": users, "sha256": sc.users[users] if users else None}}


def _is_digest(part: Any) -> bool:
    return (isinstance(part, Mapping) and type(part.get("rows")) is int and part["rows"] >= 0
            and type(part.get("chunk_rows")) is int and isinstance(part.get("columns"), list)
            and isinstance(part.get("chunks"), list) and all(isinstance(c, str) for c in part["chunks"]))


def _is_ids(part: Any) -> bool:
    return part is None or (isinstance(part, Mapping) and type(part.get("rows")) is int and part["rows"] >= 0
                            and (part.get("sha256") is None or isinstance(part.get("sha256"), str)))


def well_formed(lineage: Any) -> bool:
    """A lineage record of this format whose parts have the right types (a hand-edited or fuzzed
    manifest is a corrupt state, not a crash)."""
    if not isinstance(lineage, Mapping) or lineage.get("format") != LINEAGE_FORMAT:
        return False
    vectors = lineage.get("vectors")
    return ((lineage.get("events") is None or _is_digest(lineage["events"])) and _is_ids(lineage.get("users"))
            and _is_ids(lineage.get("items")) and (vectors is None or _is_digest(vectors))
            and (lineage.get("preprocess") is None or isinstance(lineage["preprocess"], Mapping)))


def well_formed_eval(record: Any) -> bool:
    return (isinstance(record, Mapping) and record.get("format") == LINEAGE_FORMAT and _is_digest(record.get("history"))
            and _is_ids(record.get("users")))


def marks(lineage: Any) -> dict[str, list[int]]:
    """The prefixes a scan must digest to check `lineage` (for scan(**marks(…))); none when the
    record is malformed (require() then says so)."""
    ok = well_formed(lineage)
    get = lambda part: [int(lineage[part]["rows"])] if ok and isinstance(lineage.get(part), Mapping) else []  # noqa: E731
    return {"event_marks": get("events"), "user_marks": get("users"), "item_marks": get("items"),
            "vector_marks": get("vectors")}


# --------------------------------------------------------------------------- the check


def _range(start: int, rows: int, chunk: int) -> str:
    return f"{start:,}–{min(start + chunk, rows) - 1:,}"


def _ids_problem(name: str, idx: str, expected: Mapping[str, Any] | None, rows: int | None,
                 digests: dict[int, str], why: str) -> str | None:
    if expected is None:
        return None
    n = int(expected["rows"])
    if rows is None:
        return f"{name}.parquet is missing (the state knows {n:,} of its rows)"
    if rows < n:
        return f"{name}.parquet has {rows:,} rows, fewer than the {n:,} the state knows ({why})"
    if n and digests.get(n) != expected.get("sha256"):
        return f"{name}.parquet maps {idx} 0–{n - 1:,} to other ids than the state's ({why})"
    return None


def problems(lineage: Mapping[str, Any], sc: Scan, *, allow_reencoded: bool = False) -> list[str]:
    """What in the work dir no longer matches `lineage` (empty: they belong together)."""
    out: list[str] = []
    ev = lineage.get("events")
    if isinstance(ev, Mapping):
        rows = int(ev["rows"])
        if sc.events is None:
            out.append(f"events.parquet is missing (the state consumed {rows:,} events)")
        elif sc.events.rows < rows:
            out.append(f"events.parquet has {sc.events.rows:,} rows, fewer than the {rows:,} the state consumed "
                       "(the log was rewritten, not appended)")
        else:
            start = sc.events.first_difference(ev)
            if start is not None:
                out.append(f"events.parquet rows {_range(start, rows, sc.events.chunk_rows)} differ from the events the "
                           "state consumed (the log was rewritten, e.g. by preprocess without --append)")
    out += [p for p in (_ids_problem("users", "user_idx", lineage.get("users"), sc.users_rows, sc.users,
                                     "users renumbered by another preprocess?"),
                        _ids_problem("items", "item_idx", lineage.get("items"), sc.items_rows, sc.items,
                                     "items renumbered by another preprocess?")) if p]
    out += _vector_problems(lineage.get("vectors"), sc, allow_reencoded)
    out += _preprocess_problems(lineage.get("preprocess"), sc.preprocess)
    return out


def _vector_problems(expected: Mapping[str, Any] | None, sc: Scan, allow_reencoded: bool) -> list[str]:
    if not isinstance(expected, Mapping):
        return []
    n = int(expected["rows"])
    if sc.vectors is None:
        return [f"item_embeddings.parquet is missing (the state was trained on the vectors of {n:,} items)"]
    if sc.vector_dim is not None and expected.get("dim") is not None and sc.vector_dim != expected["dim"]:
        return [f"item_embeddings.parquet has {sc.vector_dim}-d vectors, the state was trained on {expected['dim']}-d ones "
                "(re-encoded with another model)"]
    if sc.encoder is None and expected.get("encoder") is not None:
        return [f"encode_manifest.json is missing (the state's item vectors came from encoder {expected['encoder']})"]
    if sc.encoder != expected.get("encoder"):
        return [f"item_embeddings.parquet was encoded by another encoder (fingerprint {expected.get('encoder')} → "
                f"{sc.encoder}; `dyembed encode` with another model?)"]
    if sc.vectors.rows < n:
        return [f"item_embeddings.parquet has {sc.vectors.rows:,} items, fewer than the {n:,} the state was trained on"]
    start = sc.vectors.first_difference(expected)
    if start is None or (allow_reencoded and expected.get("encoder") is not None):
        return []
    return [f"item_embeddings.parquet holds other vectors for items {_range(start, n, sc.vectors.chunk_rows)} than the state "
            "was built with (item texts re-encoded since)"]


def _preprocess_problems(expected: Mapping[str, Any] | None, now: Mapping[str, Any] | None) -> list[str]:
    if not isinstance(expected, Mapping):
        return []
    if now is None:
        return ["manifest.json (preprocess) is missing"]
    if "unreadable" in now:
        return [f"{now['unreadable']} is unreadable"]
    out = [f"the work dir was preprocessed with data.{key}={now.get(key)!r}, the state's log with {expected.get(key)!r}"
           for key in PREPROCESS_KEYS if now.get(key) != expected.get(key)]
    if bool(now.get("user_ids_hashed")) != bool(expected.get("user_ids_hashed")) or now.get("salt_check") != expected.get("salt_check"):
        out.append("the work dir's user ids were pseudonymised differently (--hash-user-ids salt) than the state's")
    return out


def advice(workdir: Path, found: list[str]) -> str:
    if found and all("re-encoded since" in p for p in found):
        return (f"run `dyembed train {workdir} --resume` (or `dyembed update`) to take the re-encoded items in, or "
                f"roll back item_embeddings.parquet")
    return (f"run `dyembed train {workdir}` to train a state on these files, or restore the files it was trained on "
            f"(`dyembed state list {workdir}` shows its versions)")


def require(workdir: str | Path, directory: Path, lineage: Mapping[str, Any] | None, sc: Scan, *,
            allow_reencoded: bool = False, what: str = "") -> None:
    """StateError (exit 4) unless `lineage` and the scanned work dir belong together."""
    workdir = Path(workdir)
    if not isinstance(lineage, Mapping) or "format" not in lineage:
        raise StateError(f"{directory} has no lineage record (written by an older dyembed): run `dyembed train {workdir}` "
                         "again")
    if not well_formed(lineage):
        raise StateError(f"{directory / 'manifest.json'} has a malformed lineage record (corrupt or edited): roll back "
                         f"(`dyembed state rollback {workdir}`) or train again")
    found = problems(lineage, sc, allow_reencoded=allow_reencoded)
    if found:
        label = f"{directory}{what}"
        raise StateError(f"{label} does not belong to the work dir {workdir}: {'; '.join(found)}; "
                         f"{advice(workdir, found)}")


def require_eval(workdir: str | Path, directory: Path, eval_lineage: Mapping[str, Any], sc: Scan) -> None:
    """StateError unless the history rows and users the evaluation snapshot consumed are unchanged."""
    workdir = Path(workdir)
    if not well_formed_eval(eval_lineage):
        raise StateError(f"{directory / 'manifest.json'} has a malformed lineage record for the evaluation snapshot "
                         f"(corrupt or edited): train again (`dyembed train {workdir}`)")
    found = []
    hist = eval_lineage.get("history")
    if sc.history is None:
        found.append("events.parquet is missing")
    elif isinstance(hist, Mapping):
        start = sc.history.first_difference(hist) if sc.history.rows >= int(hist["rows"]) else 0
        if start is not None or sc.history.rows != int(hist["rows"]):
            found.append("the training and validation rows of events.parquet differ from those the evaluation snapshot "
                         "consumed (the log was rewritten)")
    users = _ids_problem("users", "user_idx", eval_lineage.get("users"), sc.users_rows, sc.users,
                         "users renumbered by another preprocess?")
    found += [users] if users else []
    if found:
        raise StateError(f"{directory}/eval (the evaluation snapshot) does not belong to the work dir {workdir}: "
                         f"{'; '.join(found)}; {advice(workdir, found)}")
