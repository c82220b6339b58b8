"""The evaluation report: its JSON schema, the per-event rank dump, and the figure.

The JSON report (`dyembed evaluate --json FILE`, also returned by `evaluate()`) has a stable,
versioned shape, documented in docs/metrics.md and checked by `validate_report`:

    {
      "schema": "dyembed.evaluate/1",
      "workdir": str,
      "protocol": "loo" | "temporal",
      "split": {...protocol details: cut_ts, test_fraction, test_start | skipped_users},
      "masking": {"setting": "auto"|"on"|"off", "seen_masked": bool, "repeat_rate": float,
                  "repeat_threshold": float, "reason": str, "seen_items": str},
      "ks": [int, ...],
      "counts": {"events", "users", "items", "train_events", "validation_events",
                 "test_events", "test_users", "skipped_users"},
      "bootstrap": {"rounds": int, "level": 0.95, "unit": "user", "seed": int},
      "primary_metric": "ndcg@10",
      "models": {
        "<name>": {
          "kind": "dynamic" | "baseline",
          "description": str,
          "events": int, "users": int,
          "per_event": {metric: float|null}, "per_user": {metric: float|null},
          "ci95_per_event": {metric: [lo, hi]}, "ci95_per_user": {metric: [lo, hi]},
          "coverage": {"@K": float}, "pop_percentile": {"@K": float},
          "lift": {"static": {metric: float|null}, "pop": {metric: float|null}},
          "seconds": float
        }, ...
      },
      "breakdown": {                     (optional in readers: reports before it lack it)
        "definitions": {slice: str},
        "item_warmness" | "user_history": {
          "buckets": [label, ...], "events": {label: int},
          "models": {"<name>": {label: {"events", "users", "per_event", "ci95_per_event"}}}
        }
      },
      "config": {"evaluate": {...}},
      "seconds": float
    }

Metric names: recall@K, ndcg@K, mrr@K for every K of "ks", then mrr. Lift = (model − baseline)
/ baseline on the per-event average (null when the baseline is absent or 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dyembed.artefacts import atomic_path, write_json
from dyembed.evaluate.metrics import metric_names, ndcg_at_k, recall_at_k

SCHEMA = "dyembed.evaluate/1"

TOP_KEYS = {
    "schema": str, "workdir": str, "protocol": str, "split": dict, "masking": dict, "ks": list,
    "counts": dict, "bootstrap": dict, "primary_metric": str, "models": dict, "config": dict,
    "seconds": (int, float),
}
COUNT_KEYS = ["events", "users", "items", "train_events", "validation_events", "test_events", "test_users", "skipped_users"]
MODEL_KEYS = {
    "kind": str, "description": str, "events": int, "users": int, "per_event": dict, "per_user": dict,
    "ci95_per_event": dict, "ci95_per_user": dict, "coverage": dict, "pop_percentile": dict, "lift": dict,
    "seconds": (int, float),
}


def _check(cond: bool, where: str) -> None:
    if not cond:
        raise ValueError(f"report schema: {where}")


def validate_report(report: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first key that does not follow the schema above."""
    for key, typ in TOP_KEYS.items():
        _check(key in report, f"missing key '{key}'")
        _check(isinstance(report[key], typ), f"'{key}' has type {type(report[key]).__name__}")
    _check(report["schema"] == SCHEMA, f"schema is {report['schema']!r}, expected {SCHEMA!r}")
    _check(report["protocol"] in ("loo", "temporal"), "protocol must be loo or temporal")
    _check(isinstance(report["masking"].get("seen_masked"), bool), "masking.seen_masked must be a bool")
    _check(report["masking"].get("setting") in ("auto", "on", "off"), "masking.setting must be auto|on|off")
    ks = report["ks"]
    _check(bool(ks) and all(isinstance(k, int) and k > 0 for k in ks), "ks must be positive integers")
    for key in COUNT_KEYS:
        _check(isinstance(report["counts"].get(key), int), f"counts.{key} must be an integer")
    names = metric_names(ks)
    _check(report["primary_metric"] in names, "primary_metric must be one of the metrics")
    _check(bool(report["models"]), "models must not be empty")
    for name, model in report["models"].items():
        for key, typ in MODEL_KEYS.items():
            _check(key in model, f"models.{name}: missing key '{key}'")
            _check(isinstance(model[key], typ), f"models.{name}.{key} has type {type(model[key]).__name__}")
        for part in ("per_event", "per_user"):
            _check(list(model[part]) == names, f"models.{name}.{part} must list {names}")
            for metric, value in model[part].items():
                _check(value is None or (isinstance(value, float) and 0.0 <= value <= 1.0),
                       f"models.{name}.{part}.{metric} must be null or in [0, 1]")
        for part in ("ci95_per_event", "ci95_per_user"):
            _check(list(model[part]) == names, f"models.{name}.{part} must list {names}")
            for metric, pair in model[part].items():
                _check(pair is None or (isinstance(pair, list) and len(pair) == 2), f"models.{name}.{part}.{metric} must be [lo, hi]")
        _check(list(model["coverage"]) == [f"@{k}" for k in ks], f"models.{name}.coverage must list @K")
        _check(list(model["pop_percentile"]) == [f"@{k}" for k in ks], f"models.{name}.pop_percentile must list @K")
        _check(set(model["lift"]) == {"static", "pop"}, f"models.{name}.lift must have static and pop")
    if "breakdown" in report:
        for slice_name in ("item_warmness", "user_history"):
            part = report["breakdown"].get(slice_name)
            _check(isinstance(part, dict), f"breakdown.{slice_name} missing")
            _check(set(part["models"]) == set(report["models"]), f"breakdown.{slice_name}.models must list every model")
            for name, per_bucket in part["models"].items():
                _check(list(per_bucket) == part["buckets"], f"breakdown.{slice_name}.models.{name} must list the buckets")
                for label, cell in per_bucket.items():
                    _check(list(cell["per_event"]) == names, f"breakdown.{slice_name}.models.{name}.{label} must list {names}")


