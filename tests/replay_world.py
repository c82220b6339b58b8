"""Tiny worlds for the replay/train tests: random θ and events, and on-disk work directories."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dyembed.config import ModelConfig


def features(n_items: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_items, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def random_events(n: int, n_users: int, n_items: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user_idx int32, item_idx int32, ts int64 sorted, with ties)."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n).astype(np.int32)
    items = rng.integers(0, n_items, n).astype(np.int32)
    ts = np.sort(rng.integers(1_000_000, 1_000_000 + 5 * 86_400, n)).astype(np.int64)
    ts[10:20] = ts[10]  # equal timestamps
    return users, items, ts


def random_theta(X: np.ndarray, cfg: ModelConfig, items: np.ndarray, seed: int = 0):
    """θ with non-trivial E, u0, per-dim α (when configured), W, β and decays, so every term of the rule matters."""
    from dyembed.replay.model import init_theta

    rng = np.random.default_rng(seed)
    theta = init_theta(X, cfg, seed=seed, train_items=items)
    values = {"u0": (rng.standard_normal(cfg.dim) * 0.2).astype(np.float32),
              "log_alpha": np.log(rng.uniform(0.05, 0.2, theta.log_alpha.shape)).astype(np.float32),
              "log_tau": np.array(np.log(0.8), np.float32)}
    if theta.E is not None:
        values["E"] = (rng.standard_normal(theta.E.shape) * 0.3).astype(np.float32)
    if theta.W is not None:
        values["W"] = (rng.standard_normal(theta.W.shape) * 0.3).astype(np.float32)
        values["logit_context_decay"] = np.array(0.4, np.float32)
    if theta.beta is not None:
        values["beta"] = np.array(-0.7, np.float32)
        values["logit_repeat_decay"] = np.array(1.2, np.float32)
    return theta.replace(**values)


def write_workdir(workdir: Path, users: np.ndarray, items: np.ndarray, ts: np.ndarray, X: np.ndarray,
                  *, n_users: int | None = None, weight: np.ndarray | None = None) -> Path:
    """events.parquet, item_embeddings.parquet and users.parquet as preprocess/encode write them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    workdir.mkdir(parents=True, exist_ok=True)
    cols = {"user_idx": pa.array(users, pa.int32()), "item_idx": pa.array(items, pa.int32()),
            "ts": pa.array(ts, pa.int64())}
    if weight is not None:
        cols["weight"] = pa.array(weight, pa.float32())
    pq.write_table(pa.table(cols), workdir / "events.parquet")
    n_items, dim = X.shape
    emb = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1), pa.float32()), dim)
    pq.write_table(pa.table({"item_idx": pa.array(np.arange(n_items), pa.int32()), "embedding": emb,
                             "text_hash": pa.array([f"h{i}" for i in range(n_items)])}), workdir / "item_embeddings.parquet")
    n_users = n_users or int(users.max()) + 1
    pq.write_table(pa.table({"user_idx": pa.array(np.arange(n_users), pa.int32()),
                             "user_id": pa.array([f"u{i}" for i in range(n_users)])}), workdir / "users.parquet")
    return workdir


def drifting_world(n_users: int = 40, per_user: int = 40, topics: int = 6, per_topic: int = 10, seed: int = 0):
    """Each user reads items of topic A for its first 60 % of events, then of topic B.

    Features: the topic's direction + a little noise, so text tells the topic. Events of all users
    are interleaved in time; the last 20 % of rows (by time) are all in each user's topic B, so a
    dynamic user ranks topic-B items first while a static vector (fit on A and B) mixes them.
    """
    rng = np.random.default_rng(seed)
    n_items = topics * per_topic
    topic_dir = np.eye(topics, 16)
    item_topic = np.repeat(np.arange(topics), per_topic)
    X = topic_dir[item_topic] + 0.15 * rng.standard_normal((n_items, 16))
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    users, items, ts = [], [], []
    switch = int(per_user * 0.6)
    for u in range(n_users):
        a, b = rng.choice(topics, 2, replace=False)
        for k in range(per_user):
            topic = a if k < switch else b
            users.append(u)
            items.append(topic * per_topic + rng.integers(per_topic))
            ts.append(1_000_000 + k * 1000 + rng.integers(1000))  # user-synchronous clocks
    order = np.argsort(np.array(ts), kind="stable")
    return (np.array(users, np.int32)[order], np.array(items, np.int32)[order], np.array(ts, np.int64)[order],
            X, item_topic)
