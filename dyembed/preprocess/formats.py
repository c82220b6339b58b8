"""Input formats: where each format's files are, how their columns map to the canonical fields,
and how its item texts are read.

Every format resolves to a `Plan`: event sources (streamed as string columns named
user / item / timestamp [/ event / rating / weight]), an optional items loader (item id → text
fields), the default text template and the timestamp format. Explicit `data.events` /
`data.items` paths always win over the files found in `data.input`.
"""

from __future__ import annotations

import ast
import contextvars
import csv
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from dyembed.config import DataConfig
from dyembed.errors import ConfigError, InputDataError
from dyembed.preprocess.readers import (
    Chunk,
    check_input_file,
    file_columns,
    file_kind,
    iter_csv,
    iter_jsonl,
    iter_parquet,
    open_binary,
    sniff_delimiter,
)
from dyembed.text import template_fields

ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]
DEFAULT_TEMPLATES = {
    "generic": "{title}. {description}",
    "synth": "{title}. {description}",
    "movielens-100k": "{title}. Genres: {genres}",
    "movielens-1m": "{title}. Genres: {genres}",
    "movielens-latest": "{title}. Genres: {genres}. Tags: {tags}",
    "amazon-2018": "{title}. {brand}. {category}. {description}",
    "mind": "{title}. {abstract}. Category: {category}, {subcategory}",
    "recbole": "",  # all text fields of the .item file, joined by ". "
}


@dataclass
class EventSource:
    """One events file and how to stream it as canonical string columns."""

    path: Path
    reader: Callable[[], Iterator[Chunk]]


@dataclass
class ItemsData:
    """Item texts as read from the items file(s): id → {field: value} (first occurrence order)."""

    fields: dict[str, dict[str, object]]
    files: list[Path]
    rows_in: int = 0
    rows_without_id: int = 0
    duplicates_merged: int = 0
    # user-generated, time-stamped values (tags): field → item id → [(unix seconds, value)] in file
    # order; preprocess puts into `fields` only those dated before data.tags_before (apply_dated)
    dated: dict[str, dict[str, list[tuple[int, str]]]] = field(default_factory=dict)

    def apply_dated(self, before: int | None) -> dict[str, int]:
        """Fill each dated field with its distinct values (case-insensitive, file order) dated
        before `before` (None: all). Returns how many values were used and left out."""
        used = dropped = 0
        for name, by_item in self.dated.items():
            for item_id, values in by_item.items():
                if item_id not in self.fields:
                    continue
                seen: set[str] = set()
                kept = []
                for ts, value in values:
                    if before is not None and ts >= before:
                        dropped += 1
                        continue
                    used += 1
                    if value.lower() not in seen:
                        seen.add(value.lower())
                        kept.append(value)
                self.fields[item_id][name] = kept
        return {"used": used, "left_out": dropped}


@dataclass
class Plan:
    format: str
    events: list[EventSource]
    load_items: Callable[[], ItemsData] | None
    template: str
    time_format: str
    has_rating: bool = False
    has_weight: bool = False
    inputs: list[tuple[str, Path]] = field(default_factory=list)  # (role, path) for the manifest


# ---------------------------------------------------------------- helpers


def _find(directory: Path | None, names: list[str], what: str, required: bool = True) -> Path | None:
    if directory is None:
        return None
    for name in names:
        hits = sorted(directory.glob(name))
        if hits:
            return hits[0]
    if required:
        raise InputDataError(f"{what} not found in {directory} (looked for {', '.join(names)})")
    return None


def _input_dir(cfg: DataConfig) -> Path | None:
    if cfg.input is None:
        return None
    path = Path(cfg.input)
    if not path.is_dir():
        raise InputDataError(f"input directory not found: {path}")
    return path


def _pick(explicit: str | None, directory: Path | None, names: list[str], what: str, required: bool = True) -> Path | None:
    if explicit:
        return Path(explicit)
    return _find(directory, names, what, required)


def _rename(chunk: Chunk, mapping: dict[str, str]) -> Chunk:
    """File columns → canonical names (only the mapped ones, in mapping order)."""
    table = chunk.table
    cols = {canon: table.column(src) for canon, src in mapping.items() if src in table.column_names}
    return Chunk(pa.table(cols), chunk.lines, chunk.malformed, chunk.blank)


