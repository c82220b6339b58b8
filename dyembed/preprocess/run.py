"""`dyembed preprocess`: raw logs + item texts → the work directory's time-ordered artefacts.

Stages (see data/README.md for every artefact and column):
1. items: read the items file(s), render each item's text from the template (cleaned later);
2. events, streamed chunk by chunk: user ids replaced by keyed pseudonyms when a salt is given
   (pseudonym.py), row-level validation (validate.py) → int arrays; rejected rows go straight to
   rejected.parquet with their reason;
3. whole log on int arrays (filters.py): exact duplicates, lateness (--append), count filters and
   k-core, stable sort by timestamp, dense ids by first appearance in time order;
4. outputs: every file goes to a temporary name first; all are replaced together only after
   everything succeeded (dyembed.artefacts.atomic_group: a journal of the renames, rolled forward
   by the next command if a crash strikes between two of them), so a reader sees either every
   previous output or every new one.

Invariant (checked before writing): rows_in == events_out + sum(rejected by reason).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dyembed import __version__
from dyembed.artefacts import SCHEMA_VERSION, atomic_group, file_record, read_json, write_json_to, write_table
from dyembed.config import Config, DataConfig, to_toml
from dyembed.errors import ConfigError, InputDataError
from dyembed.lock import WorkdirLock
from dyembed.preprocess import filters
from dyembed.preprocess.append_check import check_append
from dyembed.preprocess.formats import ItemsData, Plan, make_plan
from dyembed.preprocess.pseudonym import Pseudonymiser, manifest_record, verify_salt
from dyembed.preprocess.validate import (
    DUPLICATE, FUTURE_TIMESTAMP, KCORE, MIN_ITEM_EVENTS, MIN_USER_EVENTS, OUT_OF_ORDER, REASONS, REJECTED_SCHEMA,
    Checks, IdMap, Valid, malformed_table, make_time_parser, validate_chunk,
)
from dyembed.text import check_language, get_tokenizer, render_template

log = logging.getLogger(__name__)

EVENTS_SCHEMA = pa.schema([("user_idx", pa.int32()), ("item_idx", pa.int32()), ("ts", pa.int64())])
WEIGHT_FIELD = pa.field("weight", pa.float32())
ITEMS_SCHEMA = pa.schema([("item_idx", pa.int32()), ("item_id", pa.string()), ("text", pa.string()), ("tokens", pa.list_(pa.string()))])
USERS_SCHEMA = pa.schema([("user_idx", pa.int32()), ("user_id", pa.string())])
ALLOW_LATE = ("drop", "keep", "clamp")

Progress = Callable[[int], None]


@dataclass
class Previous:
    """What an earlier run left in the work directory (for --append)."""

    manifest: dict[str, Any]
    events: pa.Table
    user_ids: list[str]
    items: pa.Table
    watermark: int


def parse_tags_before(value: str) -> int | str:
    """data.tags_before → "cut" | "all" | "none" | unix seconds (ConfigError otherwise)."""
    text = str(value).strip()
    if text in ("cut", "all", "none"):
        return text
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"config key 'data.tags_before' must be cut, all, none, unix seconds or an ISO date; got {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return int(parsed.timestamp())


def _tags_limit(setting: str, cfg: Config, ts: np.ndarray, previous: Previous | None) -> dict[str, Any]:
    """The time before which time-stamped user text (tags) may enter item texts.

    "cut" is the temporal split's cut on this log (dyembed.split, as `evaluate --protocol temporal`
    draws it), so no tag written in the test period describes an item. With --append the first
    run's limit is kept: item texts (and their vectors) do not move every night."""
    from dyembed.split import temporal_cut

    value = parse_tags_before(setting)
    recorded = (previous.manifest.get("tags_before") or {}) if previous is not None else {}
    if value == "cut" and recorded.get("setting") == "cut":
        before = recorded.get("before_ts")
    elif value == "cut":
        before = temporal_cut(ts, cfg.evaluate.test_fraction, cfg.evaluate.test_start)
    elif value == "all":
        before = None
    elif value == "none":
        before = -(2**62)
    else:
        before = int(value)
    return {"setting": str(setting), "before_ts": before, "before": _iso(before) if before is not None and before > -(2**61) else None}


