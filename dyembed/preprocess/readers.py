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
import zlib
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
    blank: int = 0  # blank lines met since the previous chunk (not rows; they keep their line numbers)


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


class _CheckedGzip(gzip.GzipFile):
    """A gzip stream whose truncation or corruption is an input error naming the file (exit 3),
    wherever it is read from (our loops, csv, pyarrow's reader)."""

    def _checked(self, method, *args):
        try:
            return method(*args)
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise InputDataError(
                f"{self.name} is not a complete gzip file ({' '.join(str(exc).split()) or type(exc).__name__}); "
                "was it truncated in transfer? Fetch it again"
            ) from None

    def read(self, size=-1):
        return self._checked(super().read, size)

    def read1(self, size=-1):
        return self._checked(super().read1, size)

    def readline(self, size=-1):
        return self._checked(super().readline, size)

    def readinto(self, b):
        return self._checked(super().readinto, b)

    def __next__(self):
        line = self.readline()
        if not line:
            raise StopIteration
        return line


def open_binary(path: Path):
    return _CheckedGzip(str(path), "rb") if is_gzip(path) else open(path, "rb")


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
        with open_binary(path) as fh:
            try:
                empty = fh.read(1) == b""
            except OSError as exc:
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


MAX_RECORD_LINES = 1_000  # a quoted field may hold newlines, but not span more lines than this
MAX_RECORD_BYTES = 16 << 20


