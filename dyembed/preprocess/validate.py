"""Row-level validation of one chunk of raw events: parse, check, encode ids, quarantine the rest.

Checks run in a fixed order and a row is rejected with the reason of the FIRST check it fails:
missing_user, missing_item, bad_timestamp, future_timestamp, bad_rating, bad_weight, unknown_item,
below_min_rating.
(Malformed records — wrong field count, broken JSON — are rejected by the reader stage as
`malformed_line`; duplicates, out_of_order and the count filters are decided over the whole log in
`filters.py`.) Valid rows leave as integer arrays: user/item/event codes from `IdMap`s, unix seconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dyembed.errors import ConfigError

MALFORMED = "malformed_line"
MISSING_USER = "missing_user"
MISSING_ITEM = "missing_item"
BAD_TIMESTAMP = "bad_timestamp"
FUTURE_TIMESTAMP = "future_timestamp"
BAD_RATING = "bad_rating"
BAD_WEIGHT = "bad_weight"
UNKNOWN_ITEM = "unknown_item"
BELOW_MIN_RATING = "below_min_rating"
DUPLICATE = "duplicate"
OUT_OF_ORDER = "out_of_order"
MIN_USER_EVENTS = "min_user_events"
MIN_ITEM_EVENTS = "min_item_events"
KCORE = "kcore"
# the order reasons are checked in (and listed in summaries)
REASONS = (
    MALFORMED, MISSING_USER, MISSING_ITEM, BAD_TIMESTAMP, FUTURE_TIMESTAMP, BAD_RATING, BAD_WEIGHT, UNKNOWN_ITEM,
    BELOW_MIN_RATING, DUPLICATE, OUT_OF_ORDER, MIN_USER_EVENTS, MIN_ITEM_EVENTS, KCORE,
)
FIELDS = ("user", "item", "timestamp", "event", "rating", "weight")
REJECTED_SCHEMA = pa.schema(
    [("source", pa.string()), ("line", pa.int64())]
    + [(f, pa.string()) for f in FIELDS]
    + [("raw", pa.string()), ("reason", pa.string())]
)

_INT = r"^[+-]?\d{1,18}$"
_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"


class IdMap:
    """Original string id ↔ dense int code, codes given in order of first appearance."""

    def __init__(self, values: list[str] | None = None):
        self.values: list[str] = []
        self.codes: dict[str, int] = {}
        for v in values or []:
            self.add(v)

    def __len__(self) -> int:
        return len(self.values)

    def add(self, value: str) -> int:
        code = self.codes.get(value)
        if code is None:
            code = self.codes[value] = len(self.values)
            self.values.append(value)
        return code

    def encode(self, arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """int64 codes of a string array without nulls (new ids get new codes).

        Dictionary-encoding first means Python touches each distinct id of the chunk once.
        """
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        if len(arr) == 0:
            return np.zeros(0, dtype=np.int64)
        enc = pc.dictionary_encode(arr)
        lookup = np.fromiter((self.add(v) for v in enc.dictionary.to_pylist()), dtype=np.int64, count=len(enc.dictionary))
        return lookup[enc.indices.to_numpy(zero_copy_only=False)]


def _mask(arr: pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def parse_numbers(s: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """float64 values and a validity mask of trimmed decimal strings (anything else is invalid)."""
    n = len(s)
    values = np.zeros(n, dtype=np.float64)
    ok = _mask(pc.match_substring_regex(s, _NUMBER))
    if ok.any():
        idx = np.flatnonzero(ok)
        values[idx] = pc.cast(pc.take(s, pa.array(idx)), pa.float64()).to_numpy(zero_copy_only=False)
        ok &= np.isfinite(values)
    return values, ok


def _parse_unix(s: pa.Array, unit: str) -> tuple[np.ndarray, np.ndarray]:
    n = len(s)
    ts = np.zeros(n, dtype=np.int64)
    is_int = _mask(pc.match_substring_regex(s, _INT))
    if is_int.any():
        idx = np.flatnonzero(is_int)
        ts[idx] = pc.cast(pc.take(s, pa.array(idx)), pa.int64()).to_numpy(zero_copy_only=False)
    # decimals ("1.6e9", "1600000000.5") only for the rows that are not plain integers
    floats = np.zeros(n, dtype=np.float64)
    is_float = np.zeros(n, dtype=bool)
    rest = np.flatnonzero(~is_int)
    if len(rest):
        values, ok = parse_numbers(pc.take(s, pa.array(rest)))
        floats[rest], is_float[rest] = values, ok & (np.abs(values) < 9e18)
    # units: seconds < 1e11 ≤ millis < 1e14 ≤ micros < 1e17 ≤ nanos (1e11 s is the year 5138)
    if unit == "auto":
        mag = np.where(is_int, np.abs(ts).astype(np.float64), np.abs(floats))
        div = np.select([mag < 1e11, mag < 1e14, mag < 1e17], [1, 1_000, 1_000_000], 1_000_000_000).astype(np.int64)
    else:
        div = np.full(n, 1_000 if unit == "unix_ms" else 1, dtype=np.int64)
    out = np.where(is_int, np.floor_divide(ts, div), 0)
    if is_float.any():
        out[is_float] = np.floor(floats[is_float] / div[is_float]).astype(np.int64)
    return out, is_int | is_float


def make_time_parser(time_format: str) -> Callable[[pa.Array], tuple[np.ndarray, np.ndarray]]:
    """A function: trimmed string array → (int64 unix seconds, valid mask).

    `unix` seconds, `unix_ms` milliseconds, `auto` (seconds/ms/µs/ns by magnitude, per value),
    `iso` (ISO 8601; naive times are UTC), or a strftime pattern such as "%m/%d/%Y %I:%M:%S %p".
    """
    if time_format in ("unix", "unix_s", "unix_ms", "auto"):
        unit = "unix_ms" if time_format == "unix_ms" else "auto" if time_format == "auto" else "unix"
        return lambda s: _parse_unix(s, unit)
    if time_format == "iso":
        return _parse_iso
    if "%" not in time_format:
        raise ConfigError(
            f"config key 'data.time_format' = {time_format!r} must be unix, unix_ms, auto, iso or a strftime pattern"
        )

    def parse(s: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        try:
            parsed = pc.strptime(s, format=time_format, unit="s", error_is_null=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ConfigError(f"config key 'data.time_format' = {time_format!r} is not usable: {exc}") from None
        ok = _mask(pc.is_valid(parsed))
        values = pc.fill_null(pc.cast(parsed, pa.int64()), 0).to_numpy(zero_copy_only=False)
        return np.asarray(values, dtype=np.int64), ok

    return parse


def _parse_iso(s: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """ISO 8601 → unix seconds. Times outside pandas' range (about 1677–2262) are invalid
    (bad_timestamp) rather than an error: a year 1500 or 3000 in an event log is a broken value."""
    import pandas as pd

    values = pd.Series(s.to_pylist(), dtype=object)
    # the year of "YYYY-…" values: outside 1678–2261 cannot be represented, so it is not parsed at all
    found = pc.extract_regex(s, r"^\s*(?P<year>[+-]?\d{4,18})")
    year = pc.fill_null(pc.cast(pc.struct_field(found, [0]), pa.int64()), 2000).to_numpy(zero_copy_only=False)
    in_range = (year >= 1678) & (year <= 2261)
    part = values.where(in_range, None)
    try:
        parsed = pd.to_datetime(part, errors="coerce", utc=True, format="ISO8601")
    except (pd.errors.OutOfBoundsDatetime, OverflowError, ValueError):
        # an edge of the range (1677-09-21, 2262-04-11, or a zone offset across it): value by value
        parsed = pd.Series([_one_iso(pd, v) for v in part], index=part.index, dtype="datetime64[ns, UTC]")
    ok = parsed.notna().to_numpy()
    secs = np.zeros(len(s), dtype=np.int64)
    if ok.any():
        epoch = pd.Timestamp(0, tz="UTC")
        secs[ok] = ((parsed[ok] - epoch) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)
    return secs, ok


def _one_iso(pd, value):
    try:
        return pd.to_datetime(value, utc=True, format="ISO8601")
    except (pd.errors.OutOfBoundsDatetime, OverflowError, ValueError, TypeError):
        return pd.NaT


@dataclass
class Checks:
    """What one validation run needs to know (shared by all chunks)."""

    users: IdMap
    items: IdMap
    events: IdMap
    parse_time: Callable[[pa.Array], tuple[np.ndarray, np.ndarray]]
    known_items: pa.Array | None = None  # None: no items file, or text not required
    min_rating: float | None = None
    has_weight: bool = False
    # rows dated after this (unix seconds) are future_timestamp; None = no check (data.max_future_days < 0)
    max_ts: int | None = None


@dataclass
class Valid:
    user: np.ndarray  # int64 codes
    item: np.ndarray
    ts: np.ndarray
    event: np.ndarray  # int64 codes, -1 when the log has no event column
    weight: np.ndarray | None
    rating: np.ndarray | None
    line: np.ndarray


def _blank(arr: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Trimmed strings and a mask of null/empty values."""
    trimmed = pc.utf8_trim_whitespace(arr)
    empty = _mask(pc.or_kleene(pc.is_null(trimmed), pc.equal(trimmed, "")))
    return pc.fill_null(trimmed, ""), empty