def write_report(path: str | Path, report: Mapping[str, Any]) -> None:
    write_json(path, jsonable(report))


def jsonable(value: Any) -> Any:
    """JSON-safe copy: numpy scalars → Python, NaN → null."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------- rank dump


def write_rank_dump(path: str | Path, blocks: Sequence[tuple[str, np.ndarray, np.ndarray]], *,
                    user_idx: np.ndarray, item_idx: np.ndarray, ts: np.ndarray,
                    user_ids: np.ndarray, item_ids: np.ndarray,
                    slices: Mapping[str, np.ndarray] | None = None) -> int:
    """Parquet with one row per (model, test event): model, user_id, item_id, ts, rank, and one
    int64 column per breakdown slice (`slices[name]`: one value per test event, in the order of every
    block's rows; dyembed.evaluate.breakdown.from_rank_dump recomputes the breakdown from them).

    `blocks` = [(model name, test row indices, ranks)]; written one model at a time (one row group
    each) so memory stays at one model's test events. Returns the number of rows written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    slices = dict(slices or {})
    schema = pa.schema([("model", pa.string()), ("user_id", pa.string()), ("item_id", pa.string()),
                        ("ts", pa.int64()), ("rank", pa.int64())] + [(name, pa.int64()) for name in slices])
    total = 0
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for model, rows, ranks in blocks:
                table = pa.table({
                    "model": pa.array([model] * rows.size, pa.string()),
                    "user_id": pa.array(user_ids[user_idx[rows]], pa.string()),
                    "item_id": pa.array(item_ids[item_idx[rows]], pa.string()),
                    "ts": pa.array(ts[rows].astype(np.int64)),
                    "rank": pa.array(np.asarray(ranks, dtype=np.int64)),
                    **{name: pa.array(np.asarray(values, dtype=np.int64)) for name, values in slices.items()},
                }, schema=schema)
                writer.write_table(table)
                total += rows.size
    return total


# --------------------------------------------------------------------------- figure


def time_buckets(ts: np.ndarray, n_buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Bucket index per test event (equal-count buckets by time) and each bucket's start time."""
    ts = np.asarray(ts, dtype=np.int64)
    n_buckets = max(1, min(n_buckets, ts.size))
    edges = np.quantile(ts, np.linspace(0, 1, n_buckets + 1))
    bucket = np.clip(np.searchsorted(edges[1:-1], ts, side="right"), 0, n_buckets - 1)
    return bucket, edges[:-1]


def write_plot(path: str | Path, ranks: Mapping[str, np.ndarray], test_ts: np.ndarray, *, ks: Sequence[int],
               k_time: int = 10, n_buckets: int = 10, title: str = "") -> None:
    """Three panels: NDCG@K and Recall@K vs K for every model; NDCG@k_time of the dynamic model vs
    static (and frozen) over equal-count test-time buckets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kmax = max(max(ks), 50)
    k_grid = np.unique(np.concatenate([np.arange(1, 11), np.linspace(10, kmax, 9).astype(int), ks]))
    fig, (ax_n, ax_r, ax_t) = plt.subplots(1, 3, figsize=(16, 4.5))
    for name, r in ranks.items():
        ax_n.plot(k_grid, [ndcg_at_k(r, k).mean() for k in k_grid], label=name)
        ax_r.plot(k_grid, [recall_at_k(r, k).mean() for k in k_grid], label=name)
    for ax, what in ((ax_n, "NDCG@K"), (ax_r, "Recall@K")):
        ax.set_xlabel("K")
        ax.set_ylabel(f"{what} (per-event average)")
        ax.set_title(f"{what} vs K")
        ax.grid(alpha=0.3)
    ax_r.legend(fontsize=8)

    bucket, starts = time_buckets(test_ts, n_buckets)
    import datetime as dt

    labels = [dt.datetime.fromtimestamp(int(s), dt.timezone.utc).strftime("%Y-%m-%d") for s in starts]
    shown = [m for m in ("dyembed", "frozen", "static") if m in ranks] or list(ranks)[:3]
    for name in shown:
        vals = ndcg_at_k(ranks[name], k_time)
        per_bucket = [vals[bucket == b].mean() if (bucket == b).any() else np.nan for b in range(len(starts))]
        ax_t.plot(range(len(starts)), per_bucket, marker="o", label=name)
    ax_t.set_xticks(range(len(starts)))
    ax_t.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
    ax_t.set_ylabel(f"NDCG@{k_time}")
    ax_t.set_title(f"NDCG@{k_time} over test time (equal-count buckets)")
    if shown:
        ax_t.legend(fontsize=8)
    ax_t.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    suffix = Path(path).suffix or ".png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=suffix.lstrip(".") or "png", dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- breakdown table


def render_breakdown(report: Mapping[str, Any], console: Any, order: Sequence[str] = ()) -> None:
    """The primary metric per target-item warmness bucket and per user history bucket, one row per
    model (the column headers give each bucket's number of test events)."""
    from rich.table import Table

    part = report.get("breakdown")
    if not part:
        return
    metric = report["primary_metric"]
    pretty = metric.replace("ndcg", "NDCG").replace("recall", "Recall").replace("mrr", "MRR")
    table = Table(title=f"{pretty} by target-item warmness (history rows of the item; 0 = cold items) "
                        f"and by user history length (rows before the event)", title_justify="left")
    table.add_column("model", style="bold", no_wrap=True)
    columns = []
    for slice_name, head in (("item_warmness", "item"), ("user_history", "user")):
        for label in part[slice_name]["buckets"]:
            n = part[slice_name]["events"][label]
            if n:
                columns.append((slice_name, label))
                table.add_column(f"{head} {label}\n{n:,} ev", justify="right")
    models = list(report["models"])
    for name in [m for m in order if m in models] + [m for m in models if m not in order]:
        cells = []
        for slice_name, label in columns:
            value = part[slice_name]["models"][name][label]["per_event"][metric]
            cells.append("–" if value is None else f"{value:.4f}")
        table.add_row(name, *cells)
    console.print(table)