class _PhysicalLines:
    """The bytes pyarrow's CSV reader parses, with every physical line accounted for.

    pyarrow skips blank lines without counting them, and an unterminated quote makes it read the
    rest of the file as one quoted field. So, before pyarrow sees them, lines are scanned here
    (numpy over each block; Python only for lines with an odd number of quotes): blank lines
    outside quoted fields are taken out and counted, and a quote that opens a field spanning
    lines is only accepted when it closes within MAX_RECORD_LINES lines and the record it makes
    has the header's number of fields. Otherwise the line where it opened is taken out as a
    malformed line (its own number, its own text) and scanning resumes on the next line. The
    numbers of the lines taken out map pyarrow's line numbers back to physical ones (`physical`).
    Other encodings than UTF-8 are transcoded here, so the scan always sees UTF-8 bytes.
    """

    def __init__(self, raw, *, path: Path, what: str, encoding: str, quoting: bool, delimiter: str, n_fields: int,
                 block_bytes: int):
        self.raw = raw
        self.path, self.what, self.encoding = path, what, encoding
        codec = codecs.lookup(encoding).name
        self.decoder = None if codec == "utf-8" else codecs.getincrementaldecoder(encoding)()
        self.quoting, self.delimiter, self.n_fields = quoting, delimiter, n_fields
        self.block = max(1 << 16, block_bytes)
        self.carry = b""
        self.next_line = 1  # physical number of the carry's first line
        self.removed: list[int] = []  # physical numbers of lines taken out (blank or broken), ascending
        self.broken: list[tuple[int, str]] = []  # (line, text) of broken lines not handed out yet
        self.blank = 0  # blank lines not handed out yet
        self.out = bytearray()
        self.done = False
        self.closed = False

    # -- the file object pyarrow reads
    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while not self.done and (size < 0 or len(self.out) < size):
            data = self.raw.read(self.block)
            if self.decoder is not None:
                try:
                    data = self.decoder.decode(data, final=not data).encode("utf-8")
                except UnicodeDecodeError:
                    raise _encoding_error(self.path, self.what, self.encoding) from None
            self._scan(self.carry + data, final=not data)
            self.done = not data
        n = len(self.out) if size < 0 else min(size, len(self.out))
        chunk = bytes(self.out[:n])
        del self.out[:n]
        return chunk

    def close(self) -> None:
        self.closed = True

    # -- line accounting
    def physical(self, lines: np.ndarray) -> np.ndarray:
        """Physical line numbers of line numbers counted in the stream pyarrow read."""
        if not self.removed:
            return lines
        removed = np.asarray(self.removed, dtype=np.int64)
        keys = removed - np.arange(len(removed), dtype=np.int64)
        return lines + np.searchsorted(keys, lines, side="right")

    def take_blank_and_broken(self) -> tuple[int, list[tuple[int, str]]]:
        blank, broken = self.blank, self.broken
        self.blank, self.broken = 0, []
        return blank, broken

    def _record_ok(self, text: bytes) -> bool:
        """A multi-line record is one only if it parses strictly (quotes open and close whole
        fields) into the header's number of fields."""
        try:
            rows = list(csv.reader(io.StringIO(text.decode("utf-8", errors="replace"), newline=""),
                                   delimiter=self.delimiter, strict=True))
        except csv.Error:
            return False
        return len(rows) == 1 and len(rows[0]) == self.n_fields

    def _scan(self, buf: bytes, final: bool) -> None:
        cut = len(buf) if final else buf.rfind(b"\n") + 1
        region, self.carry = buf[:cut], buf[cut:]
        if not region:
            return
        arr = np.frombuffer(region, dtype=np.uint8)
        newlines = np.flatnonzero(arr == 10)
        starts = np.concatenate([[0], newlines + 1]).astype(np.int64)
        ends = np.concatenate([newlines, [len(region)]]).astype(np.int64)  # exclusive, without the "\n"
        if starts[-1] == len(region):  # the region ends with a newline: no partial last line
            starts, ends = starts[:-1], ends[:-1]
        n = len(starts)
        length = ends - starts
        last = arr[np.maximum(ends - 1, 0)]
        blank = (length == 0) | ((length == 1) & (last == 13))
        inside = np.zeros(n, dtype=bool)  # lines that continue a quoted field opened on an earlier line
        broken: list[int] = []
        consumed = n
        if self.quoting:
            quotes = np.flatnonzero(arr == 34)
            odd = (np.searchsorted(quotes, ends) - np.searchsorted(quotes, starts)) % 2 == 1
            opens = np.flatnonzero(odd).tolist()
            k = 0
            while k < len(opens):
                s = opens[k]
                e = opens[k + 1] if k + 1 < len(opens) else None
                if e is None:  # the quote does not close in this region
                    if not final and n - s < MAX_RECORD_LINES and len(region) - starts[s] < MAX_RECORD_BYTES:
                        consumed = s  # the record continues in the next block
                        break
                elif e - s < MAX_RECORD_LINES and self._record_ok(region[starts[s]:ends[e]]):
                    inside[s + 1:e + 1] = True
                    k += 2
                    continue
                broken.append(s)  # the quote never closes, or closes into a record that is not one
                k += 1
        blank &= ~inside
        blank[consumed:] = False
        out_lines = np.zeros(n, dtype=bool)
        out_lines[np.flatnonzero(blank)] = True
        out_lines[broken] = True
        first = self.next_line
        if out_lines.any():
            taken = np.flatnonzero(out_lines)
            self.removed += (taken + first).tolist()
            self.blank += int(blank.sum())
            self.broken += [(first + b, region[starts[b]:ends[b]].decode("utf-8", errors="replace").rstrip("\r")) for b in broken]
            keep = np.flatnonzero(~out_lines[:consumed])
            # kept lines, joined in runs of neighbours (with their newlines)
            if len(keep):
                breaks = np.flatnonzero(np.diff(keep) != 1)
                run_first = np.concatenate([[keep[0]], keep[breaks + 1]])
                run_last = np.concatenate([keep[breaks], [keep[-1]]])
                for a, b in zip(run_first.tolist(), run_last.tolist()):
                    stop = ends[b] + 1 if ends[b] < len(region) else ends[b]
                    self.out += region[starts[a]:stop]
                    if stop == ends[b] and self.out[-1:] != b"\n":
                        self.out += b"\n"
        else:
            self.out += region[:starts[consumed]] if consumed < n else region
        if consumed < n:
            self.carry = region[starts[consumed]:] + self.carry
        self.next_line = first + consumed


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

    read_options = pcsv.ReadOptions(
        block_size=block_bytes,
        use_threads=False,  # serial parsing: pyarrow then reports line numbers of malformed rows
        column_names=names,
        skip_rows=header_lines,
        encoding="utf8",  # _PhysicalLines transcodes other encodings
    )
    parse_options = pcsv.ParseOptions(
        delimiter=delimiter,
        quote_char='"' if quoting else False,
        # _PhysicalLines lets a quoted newline through only in a record that closes properly
        newlines_in_values=quoting,
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
    raw = open_binary(path)
    stream = _PhysicalLines(raw, path=path, what=what, encoding=encoding, quoting=quoting, delimiter=delimiter,
                            n_fields=len(names), block_bytes=block_bytes)

    def physical(lines: np.ndarray, bad: list[tuple[int, str | None]]) -> tuple[np.ndarray, list[tuple[int, str | None]]]:
        lines = stream.physical(np.asarray(lines, dtype=np.int64))
        if bad:
            moved = stream.physical(np.array([n for n, _ in bad], dtype=np.int64)).tolist()
            bad = [(int(m), t) for m, (_, t) in zip(moved, bad)]
        return lines, bad

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
            lines, here = physical(lines, here)
            if table.num_columns != len(wanted):
                table = table.select(wanted)
            empty = table.slice(0, 0)
            blank, broken = stream.take_blank_and_broken()
            yield Chunk(table, lines, here + broken + unnumbered, blank)
        pending += [(n, t) for n, t in malformed[taken:] if n is not None]  # e.g. a file of malformed rows only
        unnumbered = [(-1, t) for n, t in malformed[taken:] if n is None]
        blank, broken = stream.take_blank_and_broken()
        if pending or unnumbered or blank or broken:
            lines, rest = counter.batch(np.zeros(0, np.int64), None, sorted(pending))
            _, rest = physical(lines, rest)
            rest += broken + unnumbered
            if empty is None:
                empty = pa.table({c: pa.array([], pa.string()) for c in wanted})
            yield Chunk(empty, np.zeros(0, np.int64), rest, blank)
    except pa.ArrowInvalid as exc:
        text = str(exc)
        if undecodable or "UTF8" in text or "utf8" in text.lower() and "invalid" in text.lower():
            raise _encoding_error(path, what, encoding) from None
        raise InputDataError(f"{what} {path} cannot be parsed as delimited text: {' '.join(text.split())[:200]}") from None
    except UnicodeDecodeError:
        raise _encoding_error(path, what, encoding) from None
    finally:
        sys.unraisablehook = previous_hook
        raw.close()
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
    blank = 0

    def flush() -> Chunk:
        nonlocal blank
        table = pa.table({c: pa.array(v, type=pa.string()) for c, v in cols.items()})
        chunk = Chunk(table, np.asarray(lines, dtype=np.int64), list(malformed), blank)
        for v in cols.values():
            v.clear()
        lines.clear()
        malformed.clear()
        blank = 0
        return chunk

    with open_binary(path) as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                text = decoder.decode(raw)
            except UnicodeDecodeError:
                raise _encoding_error(path, what, encoding) from None
            text = text.strip()
            if not text:
                blank += 1
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
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise _encoding_error(path, what, encoding) from None
    if lines or malformed or blank:
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