def _workdir_hashed(workdir: Path, append: bool) -> bool:
    """--append to a work dir with hashed user ids (its salt is checked later; until then, nothing
    from the input may be printed)."""
    if not append:
        return False
    try:
        return bool(read_json(workdir / "manifest.json").get("user_ids", {}).get("hashed"))
    except (InputDataError, AttributeError):
        return False


def _check_config(data: DataConfig) -> None:
    for key in ("min_user_events", "min_item_events", "chunk_rows"):
        if getattr(data, key) < 1:
            raise ConfigError(f"config key 'data.{key}' must be at least 1")
    if data.kcore < 0:
        raise ConfigError("config key 'data.kcore' must be 0 (off) or a positive count")
    if data.delimiter is not None and data.delimiter not in ("\\t", "tab") and len(data.delimiter) != 1:
        raise ConfigError(f"config key 'data.delimiter' must be one character (or \\t); got {data.delimiter!r}")
    import codecs

    try:
        codecs.lookup(data.encoding)
    except LookupError:
        raise ConfigError(f"config key 'data.encoding' = {data.encoding!r} is not a known encoding") from None
    check_language(data.language)
    make_time_parser(data.time_format)
    parse_tags_before(data.tags_before)
    if math.isnan(data.max_future_days):
        raise ConfigError("config key 'data.max_future_days' must be a number of days (negative switches the check off); got nan")


def future_limit(max_future_days: float, now: float) -> int | None:
    """Latest accepted event time (unix seconds): `now` + max_future_days; None when the check is off."""
    if max_future_days < 0 or math.isinf(max_future_days):
        return None
    return int(now) + int(max_future_days * 86_400)


def _load_previous(workdir: Path) -> Previous:
    events_path = workdir / "events.parquet"
    if not events_path.is_file():
        raise InputDataError(f"nothing to append to: {events_path} not found (run preprocess without --append first)")
    manifest = read_json(workdir / "manifest.json", "manifest")
    for name in ("users.parquet", "items.parquet"):
        if not (workdir / name).is_file():
            raise InputDataError(f"nothing to append to: {workdir / name} not found")
    events = pq.read_table(events_path)
    users = pq.read_table(workdir / "users.parquet")
    items = pq.read_table(workdir / "items.parquet")
    user_ids = users.column("user_id").to_pylist()
    if users.column("user_idx").to_pylist() != list(range(len(user_ids))) or items.column("item_idx").to_pylist() != list(range(items.num_rows)):
        raise InputDataError(f"{workdir}: users.parquet / items.parquet are not indexed 0..n-1; cannot append")
    watermark = int(pc.max(events.column("ts")).as_py()) if events.num_rows else int(manifest.get("watermark") or 0)
    return Previous(manifest, events, user_ids, items, watermark)


def _concat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)


