"""Large-catalogue memory paths give the same numbers as the plain ones (bench/bench_catalogue.py
measures the memory): streamed feature loading, the frozen model holding V instead of X, releasing
the features after use, and the block-bounded exact top-k of the numpy baselines."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dyembed.config import Config, ModelConfig
from dyembed.errors import InputDataError
from dyembed.evaluate import baselines as bl
from dyembed.replay import io
from dyembed.replay.api import Trained, replay_ranks, seen_items
from dyembed.replay.engine import Engine
from dyembed.replay.model import Model
from dyembed.replay.spec import RuleSpec
from dyembed.replay.state import UserState
from replay_world import features, random_events, random_theta


def write_embeddings(path, X: np.ndarray, *, idx=None, dtype=pa.float32(), row_group_size=None) -> None:
    n, dim = X.shape
    emb = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1).astype(dtype.to_pandas_dtype()), dtype), dim)
    idx = np.arange(n) if idx is None else idx
    pq.write_table(pa.table({"item_idx": pa.array(idx, pa.int32()), "embedding": emb}),
                   path / io.EMBEDDINGS_FILE, row_group_size=row_group_size)


def whole_table_reference(path) -> np.ndarray:
    """What load_features computed before it streamed: the whole table, then one normalisation."""
    table = pq.read_table(path / io.EMBEDDINGS_FILE, columns=["item_idx", "embedding"])
    column = table.column("embedding").combine_chunks()
    x = np.asarray(column.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(len(table), column.type.list_size)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


@pytest.mark.parametrize("dtype", [pa.float32(), pa.float16()])
def test_streamed_features_have_the_same_bits(tmp_path, monkeypatch, dtype):
    monkeypatch.setattr(io, "FEATURE_BATCH_ROWS", 128)  # many batches, across row groups of 300
    X = np.random.default_rng(0).standard_normal((1000, 12)).astype(np.float32) * 3
    X[5] = 0.0  # a zero row stays zero
    write_embeddings(tmp_path, X, dtype=dtype, row_group_size=300)
    got = io.load_features(tmp_path)
    want = whole_table_reference(tmp_path)
    assert got.dtype == np.float32 and got.shape == (1000, 12)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    assert not got[5].any()


def test_streamed_features_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "FEATURE_BATCH_ROWS", 64)
    X = features(200, 4)
    idx = np.arange(200)
    idx[150], idx[151] = 151, 150  # out of order in a later batch
    write_embeddings(tmp_path, X, idx=idx)
    with pytest.raises(InputDataError, match="item_idx must be 0..n_items-1 in order"):
        io.load_features(tmp_path)
    pq.write_table(pa.table({"item_idx": pa.array([0], pa.int32())}), tmp_path / io.EMBEDDINGS_FILE)
    with pytest.raises(InputDataError, match="no column.*embedding"):
        io.load_features(tmp_path)
    pq.write_table(pa.table({"item_idx": pa.array([0], pa.int32()), "embedding": pa.array([[1.0, 2.0]])}),
                   tmp_path / io.EMBEDDINGS_FILE)
    with pytest.raises(InputDataError, match="fixed_size_list"):
        io.load_features(tmp_path)
    write_embeddings(tmp_path, np.zeros((0, 4), np.float32))
    with pytest.raises(InputDataError, match="has no rows"):
        io.load_features(tmp_path)
    (tmp_path / io.EMBEDDINGS_FILE).write_bytes(b"not parquet")
    with pytest.raises(InputDataError, match="cannot read"):
        io.load_features(tmp_path)


def small_model_inputs(rule="adam", loss="full"):
    cfg = ModelConfig(dim=6, rule=rule, loss=loss, num_negatives=8)
    X = features(61, 10, seed=3)
    users, items, ts = random_events(300, 9, 61, seed=4)
    return cfg, X, random_theta(X, cfg, items, seed=5), (users, items, ts)


def test_frozen_model_same_item_matrix(monkeypatch):
    monkeypatch.setattr(Model, "FROZEN_CHUNK_ROWS", 7)  # V built from 9 chunks of X
    cfg, X, theta, _ = small_model_inputs()
    plain = Model(X, theta, cfg)
    frozen = Model(X, theta, cfg, frozen=True)
    assert frozen.X is None and frozen.E is None
    np.testing.assert_array_equal(frozen.item_matrix_tf().numpy(), plain.item_matrix_tf().numpy())
    for name, value in plain.to_theta().arrays().items():
        np.testing.assert_array_equal(frozen.to_theta().arrays()[name], value)
    with pytest.raises(ValueError, match="frozen"):
        frozen.trainable  # noqa: B018 - the property raises
    with pytest.raises(ValueError, match="frozen"):
        frozen.assign(theta)


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_frozen_engine_replays_the_same_numbers(monkeypatch, loss):
    monkeypatch.setattr(Model, "FROZEN_CHUNK_ROWS", 16)
    cfg, X, theta, (users, items, ts) = small_model_inputs(loss=loss)
    spec = RuleSpec.from_config(cfg)
    state = UserState.fresh(9, cfg.dim, spec.n_slots, u0=theta.u0)
    seen = seen_items(9, users[:150], items[:150])
    outs = []
    for frozen in (False, True):
        engine = Engine(Model(X, theta, cfg, frozen=frozen), spec, state, lr=0.0, num_negatives=8)
        res = engine.replay(users, items, ts, ranks=True, exclude=seen, topk=5, lanes=4, steps=7,
                            rng=np.random.default_rng(1))
        outs.append((res, engine.get_state()))
    (a, sa), (b, sb) = outs
    np.testing.assert_array_equal(a.ranks, b.ranks)
    np.testing.assert_array_equal(a.topk, b.topk)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.losses, b.losses)
    np.testing.assert_array_equal(sa.U, sb.U)


def test_release_features_keeps_what_was_built():
    cfg = Config()
    cfg.model.dim = 6
    model_cfg, X, theta, (users, items, ts) = small_model_inputs()
    cfg.model = model_cfg
    spec = RuleSpec.from_config(model_cfg)
    state = UserState.fresh(9, 6, spec.n_slots, u0=theta.u0)

    def make() -> Trained:
        return Trained(workdir=None, config=cfg, manifest={}, theta=theta, state=state, split=np.zeros(0, np.int8),
                       features=X.copy())

    full = make()
    want = replay_ranks(full, users, items, ts, update=True, topk=3)
    V = full.item_matrix().copy()
    released = make()
    released.engine()
    released.item_matrix()
    released.release_features()
    assert released.features is None and released.n_items == 61
    np.testing.assert_array_equal(released.item_matrix(), V)
    got = replay_ranks(released, users, items, ts, update=True, topk=3)
    np.testing.assert_array_equal(got.ranks, want.ranks)
    np.testing.assert_array_equal(got.topk_items, want.topk_items)
    late = make()
    late.release_features()
    with pytest.raises(RuntimeError, match="release"):
        late.engine()
    with pytest.raises(RuntimeError, match="release"):
        late.item_matrix()


def brute_topk(scores: np.ndarray, k: int, mask: np.ndarray | None) -> np.ndarray:
    """Sort every row fully by (score desc, index asc); masked items and -inf are left out, -1 pads."""
    scores = np.array(scores, np.float64)
    if mask is not None:
        scores[mask] = -np.inf
    out = np.full((scores.shape[0], k), -1, np.int32)
    for i, row in enumerate(scores):
        best = np.lexsort((np.arange(row.size), -row))[:k]
        best = best[row[best] > -np.inf]
        out[i, :best.size] = best
    return out


@pytest.mark.parametrize("block", [4, 512])
def test_topk_items_is_exact_with_ties(monkeypatch, block):
    monkeypatch.setattr(bl, "TOPK_BLOCK", block)  # 4: the block-maximum path on small rows
    rng = np.random.default_rng(7)
    for _ in range(150):
        n, m, k = int(rng.integers(1, 5)), int(rng.choice([1, 5, 40, 300, 3000])), int(rng.integers(1, 25))
        kind = int(rng.integers(0, 3))
        # continuous scores; few distinct values (ties at the k-th place); many distinct integers
        scores = rng.random((n, m)) if kind == 0 else rng.integers(0, 3 if kind == 1 else 40, (n, m)).astype(float)
        mask = rng.random((n, m)) < float(rng.choice([0.2, 0.97])) if rng.random() < 0.5 else None
        np.testing.assert_array_equal(bl.topk_items(scores, k, mask), brute_topk(scores, k, mask))
