"""Streaming readers: CSV/TSV, JSON Lines and Parquet (optionally gzip) → batches of string columns.

Every reader yields `Chunk`s: a pyarrow Table whose columns are all strings (exactly what was in
the file, so a rejected row can be written back as it was), the 1-based line number of each row,
and the raw text of malformed records (wrong field count, broken JSON) with their line numbers.
Nothing is read whole: CSV goes through pyarrow's streaming reader block by block, JSON Lines line
by line, Parquet row group by row group.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from dyembed.errors import InputDataError

KINDS = ("csv", "tsv", "jsonl", "parquet")


@dataclass
class Chunk:
    table: pa.Table  # string columns
    lines: np.ndarray  # int64, 1-based line (or row) number of each row in its file
    malformed: list[tuple[int, str]] = field(default_factory=list)  # (line, raw text)


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def open_binary(path: Path):
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def file_kind(path: str | Path) -> str:
    """csv | tsv | jsonl | parquet from the file name (a .gz suffix is looked through)."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    suffix = name.rsplit(".", 1)[-1] if "." in name else ""
    if suffix in ("parquet", "pq"):
        return "parquet"
    if suffix in ("jsonl", "json", "ndjson"):
        return "jsonl"
    if suffix in ("tsv", "tab", "inter", "item"):
        return "tsv"
    return "csv"


def check_input_file(path: str | Path, what: str) -> Path:
    """The path, or InputDataError when it is missing, not a file, or empty (also when gzip-empty)."""
    path = Path(path)
    if not path.exists():
        raise InputDataError(f"{what} not found: {path}")
    if not path.is_file():
        raise InputDataError(f"{what} is not a file: {path}")
    if path.stat().st_size == 0:
        raise InputDataError(f"{what} is empty: {path}")
    if is_gzip(path):
        with gzip.open(path, "rb") as fh:
            try:
                empty = fh.read(1) == b""
            except (OSError, EOFError) as exc:
                raise InputDataError(f"{what} {path} is not a readable gzip file: {exc}") from None
        if empty:
            raise InputDataError(f"{what} is empty: {path}")
    return path


def first_bad_utf8_line(path: Path, encoding: str = "utf-8") -> int | None:
    """Line number of the first line that does not decode (for the error message), else None."""
    with open_binary(path) as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                raw.decode(encoding)
            except UnicodeDecodeError:
                return number
    return None


def _encoding_error(path: Path, what: str, encoding: str) -> InputDataError:
    line = first_bad_utf8_line(path, encoding)
    where = f" (line {line})" if line else ""
    return InputDataError(
        f"{what} {path} is not valid {encoding}{where}; set data.encoding (e.g. latin-1) to the file's encoding"
    )


def read_header(path: Path, delimiter: str, encoding: str) -> list[str]:
    with open_binary(path) as fh:
        text = io.TextIOWrapper(fh, encoding=encoding, errors="replace", newline="")
        line = text.readline()
    row = next(csv.reader([line], delimiter=delimiter), [])
    return [c.strip().lstrip("\ufeff") for c in row]


