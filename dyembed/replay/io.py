"""Reading the work directory's artefacts for replay: item features and events (streamed)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dyembed.artefacts import require_file
from dyembed.errors import InputDataError

EVENTS_FILE = "events.parquet"
EMBEDDINGS_FILE = "item_embeddings.parquet"
USERS_FILE = "users.parquet"
EVENT_COLUMNS = ("user_idx", "item_idx", "ts")


@dataclass
class Events:
    """A slice of events.parquet as numpy arrays (rows `offset`..`offset + len`)."""

    user_idx: np.ndarray  # int32
    item_idx: np.ndarray  # int32
    ts: np.ndarray  # int64
    weight: np.ndarray | None  # float32
    offset: int = 0

    def __len__(self) -> int:
        return len(self.user_idx)

    def take(self, mask_or_index: np.ndarray) -> "Events":
        return Events(self.user_idx[mask_or_index], self.item_idx[mask_or_index], self.ts[mask_or_index],
                      None if self.weight is None else self.weight[mask_or_index], self.offset)


FEATURE_BATCH_ROWS = 16_384  # rows decoded at a time: ~25 MB of float32 at D = 384


def iter_feature_blocks(workdir: str | Path) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, [k, D] float32 block) of item_embeddings.parquet's stored vectors, in order.

    Streamed: column chunks are read piece by piece (pre_buffer off), so memory is one block."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = require_file(Path(workdir) / EMBEDDINGS_FILE, "item embeddings (run `dyembed encode` first)")
    try:
        pf = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
        schema = pf.schema_arrow
        n = pf.metadata.num_rows
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for bad files
        raise InputDataError(f"cannot read {path}: {exc}") from None
    missing = [c for c in ("item_idx", "embedding") if c not in schema.names]
    if missing:
        raise InputDataError(f"cannot read {path}: no column(s) {', '.join(missing)}")
    kind = schema.field("embedding").type
    if not pa.types.is_fixed_size_list(kind):
        raise InputDataError(f"{path}: column 'embedding' must be fixed_size_list<float>, got {kind}")
    if n == 0:
        raise InputDataError(f"{path} has no rows")
    dim = kind.list_size
    pos = 0
    try:
        for batch in pf.iter_batches(batch_size=FEATURE_BATCH_ROWS, columns=["item_idx", "embedding"], use_threads=False):
            k = batch.num_rows
            if pos + k > n or not np.array_equal(batch.column(0).to_numpy(), np.arange(pos, pos + k)):
                raise InputDataError(f"{path}: item_idx must be 0..n_items-1 in order")
            column = batch.column(1)
            if column.null_count:
                raise InputDataError(f"{path}: null embedding in rows {pos}..{pos + k - 1}")
            yield pos, np.asarray(column.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(k, dim)
            pos += k
    except InputDataError:
        raise
    except Exception as exc:  # noqa: BLE001 - a truncated or corrupt file fails while decoding
        raise InputDataError(f"cannot read {path}: {exc}") from None
    if pos != n:
        raise InputDataError(f"{path}: item_idx must be 0..n_items-1 in order")


def load_features(workdir: str | Path, digest=None) -> np.ndarray:
    """[n_items, D] float32 item features from item_embeddings.parquet, rows L2-normalised.

    Streamed: batches of rows are decoded and normalised straight into the result, so the peak is
    the result plus one batch (reading the whole table first cost ~5x the result at 1M items).
    `digest` (a dyembed.lineage.vector_digest()) is fed the stored vectors on the way: the state's
    lineage check costs no second read."""
    import pyarrow.parquet as pq

    path = Path(workdir) / EMBEDDINGS_FILE
    features = None
    for pos, block in iter_feature_blocks(workdir):
        if features is None:
            features = np.empty((pq.ParquetFile(path).metadata.num_rows, block.shape[1]), np.float32)
        if digest is not None:
            digest.update(embedding=block)
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        np.divide(block, np.where(norms > 0, norms, 1.0), out=features[pos:pos + len(block)])
    return features


def _events_path(workdir: str | Path) -> Path:
    return require_file(Path(workdir) / EVENTS_FILE, "events (run `dyembed preprocess` first)")


def events_rows(workdir: str | Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(_events_path(workdir)).metadata.num_rows


def n_users_of(workdir: str | Path, max_user: int) -> int:
    """Number of users: rows of users.parquet when present, else the largest user_idx + 1."""
    import pyarrow.parquet as pq

    path = Path(workdir) / USERS_FILE
    n = pq.ParquetFile(path).metadata.num_rows if path.is_file() else 0
    return max(n, int(max_user) + 1)


def iter_events(workdir: str | Path, *, start_row: int = 0, chunk_rows: int = 1_000_000,
                columns: tuple[str, ...] = EVENT_COLUMNS + ("weight",)) -> Iterator[Events]:
    """Stream events.parquet from `start_row` in chunks of about `chunk_rows` rows (pyarrow batches)."""
    import pyarrow.parquet as pq

    path = _events_path(workdir)
    pf = pq.ParquetFile(path)
    names = set(pf.schema_arrow.names)
    missing = [c for c in EVENT_COLUMNS if c not in names]
    if missing:
        raise InputDataError(f"{path} lacks column(s) {', '.join(missing)}")
    wanted = [c for c in columns if c in names]
    row = 0
    pending: list = []
    pending_rows = 0
    pending_offset = max(start_row, 0)

    def flush(batches: list, offset: int) -> Events:
        import pyarrow as pa

        table = pa.Table.from_batches(batches)
        get = lambda c, dt: table.column(c).to_numpy().astype(dt, copy=False) if c in table.column_names else None  # noqa: E731
        return Events(get("user_idx", np.int32), get("item_idx", np.int32), get("ts", np.int64),
                      get("weight", np.float32), offset)

    batch_size = max(1024, min(chunk_rows, 1 << 20))
    for batch in pf.iter_batches(batch_size=batch_size, columns=wanted):
        n = batch.num_rows
        if row + n <= start_row:
            row += n
            continue
        if row < start_row:
            batch = batch.slice(start_row - row)
        row += n
        pending.append(batch)
        pending_rows += batch.num_rows
        if pending_rows >= chunk_rows:
            yield flush(pending, pending_offset)
            pending_offset += pending_rows
            pending, pending_rows = [], 0
    if pending:
        yield flush(pending, pending_offset)


def read_events(workdir: str | Path, *, start_row: int = 0, columns: tuple[str, ...] = EVENT_COLUMNS + ("weight",)) -> Events:
    """All events from `start_row` as one `Events` (only the numeric columns: 20 bytes per row)."""
    parts = list(iter_events(workdir, start_row=start_row, chunk_rows=1 << 62, columns=columns))
    if not parts:
        return Events(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int64), None, start_row)
    (only,) = parts
    return only


def check_events(events: Events, n_items: int, where: str) -> None:
    if len(events) == 0:
        return
    if events.item_idx.min() < 0 or events.item_idx.max() >= n_items:
        raise InputDataError(f"{where}: item_idx outside 0..{n_items - 1} (item embeddings out of date? rerun `dyembed encode`)")
    if events.user_idx.min() < 0:
        raise InputDataError(f"{where}: negative user_idx")
    if len(events) > 1 and np.any(np.diff(events.ts) < 0):
        raise InputDataError(f"{where}: events are not sorted by ts")


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