# set by make_plan(hide_found=True) when user ids are hashed: a log without a header has a data row
# (a raw user id) where the column names should be, so they are counted, never printed
_HIDE_FOUND: contextvars.ContextVar[bool] = contextvars.ContextVar("hide_found", default=False)


def _check_columns(path: Path, what: str, found: list[str], mapping: dict[str, str], hint: str) -> None:
    missing = [src for src in mapping.values() if src not in found]
    if not missing:
        return
    if _HIDE_FOUND.get():
        shown = f"{len(found)} column(s), not shown because user ids are hashed (no header line? its first line may be a data row)"
    else:
        shown = ", ".join(found[:8]) + (" …" if len(found) > 8 else "")
    if len(missing) == len(mapping):
        raise InputDataError(
            f"{what} {path} has none of the mapped columns ({', '.join(mapping.values())}); found: {shown or 'nothing'}{hint}"
        )
    raise InputDataError(f"{what} {path} has no column {', '.join(repr(m) for m in missing)}; found: {shown}{hint}")


def _tabular_events(path: Path, mapping: dict[str, str], cfg: DataConfig, *, what: str = "events file") -> EventSource:
    """A generic events file (CSV/TSV/JSONL/Parquet, gzip ok) with named columns."""
    check_input_file(path, what)
    kind = file_kind(path)
    delimiter = cfg.delimiter or ("\t" if kind == "tsv" else sniff_delimiter(path, cfg.encoding) if kind == "csv" else ",")
    if delimiter in ("\\t", "tab"):
        delimiter = "\t"
    found = file_columns(path, kind, delimiter, cfg.encoding)
    hint = "; check data.delimiter" if kind in ("csv", "tsv") and len(found) <= 1 else "; set data.user_col / item_col / time_col"
    _check_columns(path, what, found, mapping, hint)
    cols = list(mapping.values())
    block = max(1 << 20, min(256 << 20, cfg.chunk_rows * 48))

    def reader() -> Iterator[Chunk]:
        if kind == "parquet":
            it = iter_parquet(path, what=what, columns=cols)
        elif kind == "jsonl":
            it = iter_jsonl(path, what=what, columns=cols, encoding=cfg.encoding, chunk_rows=min(cfg.chunk_rows, 200_000))
        else:
            it = iter_csv(path, what=what, delimiter=delimiter, encoding=cfg.encoding, columns=cols, block_bytes=block)
        for chunk in it:
            yield _rename(chunk, mapping)

    return EventSource(path, reader)


def _read_rows(path: Path, cfg: DataConfig, what: str) -> Iterator[dict[str, object]]:
    """Rows of a small tabular file (an items file) as dicts; JSON values keep their types."""
    kind = file_kind(path)
    if kind == "jsonl":
        with open_binary(path) as fh:
            for number, raw in enumerate(fh, start=1):
                try:
                    text = raw.decode(cfg.encoding)
                except UnicodeDecodeError:
                    raise InputDataError(f"{what} {path} is not valid {cfg.encoding} (line {number}); set data.encoding") from None
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError:
                    try:  # the 2014 Amazon metadata files are Python literals, not JSON
                        obj = ast.literal_eval(text)
                    except (ValueError, SyntaxError):
                        raise InputDataError(f"{what} {path} line {number} is not a JSON object") from None
                if not isinstance(obj, dict):
                    raise InputDataError(f"{what} {path} line {number} is not a JSON object")
                yield obj
        return
    if kind == "parquet":
        for chunk in iter_parquet(path, what=what, columns=file_columns(path, kind, ",", cfg.encoding)):
            yield from chunk.table.to_pylist()
        return
    delimiter = cfg.delimiter or ("\t" if kind == "tsv" else sniff_delimiter(path, cfg.encoding))
    for chunk in iter_csv(path, what=what, delimiter=delimiter, encoding=cfg.encoding):
        if chunk.malformed:
            line, _ = chunk.malformed[0]
            raise InputDataError(f"{what} {path} line {line} has the wrong number of fields; check data.delimiter")
        yield from chunk.table.to_pylist()