def _iso(ts: int | None) -> str | None:
    return None if ts is None else dt.datetime.fromtimestamp(int(ts), tz=dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _fmt_floats(values: np.ndarray) -> pa.Array:
    return pa.array([str(int(v)) if float(v).is_integer() else repr(float(v)) for v in values.tolist()], pa.string())


class _Collector:
    """Valid rows of all chunks, kept as int arrays in input order."""

    def __init__(self, has_weight: bool, has_rating: bool):
        self.parts: dict[str, list[np.ndarray]] = {k: [] for k in ("user", "item", "ts", "event", "line", "src", "weight", "rating")}
        self.has_weight, self.has_rating = has_weight, has_rating

    def add(self, valid: Valid, src: int) -> None:
        p = self.parts
        p["user"].append(valid.user.astype(np.int32))
        p["item"].append(valid.item.astype(np.int32))
        p["ts"].append(valid.ts)
        p["event"].append(valid.event.astype(np.int32))
        p["line"].append(valid.line)
        p["src"].append(np.full(len(valid.user), src, dtype=np.int16))
        if valid.weight is not None:
            p["weight"].append(valid.weight)
        if valid.rating is not None:
            p["rating"].append(valid.rating)

    def arrays(self) -> dict[str, np.ndarray]:
        p = self.parts
        out = {
            "user": _concat(p["user"], np.int32), "item": _concat(p["item"], np.int32), "ts": _concat(p["ts"], np.int64),
            "event": _concat(p["event"], np.int32), "line": _concat(p["line"], np.int64), "src": _concat(p["src"], np.int16),
        }
        out["weight"] = _concat(p["weight"], np.float32) if p["weight"] else None
        out["rating"] = _concat(p["rating"], np.float32) if p["rating"] else None
        self.parts = {}
        return out


def _late_rejects(arr: dict[str, np.ndarray | None], reason: np.ndarray, sources: list[str], user_map: IdMap, item_map: IdMap,
                  event_map: IdMap, block: int = 1_000_000):
    """Rejected-row tables for reasons decided over the whole log (fields re-rendered from parsed values)."""
    idx_all = np.flatnonzero(reason >= 0)
    if len(idx_all) == 0:
        return
    users = pa.array(user_map.values, pa.string())
    items = pa.array(item_map.values, pa.string())
    events = pa.array(event_map.values, pa.string())
    src_names = pa.array(sources, pa.string())
    for lo in range(0, len(idx_all), block):
        idx = idx_all[lo:lo + block]
        k = len(idx)
        ev = arr["event"][idx]
        data = {
            "source": pc.take(src_names, pa.array(arr["src"][idx].astype(np.int64))),
            "line": pa.array(arr["line"][idx], pa.int64()),
            "user": pc.take(users, pa.array(arr["user"][idx])),
            "item": pc.take(items, pa.array(arr["item"][idx])),
            "timestamp": pc.cast(pa.array(arr["ts"][idx]), pa.string()),
            "event": pc.take(events, pa.array(np.where(ev >= 0, ev, 0))) if len(event_map) else pa.nulls(k, pa.string()),
            "rating": _fmt_floats(arr["rating"][idx]) if arr["rating"] is not None else pa.nulls(k, pa.string()),
            "weight": _fmt_floats(arr["weight"][idx]) if arr["weight"] is not None else pa.nulls(k, pa.string()),
            "raw": pa.nulls(k, pa.string()),
            "reason": pc.take(pa.array(list(REASONS), pa.string()), pa.array(reason[idx].astype(np.int64))),
        }
        if len(event_map):
            data["event"] = pc.if_else(pa.array(ev >= 0), data["event"], pa.nulls(k, pa.string()))
        yield pa.table(data, schema=REJECTED_SCHEMA)


def _item_texts(
    n_items: int, code_of_idx: np.ndarray, item_map: IdMap, items_data: ItemsData | None, previous: Previous | None,
    template: str, language: str,
) -> tuple[pa.Table, dict[str, int]]:
    tokenizer = get_tokenizer(language)
    ids, texts, tokens = [], [], []
    stats = Counter()
    prev_text = previous.items.column("text").to_pylist() if previous else []
    prev_tokens = previous.items.column("tokens").to_pylist() if previous else []
    for idx in range(n_items):
        item_id = item_map.values[int(code_of_idx[idx])]
        fields = items_data.fields.get(item_id) if items_data else None
        if fields is not None:
            text = render_template(template, fields)
            toks = tokenizer(text)
            if idx < len(prev_text) and text != prev_text[idx]:
                stats["items_text_updated"] += 1
        elif idx < len(prev_text):
            text, toks = prev_text[idx], prev_tokens[idx]
        else:
            text, toks = "", []
            stats["items_not_in_items_file"] += 1
        if not text:
            stats["items_without_text"] += 1
        ids.append(item_id)
        texts.append(text)
        tokens.append(toks)
    table = pa.table(
        {"item_idx": pa.array(np.arange(n_items, dtype=np.int32)), "item_id": pa.array(ids, pa.string()),
         "text": pa.array(texts, pa.string()), "tokens": pa.array(tokens, pa.list_(pa.string()))},
        schema=ITEMS_SCHEMA,
    )
    return table, dict(stats)


def _whole_log_reasons(
    arr: dict[str, np.ndarray | None], data: DataConfig, previous: Previous | None, allow_late: str,
) -> tuple[np.ndarray, int, int]:
    """Reason code per valid row (-1 = kept) for duplicates, lateness and the count filters.

    Returns (reasons, late rows kept, late rows clamped); clamping rewrites arr["ts"] in place.
    """
    reason = np.full(len(arr["user"]), -1, dtype=np.int16)
    if data.drop_duplicates:
        reason[filters.duplicate_mask(arr["user"], arr["item"], arr["ts"], arr["event"])] = REASONS.index(DUPLICATE)
    if previous is None:
        by_user, by_item, by_core = filters.count_filters(
            arr["user"], arr["item"], reason < 0, min_user=data.min_user_events, min_item=data.min_item_events, kcore=data.kcore,
        )
        reason[by_user] = REASONS.index(MIN_USER_EVENTS)
        reason[by_item] = REASONS.index(MIN_ITEM_EVENTS)
        reason[by_core] = REASONS.index(KCORE)
        return reason, 0, 0
    # append: count filters are not re-applied (they would cut old users' new events)
    old_ts = previous.events.column("ts").to_numpy()
    recent = np.flatnonzero(old_ts >= arr["ts"].min())  # only these can equal a new row
    if data.drop_duplicates:
        seen = filters.seen_before_mask(
            previous.events.column("user_idx").to_numpy()[recent], previous.events.column("item_idx").to_numpy()[recent],
            old_ts[recent], arr["user"], arr["item"], arr["ts"],
        )
        reason[(reason < 0) & seen] = REASONS.index(DUPLICATE)
    late = (reason < 0) & (arr["ts"] < previous.watermark)
    n_late = int(late.sum())
    if allow_late == "drop":
        reason[late] = REASONS.index(OUT_OF_ORDER)
        return reason, 0, 0
    if allow_late == "clamp":
        arr["ts"][late] = previous.watermark
        return reason, 0, n_late
    return reason, n_late, 0


def preprocess(
    workdir: str | Path,
    cfg: Config,
    *,
    append: bool = False,
    allow_late: str | None = None,
    progress: Progress | None = None,
    user_id_salt: str | None = None,
) -> dict[str, Any]:
    """Validate, clean and time-order raw logs into `workdir`; return the run's summary (JSON-able).

    `append`: add newer events to an existing work dir (stable ids; new users/items get new
    ids). `allow_late` (drop | keep | clamp, default data.allow_late) handles appended events
    older than the stored watermark. `progress(rows_read)` is called after each chunk.
    `user_id_salt`: replace every user id by its keyed pseudonym (pseudonym.py) before anything
    is written; an --append run must get the same salt as the work dir's first run (ConfigError).
    The salt is never stored, only a slow fingerprint of it (manifest `user_ids.salt_check`).
    """
    with WorkdirLock(workdir, command="preprocess", wait=cfg.runtime.lock_wait):
        return _preprocess(workdir, cfg, append=append, allow_late=allow_late, progress=progress, salt=user_id_salt)


def _preprocess(workdir: str | Path, cfg: Config, *, append: bool, allow_late: str | None, progress: Progress | None,
                salt: str | None) -> dict[str, Any]:
    started = time.perf_counter()
    now = time.time()  # the run's wall-clock time: events after now + data.max_future_days are quarantined
    workdir = Path(workdir)
    data = cfg.data
    _check_config(data)
    allow_late = allow_late or data.allow_late
    if allow_late not in ALLOW_LATE:
        raise ConfigError(f"--allow-late must be one of {', '.join(ALLOW_LATE)}; got {allow_late!r}")
    language = check_language(data.language)
    plan: Plan = make_plan(data, hide_found=salt is not None or _workdir_hashed(workdir, append))
    if data.min_rating is not None and not plan.has_rating:
        raise ConfigError(f"config key 'data.min_rating' needs a rating column; format {plan.format} has none (set data.rating_col)")
    previous = _load_previous(workdir) if append else None
    if previous is not None:
        check_append(workdir, previous.manifest, {"format": plan.format, "text_template": plan.template,
                                                  "language": language})
        # same salt as the first run (or none for both): mixing would split every user in two
        ids_hashed = verify_salt(previous.manifest.get("user_ids"), salt, workdir)
        user_ids_record = previous.manifest["user_ids"] if ids_hashed else {"hashed": False}
    else:
        user_ids_record = manifest_record(salt)
    pseudonymiser = Pseudonymiser(salt) if salt is not None else None
    ts_limit = future_limit(data.max_future_days, now)
    has_weight = plan.has_weight
    if previous is not None and ("weight" in previous.events.column_names) != has_weight:
        raise ConfigError("--append: data.weight_col must match the earlier run (events.parquet "
                          f"{'has' if 'weight' in previous.events.column_names else 'has no'} weight column)")

    items_data = plan.load_items() if plan.load_items else None
    prev_item_ids = previous.items.column("item_id").to_pylist() if previous else []
    item_map = IdMap(prev_item_ids)
    catalogue: list[int] = []
    if items_data is not None:
        catalogue = [item_map.add(i) for i in items_data.fields]
    known = None
    if data.require_text:
        if items_data is not None:
            known = pa.array(list(items_data.fields) + prev_item_ids, pa.string())
        elif previous is not None and previous.manifest.get("has_items_file"):
            known = pa.array(prev_item_ids, pa.string())
    user_map = IdMap(previous.user_ids if previous else None)
    event_map = IdMap()
    checks = Checks(users=user_map, items=item_map, events=event_map, parse_time=make_time_parser(plan.time_format),
                    known_items=known, min_rating=data.min_rating, has_weight=has_weight, max_ts=ts_limit)
    source_names = [str(s.path) for s in plan.events]
    reasons: Counter[str] = Counter()
    rows_in = 0
    blank_lines = 0  # not rows: counted so that every physical line of the inputs is accounted for
    collector = _Collector(has_weight, data.min_rating is not None)

    # every output goes to a temp name; all are replaced together (all or none, even across a kill)
    # when the group closes, in the order asked for: manifest.json last
    with atomic_group(workdir) as group, contextlib.ExitStack() as stack:
        tmp_rejected = group.path("rejected.parquet")
        writer = stack.enter_context(pq.ParquetWriter(tmp_rejected, REJECTED_SCHEMA, compression="zstd"))
        if previous is not None and (workdir / "rejected.parquet").is_file():
            old = pq.ParquetFile(workdir / "rejected.parquet")
            for batch in old.iter_batches():
                writer.write_table(pa.Table.from_batches([batch]).cast(REJECTED_SCHEMA))

        def reject(table: pa.Table) -> None:
            if table.num_rows:
                writer.write_table(table)
                for pair in pc.value_counts(table.column("reason")).to_pylist():
                    reasons[pair["values"]] += pair["counts"]

        for src, source in enumerate(plan.events):
            rows_src = 0
            for chunk in source.reader():
                n = chunk.table.num_rows + len(chunk.malformed)
                rows_in += n
                rows_src += n
                blank_lines += chunk.blank
                table, malformed = chunk.table, chunk.malformed
                if pseudonymiser is not None:
                    # ids are hashed before validation, so every artefact sees only pseudonyms; a
                    # malformed record cannot be split reliably, so its raw text is not kept at all
                    table = pseudonymiser.table(table)
                    malformed = [(line, None) for line, _ in malformed]
                reject(malformed_table(malformed, source_names[src]))
                if table.num_rows:
                    valid, rejected = validate_chunk(table, chunk.lines, source_names[src], checks)
                    reject(rejected)
                    collector.add(valid, src)
                if progress:
                    progress(rows_in)
            if rows_src == 0:
                raise InputDataError(f"events file {source.path} has no data rows")
        arr = collector.arrays()
        n_valid = len(arr["user"])
        if n_valid == 0:
            top = ", ".join(f"{r} {n:,}" for r, n in reasons.most_common(3))
            raise InputDataError(f"events file {', '.join(source_names)} yields zero valid events ({rows_in:,} rows rejected: {top})")

        # ---- whole-log decisions on int arrays
        reason, late_kept, clamped = _whole_log_reasons(arr, data, previous, allow_late)
        for table in _late_rejects(arr, reason, source_names, user_map, item_map, event_map):
            reject(table)
        writer.close()

        kept = np.flatnonzero(reason < 0)
        del reason
        if len(kept) == 0 and previous is None:
            raise InputDataError(
                f"events file {', '.join(source_names)}: no events left after duplicates and filters "
                f"({', '.join(f'{r} {n:,}' for r, n in reasons.most_common(3))}); relax data.min_* / data.kcore"
            )
        order = kept[filters.time_order(arr["ts"][kept])]
        user_sorted, item_sorted, ts_sorted = arr["user"][order], arr["item"][order], arr["ts"][order]
        weight_sorted = arr["weight"][order] if has_weight else None
        del arr

        n_prev_users = len(previous.user_ids) if previous else 0
        n_prev_items = len(prev_item_ids)
        user_dense = filters.dense_ids(user_sorted, len(user_map), n_prev_users)
        item_dense = filters.dense_ids(item_sorted, len(item_map), n_prev_items)
        n_users = int(user_dense.max()) + 1 if len(user_dense) and user_dense.max() >= 0 else 0
        n_items = int(item_dense.max()) + 1 if len(item_dense) and item_dense.max() >= 0 else 0
        if data.keep_unused_items:
            unused = [c for c in catalogue if item_dense[c] < 0]
            item_dense[unused] = n_items + np.arange(len(unused))
            n_items += len(unused)
        new_events = {
            "user_idx": pa.array(user_dense[user_sorted].astype(np.int32)),
            "item_idx": pa.array(item_dense[item_sorted].astype(np.int32)),
            "ts": pa.array(ts_sorted.astype(np.int64)),
        }
        schema = EVENTS_SCHEMA
        if has_weight:
            new_events["weight"] = pa.array(weight_sorted.astype(np.float32))
            schema = schema.append(WEIGHT_FIELD)
        events = pa.table(new_events, schema=schema)
        first_new_row = 0
        if previous is not None:
            first_new_row = previous.events.num_rows
            events = pa.concat_tables([previous.events.select(schema.names).cast(schema), events])
            if late_kept:
                # late events go to their true place; equal timestamps keep old rows first
                events = events.take(pa.array(filters.time_order(events.column("ts").to_numpy())))
                first_new_row = None

        # ---- small tables
        user_code_of_idx = np.empty(n_users, dtype=np.int64)
        user_code_of_idx[user_dense[user_dense >= 0]] = np.flatnonzero(user_dense >= 0)
        users = pa.table({"user_idx": pa.array(np.arange(n_users, dtype=np.int32)),
                          "user_id": pa.array([user_map.values[c] for c in user_code_of_idx.tolist()], pa.string())}, schema=USERS_SCHEMA)
        item_code_of_idx = np.empty(n_items, dtype=np.int64)
        item_code_of_idx[item_dense[item_dense >= 0]] = np.flatnonzero(item_dense >= 0)
        tags_limit = None
        if items_data is not None and items_data.dated:
            tags_limit = _tags_limit(data.tags_before, cfg, events.column("ts").to_numpy(), previous)
            tags_limit.update(items_data.apply_dated(tags_limit["before_ts"]))
        items, item_stats = _item_texts(n_items, item_code_of_idx, item_map, items_data, previous, plan.template, language)

        order_of = lambda kv: REASONS.index(kv[0])  # noqa: E731
        run_rejected = dict(sorted(reasons.items(), key=order_of))
        prev_counts = previous.manifest.get("counts", {}) if previous else {}
        total = Counter(prev_counts.get("rejected", {}))
        total.update(reasons)
        total_rejected = dict(sorted(((r, n) for r, n in total.items() if n), key=order_of))
        run_out = len(order)
        total_in = rows_in + int(prev_counts.get("rows_in", 0))
        if total_in != events.num_rows + sum(total_rejected.values()):
            raise InputDataError(  # pragma: no cover - a bug guard, not a data problem
                f"internal count mismatch in {workdir}: rows_in {total_in} != events {events.num_rows} + rejected {sum(total_rejected.values())}"
            )

        # ---- write (temp names; renamed together when the `with` block ends)
        paths = {}
        for name, table in (("events.parquet", events), ("users.parquet", users), ("items.parquet", items)):
            paths[name] = group.path(name)
            write_table(table, paths[name])
        paths["rejected.parquet"] = tmp_rejected

        ts_col = events.column("ts")
        min_ts = int(pc.min(ts_col).as_py()) if events.num_rows else None
        max_ts = int(pc.max(ts_col).as_py()) if events.num_rows else None
        inputs = [{"role": role, **file_record(path)} for role, path in plan.inputs]
        run = {
            "mode": "append" if previous is not None else "full",
            "started_at": dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "inputs": inputs,
            "rows_in": rows_in,
            "blank_lines": blank_lines,
            "events_out": run_out,
            "rejected": run_rejected,
            "new_users": n_users - n_prev_users,
            "new_items": n_items - n_prev_items,
            "first_row": first_new_row,
            "watermark_before": previous.watermark if previous else None,
            "allow_late": allow_late if previous is not None else None,
            "late_kept": late_kept,
            "late_clamped": clamped,
            "max_ts_allowed": ts_limit,
        }
        counts = {
            "rows_in": total_in,
            "blank_lines": blank_lines + int(prev_counts.get("blank_lines", 0)),
            "events_out": events.num_rows,
            "rejected": total_rejected,
            "rejected_total": sum(total_rejected.values()),
            "users": n_users,
            "items": n_items,
            "items_without_text": item_stats.get("items_without_text", 0),
            "items_not_in_items_file": item_stats.get("items_not_in_items_file", 0),
            "items_text_updated": item_stats.get("items_text_updated", 0),
            "items_file": None if items_data is None else {
                "rows_in": items_data.rows_in, "distinct_ids": len(items_data.fields),
                "rows_without_id": items_data.rows_without_id, "duplicates_merged": items_data.duplicates_merged,
            },
        }
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "dyembed_version": __version__,
            "step": "preprocess",
            "format": plan.format,
            "text_template": plan.template,
            "language": language,
            "time_format": plan.time_format,
            "has_items_file": items_data is not None or bool(previous and previous.manifest.get("has_items_file")),
            "user_ids": user_ids_record,
            "tie_order": "events sorted by ts with a stable sort: equal timestamps keep input order "
                         "(sources in the order listed, rows in file order; appended runs after earlier ones)",
            "inputs": inputs,
            "tags_before": tags_limit or (previous.manifest.get("tags_before") if previous else None),
            "counts": counts,
            "time_range": {"min_ts": min_ts, "max_ts": max_ts, "min": _iso(min_ts), "max": _iso(max_ts)},
            "watermark": max_ts,
            "outputs": {name: {"rows": pq.ParquetFile(tmp).metadata.num_rows, **{k: v for k, v in file_record(tmp).items() if k != "path"}}
                        for name, tmp in paths.items()},
            "runs": (previous.manifest.get("runs", []) if previous else []) + [run],
            "config": cfg.to_dict(),
        }
        group.path("config.toml").write_text(to_toml(cfg), encoding="utf-8")
        write_json_to(group.path("manifest.json"), manifest)

    summary = {
        "workdir": str(workdir),
        "format": plan.format,
        "mode": run["mode"],
        "rows_in": rows_in,
        "blank_lines": blank_lines,
        "events_out": run_out,
        "rejected": run_rejected,
        "rejected_total": sum(run_rejected.values()),
        "total_events": events.num_rows,
        "users": n_users,
        "items": n_items,
        "new_users": run["new_users"],
        "new_items": run["new_items"],
        "items_without_text": counts["items_without_text"],
        "time_range": manifest["time_range"],
        "late_kept": late_kept,
        "late_clamped": clamped,
        "user_ids_hashed": bool(user_ids_record.get("hashed")),
        "seconds": round(time.perf_counter() - started, 3),
    }
    if run_rejected.get(FUTURE_TIMESTAMP):
        log.warning("%d row(s) dated more than %g days in the future (after %s) were quarantined as %s; check the log's "
                    "clock (data.max_future_days)", run_rejected[FUTURE_TIMESTAMP], data.max_future_days, _iso(ts_limit),
                    FUTURE_TIMESTAMP)
    if rows_in and summary["rejected_total"] > 0.1 * rows_in:
        top = ", ".join(f"{r} {n:,}" for r, n in Counter(run_rejected).most_common(3))
        log.warning("%d of %d rows rejected (%s); see %s", summary["rejected_total"], rows_in, top, workdir / "rejected.parquet")
    log.debug("preprocess %s: %d rows in, %d events out, %d rejected", workdir, rows_in, run_out, summary["rejected_total"])
    return summary