def validate_chunk(table: pa.Table, lines: np.ndarray, source: str, checks: Checks) -> tuple[Valid, pa.Table]:
    """Split a chunk of raw string rows into valid integer rows and rejected rows (with reasons)."""
    n = table.num_rows
    names = set(table.column_names)
    col = {f: table.column(f).combine_chunks() for f in FIELDS if f in names}
    reason = np.full(n, -1, dtype=np.int16)

    def flag(mask: np.ndarray, why: str) -> None:
        reason[(reason < 0) & mask] = REASONS.index(why)

    user, empty = _blank(col["user"])
    flag(empty, MISSING_USER)
    item, empty = _blank(col["item"])
    flag(empty, MISSING_ITEM)
    ts_text, _ = _blank(col["timestamp"])
    ts, ok = checks.parse_time(ts_text)
    flag(~ok, BAD_TIMESTAMP)
    if checks.max_ts is not None:
        flag(ts > checks.max_ts, FUTURE_TIMESTAMP)
    rating = None
    if checks.min_rating is not None:
        if "rating" not in col:
            raise ConfigError("config key 'data.min_rating' is set but the events have no rating column (set data.rating_col)")
        rating, ok = parse_numbers(_blank(col["rating"])[0])
        flag(~ok, BAD_RATING)
    weight = None
    if checks.has_weight:
        weight, ok = parse_numbers(_blank(col["weight"])[0])
        flag(~ok, BAD_WEIGHT)
    if checks.known_items is not None:
        flag(~_mask(pc.is_in(item, value_set=checks.known_items)), UNKNOWN_ITEM)
    if rating is not None:
        flag(rating < checks.min_rating, BELOW_MIN_RATING)

    good = np.flatnonzero(reason < 0)
    take = pa.array(good)
    if "event" in col:
        event = checks.events.encode(pc.take(_blank(col["event"])[0], take))
    else:
        event = np.full(len(good), -1, dtype=np.int64)
    valid = Valid(
        user=checks.users.encode(pc.take(user, take)),
        item=checks.items.encode(pc.take(item, take)),
        ts=ts[good],
        event=event,
        weight=weight[good].astype(np.float32) if weight is not None else None,
        rating=rating[good].astype(np.float32) if rating is not None else None,
        line=lines[good],
    )
    bad = np.flatnonzero(reason >= 0)
    take_bad = pa.array(bad)
    rejected = {
        "source": pa.array([source] * len(bad), pa.string()),
        "line": pa.array(lines[bad], pa.int64()),
    }
    for f in FIELDS:
        rejected[f] = pc.take(col[f], take_bad) if f in col else pa.nulls(len(bad), pa.string())
    rejected["raw"] = pa.nulls(len(bad), pa.string())
    rejected["reason"] = pa.array([REASONS[r] for r in reason[bad]], pa.string())
    return valid, pa.table(rejected, schema=REJECTED_SCHEMA)


def malformed_table(malformed: list[tuple[int, str]], source: str) -> pa.Table:
    """Rejected rows for records the reader could not split into fields."""
    k = len(malformed)
    data = {"source": pa.array([source] * k, pa.string()), "line": pa.array([m[0] for m in malformed], pa.int64())}
    for f in FIELDS:
        data[f] = pa.nulls(k, pa.string())
    data["raw"] = pa.array([m[1] for m in malformed], pa.string())
    data["reason"] = pa.array([MALFORMED] * k, pa.string())
    return pa.table(data, schema=REJECTED_SCHEMA)


def fmt_number(x: float) -> str:
    return str(int(x)) if math.isfinite(x) and float(x).is_integer() else repr(float(x))