def _items_from_rows(
    rows: Iterator[dict[str, object]], id_col: str, path: Path, what: str, *, merge: bool, data: ItemsData | None = None,
) -> ItemsData:
    """Collect id → fields; duplicate ids are an error unless `merge` (first non-empty value wins)."""
    data = data or ItemsData(fields={}, files=[])
    data.files.append(path)
    seen_id_col = False
    for row in rows:
        data.rows_in += 1
        if id_col in row:
            seen_id_col = True
        raw_id = row.get(id_col)
        item_id = "" if raw_id is None else str(raw_id).strip()
        if not item_id:
            data.rows_without_id += 1
            continue
        old = data.fields.get(item_id)
        if old is None:
            data.fields[item_id] = row
        elif merge:
            data.duplicates_merged += 1
            for k, v in row.items():
                if v not in (None, "", [], {}) and old.get(k) in (None, "", [], {}):
                    old[k] = v
        else:
            raise InputDataError(f"{what} {path} has duplicate item id {item_id!r} (ids must be unique)")
    if data.rows_in and not seen_id_col:
        raise InputDataError(f"{what} {path} has no column {id_col!r} (set data.item_id_col)")
    return data


def _generic_items(path: Path, cfg: DataConfig, template: str, *, merge: bool = False) -> Callable[[], ItemsData]:
    what = "items file"
    check_input_file(path, what)

    def load() -> ItemsData:
        data = _items_from_rows(_read_rows(path, cfg, what), cfg.item_id_col, path, what, merge=merge)
        if not data.fields:
            raise InputDataError(f"{what} {path} has no items with an id in column {cfg.item_id_col!r}")
        wanted = template_fields(template)
        some = next(iter(data.fields.values()))
        if wanted and not any(f in row for row in data.fields.values() for f in wanted):
            raise InputDataError(
                f"{what} {path} has none of the text fields of data.text_template ({', '.join(wanted)}); found: {', '.join(map(str, some))}"
            )
        return data

    return load


# ---------------------------------------------------------------- formats


def _generic(cfg: DataConfig, template: str) -> Plan:
    directory = _input_dir(cfg)
    exts = ["csv", "tsv", "jsonl", "json", "parquet"]
    ev = _pick(cfg.events, directory, [f"events.{e}{z}" for e in exts for z in ("", ".gz")], "events file")
    if ev is None:
        raise ConfigError("no events input: give --events FILE (data.events) or --input DIR (data.input)")
    it = _pick(cfg.items, directory, [f"items.{e}{z}" for e in exts for z in ("", ".gz")], "items file", required=False)
    mapping = {"user": cfg.user_col, "item": cfg.item_col, "timestamp": cfg.time_col}
    for canon, col in (("event", cfg.event_col), ("rating", cfg.rating_col), ("weight", cfg.weight_col)):
        if col:
            mapping[canon] = col
    plan = Plan(
        "generic", [_tabular_events(ev, mapping, cfg)], _generic_items(it, cfg, template) if it else None, template,
        cfg.time_format, has_rating=bool(cfg.rating_col), has_weight=bool(cfg.weight_col),
        inputs=[("events", ev)] + ([("items", it)] if it else []),
    )
    return plan


def _synth(cfg: DataConfig, template: str) -> Plan:
    directory = _input_dir(cfg)
    ev = _pick(cfg.events, directory, ["events.csv", "events.csv.gz"], "events file")
    it = _pick(cfg.items, directory, ["items.jsonl", "items.jsonl.gz"], "items file")
    if ev is None or it is None:
        raise ConfigError("format synth needs --input DIR (a `dyembed synth` output) or --events and --items")
    mapping = {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "event": "event"}
    items_cfg = DataConfig(item_id_col="item_id", encoding="utf-8")
    return Plan("synth", [_tabular_events(ev, mapping, _with(cfg, delimiter=","))], _generic_items(it, items_cfg, template),
                template, "unix", inputs=[("events", ev), ("items", it)])


def _with(cfg: DataConfig, **changes) -> DataConfig:
    import dataclasses

    return dataclasses.replace(cfg, **changes)


def _lines(path: Path, encoding: str, what: str = "file") -> Iterator[tuple[int, str]]:
    """(physical line number, text) of the non-blank lines."""
    with open_binary(path) as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                text = raw.decode(encoding).rstrip("\r\n")
            except UnicodeDecodeError:
                raise InputDataError(f"{what} {path} is not valid {encoding} (line {number})") from None
            if text.strip():
                yield number, text


