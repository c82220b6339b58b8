"""The engine's fast paths keep the numbers: the two-stage top-k, the device/runtime helpers and
bench/gpu_check.py on the CPU (its GPU part skipped with a message)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from dyembed.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def tiny_engine(n_items: int):
    sys.path.insert(0, str(REPO / "bench"))
    import bench_engine as be

    X, users, items, ts = be.world(n_items, 50, 400)
    return be.engine_for(X, items, 50, frozen=True, lr=0.0)


def test_two_stage_top_k_equals_top_k_with_ties():
    import tensorflow as tf

    engine = tiny_engine(5000)
    n_pad = -(-5000 // engine.TOPK_BLOCK) * engine.TOPK_BLOCK
    rng = np.random.default_rng(0)
    for k in (1, 10, 25):
        s = np.round(rng.standard_normal((9, n_pad)), 1).astype(np.float32)  # many ties
        s[:, 5000:] = engine.PAD_SCORE
        s[0, :] = 0.5  # a lane of equal scores: the lowest indices win
        got = engine._top_k(tf.constant(s), k, padded=True).numpy()
        np.testing.assert_array_equal(got, tf.math.top_k(tf.constant(s), k).indices.numpy())
    assert list(got[0]) == list(range(25))


def test_padded_pass_ranks_equal_unpadded_scores():
    """Ranks and top-k of a frozen replay over a catalogue that is not a multiple of the block."""
    engine = tiny_engine(1000)  # 1000 = 7 × 128 + 104: 24 padded rows
    rng = np.random.default_rng(1)
    users = rng.integers(0, 50, 300).astype(np.int32)
    items = rng.integers(0, 1000, 300).astype(np.int32)
    ts = np.sort(rng.integers(0, 10**6, 300)).astype(np.int64)
    res = engine.replay(users, items, ts, update=False, ranks=True, topk=5, lanes=64, steps=8)
    V = engine.model.item_matrix()
    b = engine.model.b.numpy()
    tau = engine.model.temperature
    U = engine.get_state().U
    s = U[users] @ V.T / tau + b
    s_t = s[np.arange(300), items]
    want = (s >= s_t[:, None] - 1e-5 * np.abs(s_t[:, None])).sum(1)  # float32 rounding: ties within 1e-5
    low = (s > s_t[:, None] + 1e-5 * np.abs(s_t[:, None])).sum(1) + 1
    assert np.all((res.ranks >= low) & (res.ranks <= want))
    assert res.topk.max() < 1000
    np.testing.assert_array_equal(np.sort(res.topk[:, :1], axis=1)[:, 0], np.argmax(s, axis=1))


def test_apply_device_rejects_unknown_and_missing_gpu():
    from dyembed.replay.runtime import apply_device, current_device

    with pytest.raises(ConfigError, match="--device must be auto, cpu or gpu"):
        apply_device("tpu")
    if current_device() == "cpu":
        with pytest.raises(ConfigError, match="TensorFlow sees no GPU"):
            apply_device("gpu")
    assert apply_device("cpu") == "cpu"


def test_block_budget_on_cpu_is_the_configured_cap():
    from dyembed.replay.runtime import block_budget_mb, host_available_mb

    avail = host_available_mb()
    assert block_budget_mb(256, "cpu") == (256.0 if avail is None or avail >= 1024 else max(16.0, avail / 4))


def test_gpu_check_tiny_runs_on_cpu(capsys):
    sys.path.insert(0, str(REPO / "bench"))
    import gpu_check

    from dyembed.replay.runtime import current_device

    if current_device() == "gpu":
        pytest.skip("a GPU is visible: run bench/gpu_check.py itself")
    assert gpu_check.main(["--tiny"]) == 0
    out = capsys.readouterr().out
    assert "skipping the GPU part" in out
    assert "items=    2,000" in out and "train" in out and "evaluate" in out
