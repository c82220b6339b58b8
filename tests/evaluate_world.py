"""A tiny work directory for the evaluate/recommend tests, written directly in the documented
artefact schemas (events, items, users, item_embeddings parquet), so these tests do not depend on
preprocess or the language model.

World: items belong to one of `topics` topics (features = topic one-hot + small noise); each user
follows one topic and switches to the next topic half-way through their events, with a little
popularity noise. Timestamps are increasing; row order is time order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def write_world(workdir: Path, *, users: int = 30, items: int = 40, topics: int = 4, events_per_user: int = 24,
                dim: int = 12, seed: int = 0, min_events: int | None = None) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    item_topic = np.arange(items) % topics
    rows = []
    for u in range(users):
        n = events_per_user if min_events is None else int(rng.integers(min_events, events_per_user + 1))
        start_topic = int(rng.integers(topics))
        t = 1_600_000_000 + int(rng.integers(0, 50_000))
        for e in range(n):
            topic = start_topic if e < n // 2 else (start_topic + 1) % topics
            pool = np.flatnonzero(item_topic == topic) if rng.random() < 0.85 else np.arange(items)
            rows.append((u, int(rng.choice(pool)), t))
            t += int(rng.integers(60, 20_000))
    rows.sort(key=lambda r: r[2])
    user_idx = np.array([r[0] for r in rows], np.int32)
    item_idx = np.array([r[1] for r in rows], np.int32)
    ts = np.array([r[2] for r in rows], np.int64)
    pq.write_table(pa.table({"user_idx": user_idx, "item_idx": item_idx, "ts": ts}), workdir / "events.parquet")
    pq.write_table(pa.table({
        "item_idx": np.arange(items, dtype=np.int32),
        "item_id": [f"i{j}" for j in range(items)],
        "text": [f"item {j} about topic {item_topic[j]}" for j in range(items)],
        "tokens": [["item", str(j), "topic", str(item_topic[j])] for j in range(items)],
    }), workdir / "items.parquet")
    pq.write_table(pa.table({"user_idx": np.arange(users, dtype=np.int32), "user_id": [f"u{u}" for u in range(users)]}),
                   workdir / "users.parquet")
    feats = np.zeros((items, dim), np.float32)
    feats[np.arange(items), item_topic] = 1.0
    feats += 0.1 * rng.standard_normal((items, dim)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    emb_type = pa.list_(pa.float32(), dim)
    pq.write_table(pa.table({
        "item_idx": np.arange(items, dtype=np.int32),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(feats.ravel()), dim).cast(emb_type),
        "text_hash": [f"h{j}" for j in range(items)],
    }), workdir / "item_embeddings.parquet")
    return {"user_idx": user_idx, "item_idx": item_idx, "ts": ts, "features": feats}


# --------------------------------------------------------------------------- trained work dirs

_CACHE: dict[tuple, Path] = {}


def tiny_config(protocol: str):
    from dyembed.config import Config

    cfg = Config()
    cfg.model.dim = 8
    cfg.train.epochs = 2
    cfg.train.batch_size = 16
    cfg.train.lr = 0.05
    cfg.evaluate.protocol = protocol
    # the tiny world repeats items (34 % of events): auto would not mask; the loo tests check masking
    cfg.evaluate.mask_seen = "on" if protocol == "loo" else "auto"
    cfg.evaluate.test_fraction = 0.25
    cfg.evaluate.bootstrap = 50
    cfg.evaluate.static_epochs = 5
    cfg.evaluate.ks = [5, 10]
    return cfg


def write_state(workdir: Path, protocol: str, seed: int = 0) -> None:
    """A state/ laid out as `train` leaves it, with a random θ instead of a trained one: the
    evaluation snapshot (users after every train + validation row of the split) and a serving
    state (the same vectors, counts over every row), with their lineage. The evaluate contracts
    (no leakage, masking, the report) do not depend on θ being good, and this costs no training."""
    import pyarrow.parquet as pq

    from dyembed import lineage
    from dyembed.config import to_toml
    from dyembed.replay.state import UserState, save_state
    from dyembed.replay.train import compute_roles, split_settings

    cfg = tiny_config(protocol)
    ev = pq.read_table(workdir / "events.parquet").to_pandas()
    roles = compute_roles(ev.user_idx.values, ev.ts.values, split_settings(cfg))
    n_users = pq.ParquetFile(workdir / "users.parquet").metadata.num_rows
    n_items = pq.ParquetFile(workdir / "items.parquet").metadata.num_rows
    feature_dim = pq.read_table(workdir / "item_embeddings.parquet").column("embedding").type.list_size
    rng = np.random.default_rng(seed)
    d = cfg.model.dim
    theta = {"P": (rng.standard_normal((feature_dim, d)) / np.sqrt(d)).astype(np.float32),
             "E": 0.3 * rng.standard_normal((n_items, d)).astype(np.float32),
             "b": 0.1 * rng.standard_normal(n_items).astype(np.float32),
             "log_tau": np.array(0.0, np.float32), "log_alpha": np.array(np.log(0.5), np.float32),
             "u0": 0.2 * rng.standard_normal(d).astype(np.float32)}
    snapshot = UserState.fresh(n_users, d, 0, init="prior", u0=theta["u0"])  # theta: the arrays theta.npz holds
    snapshot.U += rng.standard_normal(snapshot.U.shape).astype(np.float32)
    serving = snapshot.copy()
    for users, rows in ((snapshot, roles != 2), (serving, np.ones(len(roles), bool))):
        users.count[:] = np.bincount(ev.user_idx.values[rows], minlength=n_users)
        last = np.zeros(n_users, np.int64)
        last[ev.user_idx.values[rows]] = ev.ts.values[rows]  # rows are in time order: the last write wins
        users.last_ts[:] = last
    settings = split_settings(cfg)
    sc = lineage.scan(workdir, history_roles=roles)
    save_state(workdir, users=serving, theta=theta, snapshot=(snapshot, roles),
               manifest={"watermark": {"rows": len(ev), "last_ts": int(ev.ts.values[-1])}, "n_users": n_users,
                         "n_items": n_items, "dim": d, "feature_dim": feature_dim, "rule": "sgd", "loss": "full",
                         "user_init": "prior", "split": settings, "train": {},
                         "lineage": lineage.record(sc, rows=len(ev), n_users=n_users, n_items=n_items),
                         "eval": {"protocol": protocol, "rows": len(ev), "n_users": n_users,
                                  "test_events": int((roles == 2).sum()),
                                  "lineage": lineage.eval_record(sc, n_users=n_users)}},
               config_toml=to_toml(cfg))
    (workdir / "config.toml").write_text(to_toml(cfg))


def build_workdir(root: Path, protocol: str, *, trained: bool = False) -> Path:
    """A tiny world with a state for `protocol`: written directly (random θ), or by `train`
    when `trained` (seconds of TF). Cached per session; tests must not modify it (copy first)."""
    key = (str(root), protocol, trained)
    if key not in _CACHE:
        workdir = root / f"world-{protocol}-{'trained' if trained else 'random'}"
        write_world(workdir, seed=3)
        if trained:
            from dyembed.config import to_toml
            from dyembed.replay.train import train

            cfg = tiny_config(protocol)
            (workdir / "config.toml").write_text(to_toml(cfg))
            train(workdir, cfg)
        else:
            write_state(workdir, protocol)
        _CACHE[key] = workdir
    return _CACHE[key]


@pytest.fixture
def loo_workdir(tmp_path_factory) -> Path:
    return build_workdir(tmp_path_factory.getbasetemp(), "loo")


@pytest.fixture
def temporal_workdir(tmp_path_factory) -> Path:
    return build_workdir(tmp_path_factory.getbasetemp(), "temporal")