def _headerless(path: Path, names: list[str], mapping: dict[str, str], delimiter: str, cfg: DataConfig, *, quoting: bool = False) -> EventSource:
    check_input_file(path, "events file")
    block = max(1 << 20, min(256 << 20, cfg.chunk_rows * 32))

    def reader() -> Iterator[Chunk]:
        for chunk in iter_csv(path, what="events file", delimiter=delimiter, encoding="utf-8", columns=list(mapping.values()),
                              column_names=names, quoting=quoting, block_bytes=block):
            yield _rename(chunk, mapping)

    return EventSource(path, reader)


def _movielens_100k(cfg: DataConfig, template: str) -> Plan:
    directory = _input_dir(cfg)
    ev = _pick(cfg.events, directory, ["u.data"], "ratings file u.data")
    it = _pick(cfg.items, directory, ["u.item"], "movies file u.item", required=False)
    if ev is None:
        raise ConfigError("format movielens-100k needs --input DIR (with u.data, u.item) or --events")
    names = ["user", "item", "rating", "timestamp"]
    source = _headerless(ev, names, {n: n for n in names}, "\t", cfg)
    genre_file = (it.parent / "u.genre") if it else None

    def load_items() -> ItemsData:
        genres = list(ML100K_GENRES)
        if genre_file and genre_file.is_file():
            pairs = [line.split("|") for _, line in _lines(genre_file, "latin-1")]
            genres = [name for name, _ in sorted(((p[0], int(p[1])) for p in pairs if len(p) == 2), key=lambda x: x[1])]
        data = ItemsData(fields={}, files=[it])
        for number, line in _lines(it, "latin-1"):  # u.item is latin-1, not UTF-8
            parts = line.split("|")
            data.rows_in += 1
            if len(parts) < 5 or not parts[0].strip():
                data.rows_without_id += 1
                continue
            flags = parts[5:5 + len(genres)]
            names_ = [g for g, f in zip(genres, flags) if f.strip() == "1" and g != "unknown"]
            item_id = parts[0].strip()
            if item_id in data.fields:
                raise InputDataError(f"items file {it} has duplicate item id {item_id!r} (line {number})")
            data.fields[item_id] = {"item_id": item_id, "title": parts[1], "release_date": parts[2], "genres": names_, "url": parts[4]}
        return data

    check = [check_input_file(it, "items file")] if it else []
    return Plan("movielens-100k", [source], load_items if check else None, template, "unix", has_rating=True,
                inputs=[("events", ev)] + [("items", p) for p in check] + ([("genres", genre_file)] if genre_file and genre_file.is_file() else []))


def _movielens_1m(cfg: DataConfig, template: str) -> Plan:
    directory = _input_dir(cfg)
    ev = _pick(cfg.events, directory, ["ratings.dat"], "ratings file ratings.dat")
    it = _pick(cfg.items, directory, ["movies.dat"], "movies file movies.dat", required=False)
    if ev is None:
        raise ConfigError("format movielens-1m needs --input DIR (with ratings.dat, movies.dat) or --events")
    # "::"-separated: split on ":" and keep every other field (ids and numbers hold no colon)
    names = ["user", "_1", "item", "_2", "rating", "_3", "timestamp"]
    source = _headerless(ev, names, {"user": "user", "item": "item", "rating": "rating", "timestamp": "timestamp"}, ":", cfg)

    def load_items() -> ItemsData:
        data = ItemsData(fields={}, files=[it])
        for number, line in _lines(it, "latin-1"):
            parts = line.split("::")
            data.rows_in += 1
            if len(parts) != 3 or not parts[0].strip():
                data.rows_without_id += 1
                continue
            item_id = parts[0].strip()
            if item_id in data.fields:
                raise InputDataError(f"items file {it} has duplicate item id {item_id!r} (line {number})")
            data.fields[item_id] = {"item_id": item_id, "title": parts[1], "genres": [g for g in parts[2].split("|") if g]}
        return data

    if it:
        check_input_file(it, "items file")
    return Plan("movielens-1m", [source], load_items if it else None, template, "unix", has_rating=True,
                inputs=[("events", ev)] + ([("items", it)] if it else []))


