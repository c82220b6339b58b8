"""Language-model encoding through the production path, on a tiny random BERT in both weight layouts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from tiny_models import TITLES, make_tiny_bert, make_tiny_gpt2, read_embeddings, write_items

from dyembed.config import Config
from dyembed.encode.run import encode
from dyembed.errors import ConfigError, InputDataError

pytest.importorskip("tensorflow")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """{layout: model dir} for the same random weights; plus a cls-pooling and a no-ST-files copy."""
    root = tmp_path_factory.mktemp("tiny")
    dirs = {
        "pt": make_tiny_bert(root / "pt", layout="pt"),
        "tf": make_tiny_bert(root / "tf", layout="tf"),
        "cls": make_tiny_bert(root / "cls", layout="pt", st_pooling="cls", st_normalize=False),
        "plain": make_tiny_bert(root / "plain", layout="pt", st_pooling=None),
    }
    return dirs


@pytest.fixture(autouse=True)
def _no_env_model(monkeypatch):
    monkeypatch.delenv("DYEMBED_MODEL", raising=False)


def hf_cfg(model_dir, **encode_keys) -> Config:
    cfg = Config()
    cfg.encode.encoder = f"hf:{model_dir}"
    cfg.encode.batch_size = 4
    for key, value in encode_keys.items():
        setattr(cfg.encode, key, value)
    return cfg


_REFERENCE_ENCODERS: dict = {}


def reference_vectors(model_dir, texts, pooling="mean", normalize=True, max_length=48):
    """One eager, unsorted, padded-to-longest forward, pooled by the float64 numpy reference."""
    from dyembed.encode.hf import HFEncoder, pool_reference

    key = (str(model_dir), max_length)
    if key not in _REFERENCE_ENCODERS:
        _REFERENCE_ENCODERS[key] = HFEncoder(str(model_dir), max_length=max_length)
    hidden, mask = _REFERENCE_ENCODERS[key].hidden_states(texts)
    return pool_reference(hidden, mask, pooling, normalize)


def test_both_weight_layouts_encode_identically_and_match_reference(tiny, tmp_path):
    results = {}
    for layout in ("pt", "tf"):
        work = tmp_path / layout
        write_items(work)
        # pt: the compiled graph (as a bulk run); tf: eager (as a run with few new texts)
        summary = encode(work, hf_cfg(tiny[layout], compile_min_texts=0 if layout == "pt" else 1000))
        assert summary["weights_layout"] == {"pt": "pt-safetensors", "tf": "tf-h5"}[layout]
        assert summary["pooling"] == "mean" and summary["model_declares_normalize"]
        assert summary["max_length"] == 48  # min(encode.max_length=128, sentence_bert_config 48)
        table, matrix = read_embeddings(work)
        assert matrix.shape == (len(TITLES), 32) and table.column("item_idx").to_pylist() == list(range(len(TITLES)))
        results[layout] = matrix
    np.testing.assert_allclose(results["pt"], results["tf"], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(results["pt"], axis=1), 1.0, atol=1e-5)
    # batched, length-bucketed, padded forward == each text alone through the numpy pooling reference
    np.testing.assert_allclose(results["pt"], reference_vectors(tiny["pt"], TITLES), atol=2e-5)


def test_tf_pooling_matches_numpy_reference():
    import tensorflow as tf

    from dyembed.encode.hf import pool_reference, pool_tf

    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((5, 7, 6)).astype(np.float32)
    lengths = np.array([1, 7, 3, 5, 2])
    mask = (np.arange(7)[None, :] < lengths[:, None]).astype(np.int32)
    hidden[mask == 0] = 100.0  # padding must never leak into any pooling
    for pooling in ("mean", "cls", "max", "last", "mean_sqrt"):
        for normalize in (False, True):
            got = pool_tf(tf, tf.constant(hidden), tf.constant(mask), pooling, normalize).numpy()
            np.testing.assert_allclose(got, pool_reference(hidden, mask, pooling, normalize), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pool_reference(hidden, mask, "mean", False)[2], hidden[2, :3].mean(0), atol=1e-6)
    np.testing.assert_allclose(pool_reference(hidden, mask, "last", False)[3], hidden[3, 4])


def test_auto_pooling_follows_sentence_transformers_files(tiny, tmp_path):
    write_items(tmp_path)
    summary = encode(tmp_path, hf_cfg(tiny["cls"], normalize=False))
    assert summary["pooling"] == "cls" and not summary["model_declares_normalize"]
    _, matrix = read_embeddings(tmp_path)
    expected = reference_vectors(tiny["cls"], TITLES, pooling="cls", normalize=False)
    np.testing.assert_allclose(matrix, expected, rtol=1e-4, atol=2e-5)
    assert not np.allclose(np.linalg.norm(matrix, axis=1), 1.0)
    summary = encode(tmp_path, hf_cfg(tiny["cls"], pooling="max"))
    assert summary["pooling"] == "max"
    np.testing.assert_allclose(read_embeddings(tmp_path)[1], reference_vectors(tiny["cls"], TITLES, pooling="max"), atol=2e-5)


def test_auto_pooling_without_sentence_transformers_files_is_mean(tiny, tmp_path):
    write_items(tmp_path)
    summary = encode(tmp_path, hf_cfg(tiny["plain"], max_length=16))
    assert summary["pooling"] == "mean" and summary["max_length"] == 16


def test_decoder_model_without_pad_token(tmp_path):
    model_dir = make_tiny_gpt2(tmp_path / "gpt2")
    write_items(tmp_path / "w")  # includes an empty text: a decoder tokenizer gives it no tokens
    summary = encode(tmp_path / "w", hf_cfg(model_dir, pooling="last"))
    assert summary["pooling"] == "last" and summary["weights_layout"] == "tf-h5" and summary["max_length"] == 64
    _, matrix = read_embeddings(tmp_path / "w")
    np.testing.assert_allclose(matrix, reference_vectors(model_dir, TITLES, pooling="last", max_length=64), atol=2e-5)
    assert encode(tmp_path / "w", hf_cfg(model_dir))["pooling"] == "mean"  # auto without sentence-transformers files


def test_hub_id_resolves_only_from_the_local_cache(tiny, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snapshot = cache / "models--tiny-org--tiny-bert" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny["pt"], snapshot)
    (cache / "models--tiny-org--tiny-bert" / "refs").mkdir()
    (cache / "models--tiny-org--tiny-bert" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_items(tmp_path / "w")
    summary = encode(tmp_path / "w", hf_cfg("tiny-org/tiny-bert"))
    assert summary["encoder"] == "hf:tiny-org/tiny-bert" and summary["model_dir"] == str(snapshot)
    with pytest.raises(InputDataError, match="nor in the local Hugging Face cache"):
        encode(tmp_path / "w", hf_cfg("tiny-org/other-bert"))


def test_cache_incremental_fingerprint_and_float16(tiny, tmp_path):
    write_items(tmp_path)
    first = encode(tmp_path, hf_cfg(tiny["pt"]))
    assert first["items_encoded"] == len(set(TITLES)) and first["items_reused"] == 0
    _, before = read_embeddings(tmp_path)
    manifest = json.loads((tmp_path / "encode_manifest.json").read_text())
    fp = manifest["fingerprint"]
    assert {"model", "config_sha256", "weights_sha256", "pooling", "max_length", "input_field"} <= set(fp)
    assert fp["input_field"] == "text" and fp["pooling"] == "mean" and len(fp["weights_sha256"]) == 64

    moved = tmp_path / "moved_model"  # same files elsewhere: same content fingerprint, nothing to redo
    shutil.copytree(tiny["pt"], moved)
    second = encode(tmp_path, hf_cfg(moved))
    assert second["items_encoded"] == 0 and second["items_reused"] == len(TITLES)
    assert second["fingerprint_id"] == first["fingerprint_id"]
    assert first["model_loaded"] and not second["model_loaded"]  # all cached: TF model never built
    _, again = read_embeddings(tmp_path)
    np.testing.assert_array_equal(before, again)

    changed = list(TITLES) + ["A brand new item about jazz"]
    changed[2] = "Comedy night at the new house"
    write_items(tmp_path, changed)
    third = encode(tmp_path, hf_cfg(tiny["pt"]))
    assert third["items_encoded"] == 2 and third["items_reused"] == len(TITLES) - 1
    _, after = read_embeddings(tmp_path)
    keep = [i for i in range(len(TITLES)) if i != 2]
    np.testing.assert_array_equal(after[keep], before[keep])
    np.testing.assert_allclose(after[[2, len(TITLES)]], reference_vectors(tiny["pt"], [changed[2], changed[-1]]), atol=2e-5)

    # a different fingerprint (the other layout's files hash differently; pooling; dtype) → everything
    assert encode(tmp_path, hf_cfg(tiny["tf"]))["items_encoded"] == len(set(changed))
    assert encode(tmp_path, hf_cfg(tiny["tf"], pooling="cls"))["items_encoded"] == len(set(changed))
    half = encode(tmp_path, hf_cfg(tiny["tf"], pooling="cls", dtype="float16"))
    assert half["items_encoded"] == len(set(changed))
    table, matrix16 = read_embeddings(tmp_path)
    assert matrix16.dtype == np.float16


def test_killed_run_resumes_from_checkpoints(tiny, tmp_path, monkeypatch):
    from dyembed.encode import hf

    texts = [f"{t} number {i}" for i, t in enumerate(TITLES * 2)]
    write_items(tmp_path, texts)
    original = hf.HFEncoder.encode
    calls = []

    def dies_on_third_chunk(self, chunk, progress=None):
        calls.append(len(chunk))
        if len(calls) == 3:
            raise KeyboardInterrupt  # the cron job is killed mid-way
        return original(self, chunk, progress)

    monkeypatch.setattr(hf.HFEncoder, "encode", dies_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        encode(tmp_path, hf_cfg(tiny["pt"], checkpoint_every=5))
    assert not (tmp_path / "item_embeddings.parquet").exists()
    assert len(list((tmp_path / ".encode_checkpoints").glob("*/part-*.npz"))) == 2

    monkeypatch.setattr(hf.HFEncoder, "encode", original)
    resumed = encode(tmp_path, hf_cfg(tiny["pt"], checkpoint_every=5))
    assert resumed["resumed_from_checkpoint"] == 10 and resumed["items_encoded"] == len(texts) - 10
    assert not (tmp_path / ".encode_checkpoints").exists()
    _, matrix = read_embeddings(tmp_path)
    fresh = tmp_path / "fresh"
    write_items(fresh, texts)
    encode(fresh, hf_cfg(tiny["pt"]))
    np.testing.assert_allclose(matrix, read_embeddings(fresh)[1], atol=1e-6)


def test_out_of_memory_halves_batch_then_fails_clearly(tiny, tmp_path, monkeypatch):
    import tensorflow as tf

    from dyembed.encode import hf

    write_items(tmp_path)
    expected = reference_vectors(tiny["pt"], TITLES)
    original = hf.HFEncoder._run_batch
    seen = []

    def small_memory(self, ids, width):
        seen.append(len(ids))
        if len(ids) > 1:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        return original(self, ids, width)

    monkeypatch.setattr(hf.HFEncoder, "_run_batch", small_memory)
    summary = encode(tmp_path, hf_cfg(tiny["pt"], batch_size=4))
    assert summary["batch_size"] == 1 and seen[:3] == [4, 2, 1]
    np.testing.assert_allclose(read_embeddings(tmp_path)[1], expected, atol=2e-5)

    def no_memory(self, ids, width):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")

    monkeypatch.setattr(hf.HFEncoder, "_run_batch", no_memory)
    write_items(tmp_path / "again")
    with pytest.raises(ConfigError, match="out of memory encoding a single text"):
        encode(tmp_path / "again", hf_cfg(tiny["pt"]))


def test_batches_are_length_sorted_and_one_graph_per_bucket_shape(tiny):
    from dyembed.encode.hf import HFEncoder, plan_batches

    lengths = [3, 17, 9, 9, 40, 2, 16, 8, 33]
    batches = plan_batches(lengths, 2, 48)
    assert sorted(np.concatenate([b for b, _ in batches]).tolist()) == list(range(len(lengths)))
    widths = [w for _, w in batches]
    assert widths == sorted(widths) and all(w % 8 == 0 for w in widths)
    assert all(max(lengths[i] for i in b) <= w < max(lengths[i] for i in b) + 8 for b, w in batches)

    texts = [("the dark " * k).strip() for k in (1, 2, 9)] * 3  # 9 texts, batches of 4: 3 shapes
    jit = HFEncoder(str(tiny["pt"]), batch_size=4, jit_compile=True)
    vectors = jit.encode(texts)
    shapes = {(len(b), w) for b, w in plan_batches([len(x) for x in jit.tokenize(texts)], 4, jit.max_length)}
    assert jit._forward.experimental_get_tracing_count() == len(shapes)
    dynamic = HFEncoder(str(tiny["pt"]), batch_size=4, jit_compile=False)
    np.testing.assert_allclose(dynamic.encode(texts), vectors, atol=1e-5)
    assert dynamic._forward.experimental_get_tracing_count() == 1


def test_model_dir_errors(tiny, tmp_path):
    write_items(tmp_path / "work")
    work = tmp_path / "work"

    no_weights = tmp_path / "no_weights"
    shutil.copytree(tiny["pt"], no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(InputDataError, match="has no weights"):
        encode(work, hf_cfg(no_weights))
    (no_weights / "pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(InputDataError, match="only pytorch_model.bin"):
        encode(work, hf_cfg(no_weights))

    no_tokenizer = tmp_path / "no_tokenizer"
    shutil.copytree(tiny["pt"], no_tokenizer)
    for name in ("vocab.txt", "tokenizer.json"):
        (no_tokenizer / name).unlink()
    with pytest.raises(InputDataError, match="has no tokenizer"):
        encode(work, hf_cfg(no_tokenizer))

    unknown = tmp_path / "unknown"
    shutil.copytree(tiny["pt"], unknown)
    config = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps({**config, "model_type": "no-such-architecture"}))
    with pytest.raises(ConfigError, match="unknown model type"):
        encode(work, hf_cfg(unknown))
    (unknown / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 32}))
    with pytest.raises(ConfigError, match="no TensorFlow class"):
        encode(work, hf_cfg(unknown))

    wrong = tmp_path / "wrong_shapes"
    shutil.copytree(tiny["pt"], wrong)
    (wrong / "config.json").write_text(json.dumps({**config, "hidden_size": 64, "intermediate_size": 128}))
    with pytest.raises(InputDataError, match="do not fit the architecture"):
        encode(work, hf_cfg(wrong))

    write_items(tmp_path / "notext", drop="text")
    with pytest.raises(InputDataError, match="no 'text' column"):
        encode(tmp_path / "notext", hf_cfg(tiny["pt"]))
    with pytest.raises(InputDataError, match="no 'title' column"):
        encode(work, hf_cfg(tiny["pt"], input_field="title"))


def test_env_and_argument_override_configured_model(tiny, tmp_path, monkeypatch):
    write_items(tmp_path)
    monkeypatch.setenv("DYEMBED_MODEL", str(tiny["plain"]))
    summary = encode(tmp_path, hf_cfg("/configured/but/absent"))
    assert summary["model_dir"] == str(tiny["plain"])
    summary = encode(tmp_path, hf_cfg("/configured/but/absent"), model=str(tiny["tf"]))
    assert summary["model_dir"] == str(tiny["tf"]) and summary["weights_layout"] == "tf-h5"


# sentence-transformers 6.2.0 / torch 2.13.0 (CPU) on ../shared/models/all-MiniLM-L6-v2, computed once
# in a separate virtualenv (see docs/encoder.md): the first 8 components of six ml-100k titles.
ST_REFERENCE = {
    0: ("Toy Story (1995)", [-0.082835, 0.053030, 0.053576, -0.027935, 0.016134, 0.012132, 0.024147, 0.020295]),
    1: ("GoldenEye (1995)", [-0.088790, 0.004426, 0.004388, -0.047064, 0.025600, 0.026652, 0.092359, 0.007921]),
    49: ("Star Wars (1977)", [-0.061652, 0.038911, -0.032375, -0.021888, -0.038706, -0.003618, 0.053319, 0.030619]),
    180: ("Return of the Jedi (1983)", [-0.072509, 0.079169, -0.015741, 0.018032, -0.003036, 0.045680, -0.029217, 0.015557]),
    1632: ("Á köldum klaka (Cold Fever) (1994)", [-0.087714, 0.083339, -0.102505, 0.037141, 0.046969, 0.047281, -0.026541, 0.001580]),
    1681: ("Scream of Stone (Schrei aus Stein) (1991)", [-0.011378, 0.035419, -0.067268, 0.005981, 0.018355, 0.125628, 0.001867, -0.042672]),
}
ST_COSINE_STAR_WARS_JEDI = 0.670865


@pytest.mark.data
def test_minilm_matches_sentence_transformers_reference(tmp_path):
    from conftest import shared_path

    model = shared_path("models", "all-MiniLM-L6-v2")
    with open(shared_path("data", "ml-100k", "u.item"), encoding="latin-1") as fh:
        titles = [line.split("|")[1] for line in fh]
    picked = sorted(ST_REFERENCE)
    assert [titles[i] for i in picked] == [ST_REFERENCE[i][0] for i in picked]
    write_items(tmp_path, [titles[i] for i in picked])
    summary = encode(tmp_path, hf_cfg(model, batch_size=64))
    assert summary["pooling"] == "mean" and summary["model_declares_normalize"] and summary["weights_layout"] == "pt-safetensors"
    assert summary["dim"] == 384
    _, matrix = read_embeddings(tmp_path)
    np.testing.assert_allclose(matrix[:, :8], np.array([ST_REFERENCE[i][1] for i in picked]), atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    assert matrix[2] @ matrix[3] == pytest.approx(ST_COSINE_STAR_WARS_JEDI, abs=2e-6)