def sniff_delimiter(path: Path, encoding: str) -> str:
    """The most frequent of tab , ; | in the header line (comma when none)."""
    with open_binary(path) as fh:
        line = io.TextIOWrapper(fh, encoding=encoding, errors="replace", newline="").readline()
    counts = {d: line.count(d) for d in ("\t", ",", ";", "|")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _assign_lines(n: int, cursor: int, malformed_lines: np.ndarray) -> np.ndarray:
    """Numbers of `n` well-formed rows following number `cursor`, skipping malformed ones.

    The j-th row is number cursor + 1 + j + c, where c counts the malformed numbers before it.
    """
    later = malformed_lines[malformed_lines > cursor]
    j = np.arange(n, dtype=np.int64)
    if len(later) == 0:
        return cursor + 1 + j
    # valid rows preceding each malformed line
    before = later - cursor - 1 - np.arange(len(later), dtype=np.int64)
    return cursor + 1 + j + np.searchsorted(before, j, side="right")


class _LineCounter:
    """Physical line numbers of CSV records when quoted fields may hold newlines.

    pyarrow numbers records, not lines. Records are numbered as before (_assign_lines); each
    record then moves down by the newlines inside the records before it (its own fields' and the
    malformed records' raw text), so rejected.parquet points at the line where the record starts.
    """

    def __init__(self, header_lines: int):
        self.record_cursor = header_lines  # number of the last record handed out
        self.shift = 0  # newlines inside all records handed out so far

    def batch(self, records: np.ndarray, extra: np.ndarray | None,
              malformed: list[tuple[int, str | None]]) -> tuple[np.ndarray, list[tuple[int, str | None]]]:
        """(line of each valid row, malformed rows with their line) for one batch."""
        bad_records = np.array([n for n, _ in malformed], dtype=np.int64)
        bad_extra = np.array([(t or "").count("\n") for _, t in malformed], dtype=np.int64)
        extra = np.zeros(len(records), np.int64) if extra is None else extra
        numbers = np.concatenate([records, bad_records])
        newlines = np.concatenate([extra, bad_extra])
        order = np.argsort(numbers, kind="stable")
        before = np.empty_like(newlines)
        before[order] = np.cumsum(newlines[order]) - newlines[order]
        lines = numbers + self.shift + before
        if len(numbers):
            self.record_cursor = max(self.record_cursor, int(numbers.max()))
        self.shift += int(newlines.sum())
        k = len(records)
        return lines[:k], [(int(line), text) for line, (_, text) in zip(lines[k:], malformed)]


def _newlines_per_row(table: pa.Table) -> np.ndarray | None:
    """Newlines inside each row's (quoted) fields, or None when there are none."""
    import pyarrow.compute as pc

    total = None
    for column in table.columns:
        count = pc.count_substring(column, "\n")
        total = count if total is None else pc.add(total, count)
    if total is None:
        return None
    counts = np.asarray(total.to_numpy(zero_copy_only=False), dtype=np.int64)
    return counts if counts.any() else None


def iter_csv(
    path: Path,
    *,
    what: str,
    delimiter: str,
    encoding: str = "utf-8",
    columns: Sequence[str] | None = None,
    column_names: Sequence[str] | None = None,
    quoting: bool = True,
    block_bytes: int = 32 << 20,
) -> Iterator[Chunk]:
    """Stream a delimited file as string columns.

    `column_names` for files without a header; `columns` limits what is converted (by name).
    """
    import pyarrow.csv as pcsv

    header_lines = 0
    if column_names is None:
        column_names = read_header(path, delimiter, encoding)
        header_lines = 1
    names = list(column_names)
    wanted = [c for c in (columns or names) if c in names]
    malformed: list[tuple[int | None, str]] = []

    def on_invalid(row) -> str:
        malformed.append((row.number, row.text))
        return "skip"

    codec = encoding.lower().replace("_", "-")
    read_options = pcsv.ReadOptions(
        block_size=block_bytes,
        use_threads=False,  # serial parsing: pyarrow then reports line numbers of malformed rows
        column_names=names,
        skip_rows=header_lines,
        encoding="utf8" if codec in ("utf-8", "utf8") else encoding,
    )
    parse_options = pcsv.ParseOptions(
        delimiter=delimiter,
        quote_char='"' if quoting else False,
        invalid_row_handler=on_invalid,
    )
    convert_options = pcsv.ConvertOptions(
        column_types={c: pa.string() for c in names},
        # with quoting, every column is read: a newline inside any quoted field shifts the line
        # numbers of the rows after it (rejected.parquet points at the right line)
        include_columns=names if quoting else wanted,
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    # pyarrow decodes a malformed row's text as UTF-8 before calling on_invalid; when that fails the
    # exception cannot propagate and Python would print "Exception ignored … Traceback". Catch it
    # here instead and report the file's encoding problem as the error it is.
    undecodable: list[BaseException] = []
    previous_hook = sys.unraisablehook

    def unraisable(info) -> None:
        if info.object is on_invalid and isinstance(info.exc_value, UnicodeDecodeError):
            undecodable.append(info.exc_value)
        else:
            previous_hook(info)

    sys.unraisablehook = unraisable
    stream = open_binary(path)
    try:
        reader = pcsv.open_csv(stream, read_options=read_options, parse_options=parse_options, convert_options=convert_options)
        counter = _LineCounter(header_lines)
        taken = 0
        pending: list[tuple[int, str | None]] = []  # malformed records not placed in a batch yet
        empty = None
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            table = pa.Table.from_batches([batch])
            bad_records = np.array(sorted(n for n, _ in malformed if n is not None), dtype=np.int64)
            records = _assign_lines(table.num_rows, counter.record_cursor, bad_records)
            pending += [(n, t) for n, t in malformed[taken:] if n is not None]
            unnumbered = [(-1, t) for n, t in malformed[taken:] if n is None]  # still counted and quarantined
            taken = len(malformed)
            # pyarrow parses ahead: malformed records of later batches are reported early; each is
            # placed with the batch its record number falls in
            last = int(records[-1]) if len(records) else counter.record_cursor
            here = [m for m in pending if m[0] <= last]
            pending = [m for m in pending if m[0] > last]
            lines, here = counter.batch(records, _newlines_per_row(table) if quoting else None, here)
            if table.num_columns != len(wanted):
                table = table.select(wanted)
            empty = table.slice(0, 0)
            yield Chunk(table, lines, here + unnumbered)
        pending += [(n, t) for n, t in malformed[taken:] if n is not None]  # e.g. a file of malformed rows only
        unnumbered = [(-1, t) for n, t in malformed[taken:] if n is None]
        if pending or unnumbered:
            lines, rest = counter.batch(np.zeros(0, np.int64), None, sorted(pending))
            rest += unnumbered
            if empty is None:
                empty = pa.table({c: pa.array([], pa.string()) for c in wanted})
            yield Chunk(empty, lines, rest)
    except pa.ArrowInvalid as exc:
        text = str(exc)
        if undecodable or "UTF8" in text or "utf8" in text.lower() and "invalid" in text.lower():
            raise _encoding_error(path, what, encoding) from None
        raise InputDataError(f"{what} {path} cannot be parsed as delimited text: {' '.join(text.split())[:200]}") from None
    except UnicodeDecodeError:
        raise _encoding_error(path, what, encoding) from None
    finally:
        sys.unraisablehook = previous_hook
        stream.close()
    if undecodable:
        raise _encoding_error(path, what, encoding)


def iter_jsonl(
    path: Path,
    *,
    what: str,
    columns: Sequence[str],
    encoding: str = "utf-8",
    chunk_rows: int = 200_000,
) -> Iterator[Chunk]:
    """Stream a JSON Lines file: one object per line; lists are kept as JSON text.

    A line that is not a JSON object is reported as malformed (the caller quarantines it).
    """
    decoder = codecs.getincrementaldecoder(encoding)()
    cols: dict[str, list[str | None]] = {c: [] for c in columns}
    lines: list[int] = []
    malformed: list[tuple[int, str]] = []

    def flush() -> Chunk:
        table = pa.table({c: pa.array(v, type=pa.string()) for c, v in cols.items()})
        chunk = Chunk(table, np.asarray(lines, dtype=np.int64), list(malformed))
        for v in cols.values():
            v.clear()
        lines.clear()
        malformed.clear()
        return chunk

    with open_binary(path) as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                text = decoder.decode(raw)
            except UnicodeDecodeError:
                raise _encoding_error(path, what, encoding) from None
            text = text.strip()
            if not text:
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError:
                obj = None
            if not isinstance(obj, dict):
                malformed.append((number, text))
            else:
                for c in columns:
                    cols[c].append(to_text(obj.get(c)))
                lines.append(number)
            if len(lines) + len(malformed) >= chunk_rows:
                yield flush()
    if lines or malformed:
        yield flush()


def to_text(value) -> str | None:
    """A JSON value as the string a CSV would have held (lists/objects as JSON)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def iter_parquet(path: Path, *, what: str, columns: Sequence[str]) -> Iterator[Chunk]:
    """Stream a Parquet file by row group; non-string columns are cast to string."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputDataError(f"{what} {path} is not a readable Parquet file: {exc}") from None
    present = [c for c in columns if c in pf.schema_arrow.names]
    start = 0
    for batch in pf.iter_batches(columns=present, batch_size=1_000_000):
        arrays = {}
        for name in present:
            col = batch.column(name)
            if pa.types.is_timestamp(col.type):
                col = pc.cast(pc.cast(col, pa.timestamp("s")), pa.int64())
            if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
                col = pc.cast(col, pa.string())
            arrays[name] = pc.cast(col, pa.string())
        table = pa.table(arrays)
        yield Chunk(table, np.arange(start + 1, start + 1 + table.num_rows, dtype=np.int64))
        start += table.num_rows


def file_columns(path: Path, kind: str, delimiter: str, encoding: str) -> list[str]:
    """Column names of a file (header for CSV/TSV, schema for Parquet, keys of line 1 for JSONL)."""
    if kind in ("csv", "tsv"):
        return read_header(path, delimiter, encoding)
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            return list(pq.ParquetFile(path).schema_arrow.names)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputDataError(f"file {path} is not a readable Parquet file: {exc}") from None
    # JSON Lines: the keys seen in the first 100 objects (optional keys may be absent on line 1)
    keys: dict[str, None] = {}
    seen = 0
    with open_binary(path) as fh:
        for raw in fh:
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode(encoding, errors="replace"))
            except json.JSONDecodeError:
                obj = None
            if isinstance(obj, dict):
                keys.update(dict.fromkeys(obj))
            seen += 1
            if seen >= 100:
                break
    return list(keys)
