"""Domain-adaptive masked-LM pretraining (`dyembed encode --adapt-steps N`) on the tiny BERT."""

from __future__ import annotations

import math

import numpy as np
import pytest
from tiny_models import TITLES, make_tiny_bert, read_embeddings, write_items

from dyembed.config import Config
from dyembed.encode.adapt import mask_tokens, mlm_loss_reference, split_heldout
from dyembed.encode.run import encode
from dyembed.errors import ConfigError, InputDataError


def test_dynamic_masking_follows_bert_recipe():
    rng = np.random.default_rng(0)
    ids = rng.integers(10, 100, size=(400, 50))
    attention = (np.arange(50)[None, :] < rng.integers(3, 51, size=400)[:, None]).astype(np.int32)
    special = np.zeros_like(ids, dtype=bool)
    special[:, 0] = True  # [CLS]
    masked, labels = mask_tokens(ids, attention, special, rng, mask_prob=0.15, mask_id=4, vocab_size=100)
    selected = labels != -100
    assert not (selected & ((attention == 0) | special)).any()  # never padding or special tokens
    assert selected.any(1).all()  # every text has at least one target
    np.testing.assert_array_equal(labels[selected], ids[selected])
    np.testing.assert_array_equal(masked[~selected], ids[~selected])  # unselected tokens untouched
    candidates = ((attention == 1) & ~special).sum()
    assert abs(selected.sum() / candidates - 0.15) < 0.02
    as_mask = (masked[selected] == 4).mean()
    kept = (masked[selected] == ids[selected]).mean()
    assert abs(as_mask - 0.8) < 0.03 and 0.07 < kept < 0.14  # 10 % kept (+ random draws of the same id)
    # dynamic: a second draw masks different positions
    _, labels2 = mask_tokens(ids, attention, special, rng, mask_prob=0.15, mask_id=4, vocab_size=100)
    assert (labels2 != labels).any()


def test_mlm_loss_reference_by_hand():
    # uniform logits over 4 tokens: every selected position costs ln 4; position 1 is ignored (-100)
    logits = np.zeros((1, 3, 4))
    labels = np.array([[2, -100, 0]])
    assert mlm_loss_reference(logits, labels) == pytest.approx(math.log(4))
    logits[0, 0, 2] = 10.0  # near-certain and right at position 0: loss → (≈0 + ln 4) / 2
    assert mlm_loss_reference(logits, labels) == pytest.approx((math.log(1 + 3 * math.exp(-10)) + math.log(4)) / 2)


def test_heldout_split_is_stable_and_disjoint():
    texts = [f"text number {i}" for i in range(200)] + ["", "text number 3"]
    train, held = split_heldout(texts, 0.1)
    assert set(train).isdisjoint(held) and len(train) + len(held) == 200
    assert 8 <= len(held) <= 35
    assert split_heldout(list(reversed(texts)), 0.1) == (train, held)
    with pytest.raises(InputDataError, match="at least 2 distinct"):
        split_heldout(["same", "same", ""], 0.1)


def test_adaptation_lowers_heldout_mlm_loss_and_is_reused(tmp_path, monkeypatch):
    monkeypatch.delenv("DYEMBED_MODEL", raising=False)
    model_dir = make_tiny_bert(tmp_path / "tiny", layout="pt")
    texts = [f"{t} and the {x} story" for t in TITLES for x in ("love", "war", "space")]
    work = tmp_path / "work"
    write_items(work, texts)
    cfg = Config()
    cfg.encode.encoder = f"hf:{model_dir}"
    encode(work, cfg)
    _, base_vectors = read_embeddings(work)

    cfg.encode.adapt_steps, cfg.encode.adapt_lr, cfg.encode.adapt_batch_size, cfg.encode.adapt_holdout = 12, 5e-3, 8, 0.2
    summary = encode(work, cfg)
    report = summary["adapt"]
    assert report["steps"] == 12 and not report["reused"] and report["head_initialised"]
    assert report["heldout_texts"] >= 1 and report["train_texts"] + report["heldout_texts"] == len(set(texts))
    assert report["loss_after"] < report["loss_before"] - 0.5, report
    adapted = work / "adapted_model"
    assert (adapted / "tf_model.h5").is_file() and (adapted / "modules.json").is_file()
    assert summary["model_dir"] == str(adapted.resolve()) and summary["weights_layout"] == "tf-h5"
    assert summary["pooling"] == "mean" and summary["items_encoded"] == len(set(texts))
    _, adapted_vectors = read_embeddings(work)
    assert not np.allclose(adapted_vectors, base_vectors, atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(adapted_vectors, axis=1), 1.0, atol=1e-5)

    again = encode(work, cfg)  # same base model, texts, settings: no retraining, no re-encoding
    assert again["adapt"]["reused"] and again["items_encoded"] == 0
    assert again["adapt"]["loss_before"] == report["loss_before"]

    cfg.encode.adapt_mask_prob = 1.5
    with pytest.raises(ConfigError, match="adapt_mask_prob"):
        encode(work, cfg)