def _csv_dicts(path: Path, what: str) -> Iterator[tuple[int, dict[str, str]]]:
    with open_binary(path) as fh:
        text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
        reader = csv.DictReader(text)
        try:
            for row in reader:
                yield reader.line_num, row
        except UnicodeDecodeError:
            raise InputDataError(f"{what} {path} is not valid utf-8") from None


def _movielens_latest(cfg: DataConfig, template: str) -> Plan:
    directory = _input_dir(cfg)
    ev = _pick(cfg.events, directory, ["ratings.csv"], "ratings file ratings.csv")
    it = _pick(cfg.items, directory, ["movies.csv"], "movies file movies.csv", required=False)
    if ev is None:
        raise ConfigError("format movielens-latest needs --input DIR (with ratings.csv, movies.csv[, tags.csv]) or --events")
    tags_file = (it.parent / "tags.csv") if it else None
    mapping = {"user": "userId", "item": "movieId", "rating": "rating", "timestamp": "timestamp"}
    source = _tabular_events(ev, mapping, _with(cfg, delimiter=",", encoding="utf-8"))

    def load_items() -> ItemsData:
        data = ItemsData(fields={}, files=[it])
        for number, row in _csv_dicts(it, "items file"):
            data.rows_in += 1
            item_id = (row.get("movieId") or "").strip()
            if not item_id:
                data.rows_without_id += 1
                continue
            if item_id in data.fields:
                raise InputDataError(f"items file {it} has duplicate item id {item_id!r} (line {number})")
            genres = (row.get("genres") or "").strip()
            data.fields[item_id] = {"item_id": item_id, "title": row.get("title") or "",
                                    "genres": [] if genres == "(no genres listed)" else [g for g in genres.split("|") if g],
                                    "tags": []}
        if tags_file and tags_file.is_file():
            data.files.append(tags_file)
            # user tags with their time: preprocess keeps those dated before data.tags_before
            tags: dict[str, list[tuple[int, str]]] = {}
            for number, row in _csv_dicts(tags_file, "tags file"):
                item_id, tag = (row.get("movieId") or "").strip(), (row.get("tag") or "").strip()
                stamp = (row.get("timestamp") or "").strip()
                if item_id in data.fields and tag:
                    if not stamp.lstrip("-").isdigit():
                        raise InputDataError(f"tags file {tags_file} line {number} has no unix timestamp "
                                             f"(got {stamp[:30]!r}); tags are used only when dated (data.tags_before)")
                    tags.setdefault(item_id, []).append((int(stamp), tag))
            data.dated["tags"] = tags
        return data

    if it:
        check_input_file(it, "items file")
    inputs = [("events", ev)] + ([("items", it)] if it else []) + ([("tags", tags_file)] if tags_file and tags_file.is_file() else [])
    return Plan("movielens-latest", [source], load_items if it else None, template, "unix", has_rating=True, inputs=inputs)


def _amazon_2018(cfg: DataConfig, template: str) -> Plan:
    directory = _input_dir(cfg)
    ev = cfg.events and Path(cfg.events)
    if not ev and directory is not None:
        candidates = [p for p in sorted(directory.glob("*.json*")) if not p.name.startswith("meta_")]
        if not candidates:
            raise InputDataError(f"reviews file (*_5.json[.gz]) not found in {directory}")
        ev = candidates[0]
    if not ev:
        raise ConfigError("format amazon-2018 needs --input DIR (reviews *_5.json.gz + meta_*.json.gz) or --events")
    it = _pick(cfg.items, directory, ["meta_*.json.gz", "meta_*.json"], "metadata file meta_*.json[.gz]", required=False)
    mapping = {"user": "reviewerID", "item": "asin", "timestamp": "unixReviewTime", "rating": "overall"}
    source = _tabular_events(Path(ev), mapping, _with(cfg, encoding="utf-8"), what="reviews file")
    load_items = None
    if it:
        items_cfg = DataConfig(item_id_col="asin", encoding="utf-8")
        # the metadata repeats products on several lines: merge them (first non-empty field wins)
        load_raw = _generic_items(it, items_cfg, template, merge=True)

        def load_items() -> ItemsData:
            data = load_raw()
            for row in data.fields.values():
                # description is a list of paragraphs; the first category repeats main_cat for every item
                if isinstance(row.get("description"), list):
                    row["description"] = " ".join(str(p) for p in row["description"])
                if isinstance(row.get("category"), list):
                    row["category"] = [c for c in row["category"] if c != row.get("main_cat")]
            return data

    return Plan("amazon-2018", [source], load_items, template, "unix", has_rating=True,
                inputs=[("events", Path(ev))] + ([("items", it)] if it else []))


