"""The hashing encoder and the artefact format, without any language model."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny_models import TITLES, read_embeddings, simple_tokens, write_items

from dyembed.config import Config
from dyembed.encode.hashing import HashingEncoder, hashing_input, token_vector
from dyembed.encode.run import encode
from dyembed.errors import ConfigError, InputDataError


def hashing_cfg(**encode_keys) -> Config:
    cfg = Config()
    cfg.encode.encoder = "hashing"
    cfg.encode.hashing_dim = 64
    for key, value in encode_keys.items():
        setattr(cfg.encode, key, value)
    return cfg


def reference_hashing(tokens: list[str], dim: int, seed: int) -> np.ndarray:
    """float64 reference: Σ (1 + ln c_t) r_t, normalised, written out term by term."""
    x = np.zeros(dim)
    for token, count in Counter(tokens).items():
        x += (1 + math.log(count)) * token_vector(token, dim, seed)
    norm = np.linalg.norm(x)
    return x / norm if norm > 0 else x


def test_hashing_matches_reference_and_is_deterministic():
    texts = [hashing_input(t) for t in (["dark", "knight", "dark"], ["love"], [], ["war", "love", "stori"])]
    a = HashingEncoder(64, seed=3).encode(texts)
    b = HashingEncoder(64, seed=3).encode(texts)
    assert a.dtype == np.float32 and a.shape == (4, 64)
    np.testing.assert_array_equal(a, b)
    for text, row in zip(texts, a):
        np.testing.assert_allclose(row, reference_hashing(text.split(), 64, 3), atol=1e-6)
    assert np.all(a[2] == 0)  # no tokens: the zero vector
    np.testing.assert_allclose(np.linalg.norm(a[[0, 1, 3]], axis=1), 1.0, atol=1e-6)
    # shared words make vectors similar; a different seed gives different vectors
    assert a[1] @ a[3] > 0.3 > abs(a[0] @ a[1])
    assert not np.allclose(HashingEncoder(64, seed=4).encode(texts[:1]), a[:1])


def test_hashing_token_vectors_are_stable_across_runs():
    # pinned value: blake2b + numpy's PCG64 are stable, so tomorrow's run gives today's vectors
    v = token_vector("knight", 8, 0)
    assert v.shape == (8,)
    np.testing.assert_allclose(v, token_vector("knight", 8, 0))
    assert not np.allclose(v, token_vector("knights", 8, 0))


def test_encode_hashing_writes_artefacts(tmp_path):
    write_items(tmp_path)
    summary = encode(tmp_path, hashing_cfg())
    table, matrix = read_embeddings(tmp_path)
    assert table.column_names == ["item_idx", "embedding", "text_hash"]
    etype = table.schema.field("embedding").type
    assert pa.types.is_fixed_size_list(etype) and etype.list_size == 64 and etype.value_type == pa.float32()
    assert table.schema.field("item_idx").type == pa.int32()
    assert table.column("item_idx").to_pylist() == list(range(len(TITLES)))
    expected = np.stack([reference_hashing(simple_tokens(t), 64, 0) for t in TITLES])
    np.testing.assert_allclose(matrix, expected, atol=1e-6)
    manifest = json.loads((tmp_path / "encode_manifest.json").read_text())
    assert manifest["dim"] == 64 and manifest["fingerprint"]["encoder"] == "hashing"
    assert summary["items"] == len(TITLES) and summary["items_encoded"] == len(set(TITLES))
    assert summary["encoder"] == "hashing"
    assert not (tmp_path / ".encode_checkpoints").exists()


def test_encode_hashing_incremental_and_float16(tmp_path):
    write_items(tmp_path)
    encode(tmp_path, hashing_cfg())
    again = encode(tmp_path, hashing_cfg())
    assert again["items_encoded"] == 0 and again["items_reused"] == len(TITLES)
    changed = list(TITLES)
    changed[3] = "space opera for grown ups"
    write_items(tmp_path, changed)
    third = encode(tmp_path, hashing_cfg())
    assert third["items_encoded"] == 1
    half = encode(tmp_path, hashing_cfg(dtype="float16"))
    assert half["items_encoded"] == len(set(changed))  # dtype is part of the fingerprint
    table, matrix = read_embeddings(tmp_path)
    assert table.schema.field("embedding").type.value_type == pa.float16()
    assert matrix.dtype == np.float16


def test_encode_errors(tmp_path):
    with pytest.raises(InputDataError, match="items file not found"):
        encode(tmp_path, hashing_cfg())
    write_items(tmp_path, drop="tokens")
    with pytest.raises(InputDataError, match="no 'tokens' column"):
        encode(tmp_path, hashing_cfg())
    write_items(tmp_path, drop="text")
    cfg = hashing_cfg(encoder="hf:/nonexistent/model")
    with pytest.raises(InputDataError, match="no 'text' column"):
        encode(tmp_path, cfg)
    write_items(tmp_path)
    with pytest.raises(InputDataError, match="model directory not found"):
        encode(tmp_path, cfg)
    with pytest.raises(ConfigError, match="checkpoint_every"):
        encode(tmp_path, hashing_cfg(checkpoint_every=0))
    with pytest.raises(ConfigError, match="--model must be 'hashing', a model directory"):
        encode(tmp_path, hashing_cfg(), model="s3://bucket/model")
    pq.write_table(pa.table({"item_idx": pa.array([0, 1], pa.int32()), "text": pa.array([1, 2])}), tmp_path / "items.parquet")
    with pytest.raises(InputDataError, match="column 'text' is int64, expected string"):
        encode(tmp_path, cfg)
    pq.write_table(pa.table({"item_idx": pa.array([0, 2], pa.int32()), "text": ["a", "b"]}), tmp_path / "items.parquet")
    with pytest.raises(InputDataError, match="item_idx must be dense"):
        encode(tmp_path, cfg)


def test_fallback_to_hashing_reports_reason(tmp_path, monkeypatch):
    monkeypatch.delenv("DYEMBED_MODEL", raising=False)
    write_items(tmp_path)
    cfg = hashing_cfg(encoder="hf:some-org/not-in-cache-model", fallback_to_hashing=True)
    summary = encode(tmp_path, cfg)
    assert summary["encoder"] == "hashing"
    assert "not-in-cache-model" in summary["fallback_reason"] and "never downloads" in summary["fallback_reason"]
    cfg.encode.fallback_to_hashing = False
    with pytest.raises(InputDataError, match="local Hugging Face cache"):
        encode(tmp_path, cfg)
    # a config mistake is never hidden by the fallback
    cfg.encode.fallback_to_hashing, cfg.encode.max_length = True, 1
    with pytest.raises(ConfigError, match="encode.max_length"):
        encode(tmp_path, cfg)


def test_model_override_precedence(monkeypatch):
    from dyembed.encode.run import resolve_encoder_spec

    monkeypatch.delenv("DYEMBED_MODEL", raising=False)
    assert resolve_encoder_spec("hashing") == "hashing"
    assert resolve_encoder_spec("hashing", "/m/dir") == "hf:/m/dir"
    monkeypatch.setenv("DYEMBED_MODEL", "/env/model")
    assert resolve_encoder_spec("hf:org/x") == "hf:/env/model"
    assert resolve_encoder_spec("hf:org/x", "hashing") == "hashing"
