"""Plain tables for approximate-nearest-neighbour systems: the bias folded into the vectors.

    user row  q' = [(u + c W) / τ, 1]        (cold-start users: u = u0, no recent items)
    item row  v' = [v, b]                    so  q' · v' = (u + c W) · v / τ + b

which is the model's score without the repeat term β h (it depends on the user's last H items,
not on a vector: rerank the candidates with the SavedModel, or add β h from the `recent`
column, most recent first). Numpy only: the context mean is scoring.py's, so the tables agree with recommend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dyembed.export.tables import ServingTables
from dyembed.replay.scoring import _sigmoid, recent_weights

USERS_FILE = "users.parquet"
ITEMS_FILE = "items.parquet"
FAISS_FILE = "items.faiss"
BLOCK_USERS = 65_536


def user_queries(t: ServingTables, rows: np.ndarray) -> np.ndarray:
    """[len(rows), d] float32: (u + c W) / τ of state rows, the cold-start ones at u0."""
    th, users = t.theta, t.users
    cold = t.cold()[rows]
    U = np.where(cold[:, None], np.asarray(th.u0, np.float32)[None, :], users.U[rows]).astype(np.float32)
    if th.W is not None:
        recent = np.where(cold[:, None], -1, users.recent[rows])
        count = np.where(cold, 0, users.count[rows])
        w = recent_weights(recent, count, _sigmoid(th.logit_context_decay))
        total = w.sum(axis=1, keepdims=True)
        c = np.einsum("bh,bhd->bd", w, t.V[np.maximum(recent, 0)]) / np.maximum(total, np.float32(1e-30))
        U = U + c.astype(np.float32) @ np.asarray(th.W, np.float32)
    return (U / np.float32(th.temperature)).astype(np.float32)


def most_recent_first(t: ServingTables, rows: np.ndarray) -> np.ndarray:
    """[len(rows), H] item_idx of the users' rings ordered by age (0 = the last event; -1 empty):
    h_j = Σ_a γr^a [item at age a = j] for the repeat term."""
    recent, count = t.users.recent[rows], t.users.count[rows].astype(np.int64)
    H = recent.shape[1]
    age = np.mod(count[:, None] - 1 - np.arange(H)[None, :], H)
    return np.take_along_axis(recent, np.argsort(age, axis=1, kind="stable"), axis=1)


def item_rows(t: ServingTables) -> np.ndarray:
    """[n_items, d + 1] float32: [v, b]."""
    return np.concatenate([t.V, np.asarray(t.theta.b, np.float32)[:, None]], axis=1)


def _vector_column(values: np.ndarray):
    import pyarrow as pa

    width = values.shape[1]
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(values, np.float32).reshape(-1)), width)


def write_tables(t: ServingTables, directory: Path, *, faiss: bool = True) -> dict[str, Any]:
    """users.parquet, items.parquet (and items.faiss when faiss is importable) in `directory`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    items = item_rows(t)
    pq.write_table(pa.table({"item_idx": pa.array(np.arange(t.n_items, dtype=np.int32)),
                             "item_id": pa.array([str(i) for i in t.item_ids], pa.string()),
                             "vector": _vector_column(items)}), directory / ITEMS_FILE, compression="zstd")
    schema = None
    writer = None
    try:
        for lo in range(0, t.n_users, BLOCK_USERS):
            rows = np.arange(lo, min(t.n_users, lo + BLOCK_USERS))
            q = user_queries(t, rows)
            cols = {"user_idx": pa.array(rows.astype(np.int32)),
                    "user_id": pa.array([str(i) for i in t.user_ids[rows]], pa.string()),
                    "vector": _vector_column(np.concatenate([q, np.ones((len(rows), 1), np.float32)], axis=1)),
                    "cold_start": pa.array(t.cold()[rows])}
            if t.history:
                cols["recent"] = pa.array([r[r >= 0].tolist() for r in most_recent_first(t, rows)], pa.list_(pa.int32()))
            table = pa.table(cols)
            if writer is None:
                schema = table.schema
                writer = pq.ParquetWriter(directory / USERS_FILE, schema, compression="zstd")
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    out: dict[str, Any] = {"users": USERS_FILE, "items": ITEMS_FILE, "width": int(items.shape[1]), "faiss": None}
    if faiss:
        out["faiss"] = _faiss_index(items, directory / FAISS_FILE)
    return out


def _faiss_index(items: np.ndarray, path: Path) -> str | None:
    """An exact inner-product index over the item rows (ids = item_idx); None without faiss."""
    try:
        import faiss
    except ImportError:
        return None
    index = faiss.IndexFlatIP(items.shape[1])
    index.add(np.ascontiguousarray(items, np.float32))
    faiss.write_index(index, str(path))
    return path.name