MIND_TIME = "%m/%d/%Y %I:%M:%S %p"


def _mind_source(path: Path, chunk_rows: int) -> EventSource:
    """behaviors.tsv: impression_id, user, time, history, impressions ("N1-1 N2-0 …").

    Each clicked news of an impression (suffix -1) is one event at the impression's time; shown
    but unclicked news are not events. A line without 5 tab-separated fields is malformed.
    """
    check_input_file(path, "behaviors file")

    def reader() -> Iterator[Chunk]:
        users: list[str] = []
        items: list[str] = []
        times: list[str] = []
        lines: list[int] = []
        malformed: list[tuple[int, str]] = []
        blank = [0, 0]  # blank lines since the last chunk, the last line number seen

        def flush() -> Chunk:
            table = pa.table({"user": pa.array(users, pa.string()), "item": pa.array(items, pa.string()),
                              "timestamp": pa.array(times, pa.string()), "event": pa.array(["click"] * len(users), pa.string())})
            chunk = Chunk(table, np.asarray(lines, dtype=np.int64), list(malformed), blank[0])
            for buf in (users, items, times, lines, malformed):
                buf.clear()
            blank[0] = 0
            return chunk

        try:
            for number, line in _lines(path, "utf-8", "behaviors file"):
                blank[0] += number - blank[1] - 1
                blank[1] = number
                parts = line.split("\t")
                if len(parts) != 5:
                    malformed.append((number, line))
                    continue
                for shown in parts[4].split():
                    news, _, label = shown.rpartition("-")
                    if label == "1":
                        users.append(parts[1])
                        items.append(news)
                        times.append(parts[2])
                        lines.append(number)
                if len(users) >= chunk_rows:
                    yield flush()
        except UnicodeDecodeError:
            raise InputDataError(f"behaviors file {path} is not valid utf-8") from None
        if users or malformed or blank[0]:
            yield flush()

    return EventSource(path, reader)


def _mind(cfg: DataConfig, template: str) -> Plan:
    directory = _input_dir(cfg)
    if cfg.events:
        behaviors = [Path(cfg.events)]
    elif directory is not None:
        behaviors = sorted(directory.glob("behaviors.tsv")) or sorted(directory.glob("*/behaviors.tsv"))
        if not behaviors:
            raise InputDataError(f"behaviors.tsv not found in {directory} (or its subfolders)")
    else:
        raise ConfigError("format mind needs --input DIR (behaviors.tsv + news.tsv, or train/ dev/ folders) or --events")
    if cfg.items:
        news_files = [Path(cfg.items)]
    elif directory is not None:
        news_files = sorted(directory.glob("news.tsv")) or sorted(directory.glob("*/news.tsv"))
    else:
        news_files = []
    for p in news_files:
        check_input_file(p, "news file")

    def load_items() -> ItemsData:
        data = ItemsData(fields={}, files=[])
        names = ["news_id", "category", "subcategory", "title", "abstract", "url", "title_entities", "abstract_entities"]
        for path in news_files:
            data.files.append(path)
            for number, line in _lines(path, "utf-8"):
                parts = line.split("\t")
                data.rows_in += 1
                if not parts[0].strip():
                    data.rows_without_id += 1
                    continue
                row = dict(zip(names, parts))
                news_id = parts[0].strip()
                if news_id in data.fields:  # the train and dev news files overlap
                    data.duplicates_merged += 1
                    continue
                data.fields[news_id] = {k: row.get(k, "") for k in ("news_id", "category", "subcategory", "title", "abstract")}
        return data

    sources = [_mind_source(p, min(cfg.chunk_rows, 500_000)) for p in behaviors]
    return Plan("mind", sources, load_items if news_files else None, template,
                cfg.time_format if "%" in cfg.time_format else MIND_TIME,
                inputs=[("events", p) for p in behaviors] + [("items", p) for p in news_files])


def _recbole_header(path: Path) -> list[tuple[str, str]]:
    with open_binary(path) as fh:
        first = fh.readline().decode("utf-8", errors="replace").rstrip("\r\n")
    out = []
    for col in first.split("\t"):
        name, _, kind = col.partition(":")
        out.append((name.strip(), kind.strip()))
    return out


def _recbole(cfg: DataConfig, template: str) -> Plan:
    directory = _input_dir(cfg)
    ev = _pick(cfg.events, directory, ["*.inter"], "interactions file *.inter")
    it = _pick(cfg.items, directory, ["*.item"], "items file *.item", required=False)
    if ev is None:
        raise ConfigError("format recbole needs --input DIR (with NAME.inter[, NAME.item]) or --events")
    check_input_file(ev, "events file")
    header = _recbole_header(ev)
    names = [n for n, _ in header]
    mapping = {"user": cfg.user_col, "item": cfg.item_col, "timestamp": cfg.time_col}
    rating_col = cfg.rating_col or ("rating" if "rating" in names else None)
    if rating_col:
        mapping["rating"] = rating_col
    if cfg.weight_col:
        mapping["weight"] = cfg.weight_col
    _check_columns(ev, "events file", names, mapping, "; set data.user_col / item_col / time_col")
    full = [f"{n}:{k}" if k else n for n, k in header]
    rename = {canon: full[names.index(src)] for canon, src in mapping.items()}
    block = max(1 << 20, min(256 << 20, cfg.chunk_rows * 48))

    def reader() -> Iterator[Chunk]:
        # atomic files are tab-separated without quoting; the header carries "name:type"
        for chunk in iter_csv(ev, what="events file", delimiter="\t", encoding="utf-8", columns=list(rename.values()), quoting=False, block_bytes=block):
            yield _rename(chunk, rename)

    load_items = None
    if it:
        check_input_file(it, "items file")
        item_header = _recbole_header(it)
        item_names = [n for n, _ in item_header]
        id_col = cfg.item_col if cfg.item_col in item_names else item_names[0]
        if not template:
            text_cols = [n for n, k in item_header if n != id_col and k in ("token_seq", "token", "")]
            template = ". ".join("{" + n + "}" for n in text_cols)

        def load_items() -> ItemsData:
            data = ItemsData(fields={}, files=[it])
            for number, line in _lines(it, "utf-8"):
                if number == 1:
                    continue
                parts = line.split("\t")
                data.rows_in += 1
                row = dict(zip(item_names, parts))
                item_id = (row.get(id_col) or "").strip()
                if not item_id:
                    data.rows_without_id += 1
                    continue
                if item_id in data.fields:
                    raise InputDataError(f"items file {it} has duplicate item id {item_id!r} (line {number})")
                data.fields[item_id] = row
            return data

    return Plan("recbole", [EventSource(ev, reader)], load_items, template, cfg.time_format, has_rating=bool(rating_col),
                has_weight=bool(cfg.weight_col), inputs=[("events", ev)] + ([("items", it)] if it else []))


FORMATS: dict[str, Callable[[DataConfig, str], Plan]] = {
    "generic": _generic,
    "synth": _synth,
    "movielens-100k": _movielens_100k,
    "movielens-1m": _movielens_1m,
    "movielens-latest": _movielens_latest,
    "amazon-2018": _amazon_2018,
    "mind": _mind,
    "recbole": _recbole,
}


def make_plan(cfg: DataConfig, *, hide_found: bool = False) -> Plan:
    """Resolve the configured format into sources, an items loader, template and time format.

    `hide_found`: user ids are hashed, so error messages never quote a file's first line."""
    if cfg.format not in FORMATS:
        raise ConfigError(f"config key 'data.format' must be one of {', '.join(FORMATS)}; got {cfg.format!r}")
    template = cfg.text_template or DEFAULT_TEMPLATES[cfg.format]
    template_fields(template)  # a malformed template is a config error before any reading
    token = _HIDE_FOUND.set(hide_found)
    try:
        return FORMATS[cfg.format](cfg, template)
    finally:
        _HIDE_FOUND.reset(token)
