"""Domain-adaptive pretraining: continue masked-language-model training on the item texts.

`dyembed encode --adapt-steps N` runs N steps of MLM (TF `TFAutoModelForMaskedLM`, weights loaded by
the same production loader as encoding) on the item texts, saves the adapted model to
`<workdir>/adapted_model/`, and encoding then uses it.

Dynamic masking (BERT's recipe, drawn afresh for every batch): each non-special token is selected
with probability p (`encode.adapt_mask_prob`, ≥ 1 per text); a selected token becomes [MASK] with
probability 0.8, a random token with 0.1, and stays itself with 0.1. The loss is the mean
cross-entropy over selected tokens only:

    L = − (1/|S|) Σ_{(b,t)∈S} log softmax(logits[b, t])[label[b, t]]

A fixed fraction of the distinct item texts (`encode.adapt_holdout`, chosen by text hash, so the
split is stable across runs) is held out; L on those texts with one fixed, seeded mask is reported
before and after training. sentence-transformers checkpoints ship without an MLM head: the head's
transform layer then starts random (its decoder is tied to the word embeddings), which the report
states (`head_initialised`), and the "before" loss measures that untrained head.

A rerun with the same base model, texts and settings reuses the saved adapted model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dyembed.artefacts import sha256_file, write_json
from dyembed.config import Config
from dyembed.errors import ConfigError, InputDataError

log = logging.getLogger(__name__)

ADAPTED_DIR = "adapted_model"
ADAPT_MANIFEST = "adapt_manifest.json"
# tracing the training step costs seconds; a handful of steps run faster eagerly
COMPILE_MIN_STEPS = 100
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def check_adapt_settings(ecfg) -> None:
    for key, value, ok in (("adapt_steps", ecfg.adapt_steps, ecfg.adapt_steps > 0),
                           ("adapt_lr", ecfg.adapt_lr, ecfg.adapt_lr > 0),
                           ("adapt_batch_size", ecfg.adapt_batch_size, ecfg.adapt_batch_size > 0),
                           ("adapt_mask_prob", ecfg.adapt_mask_prob, 0 < ecfg.adapt_mask_prob < 1),
                           ("adapt_holdout", ecfg.adapt_holdout, 0 < ecfg.adapt_holdout < 1)):
        if not ok:
            raise ConfigError(f"config key 'encode.{key}' is out of range: {value}")


def split_heldout(texts: Sequence[str], fraction: float) -> tuple[list[str], list[str]]:
    """Distinct non-empty texts → (train, held out); membership decided by each text's sha256."""
    unique = sorted({t for t in texts if t.strip()})
    if len(unique) < 2:
        raise InputDataError(f"domain adaptation needs at least 2 distinct non-empty item texts, found {len(unique)}")
    score = {t: int(hashlib.sha256(t.encode("utf-8")).hexdigest()[:8], 16) / 16**8 for t in unique}
    held = [t for t in unique if score[t] < fraction]
    if not held:  # tiny catalogues: hold out at least the lowest-scoring text
        held = [min(unique, key=score.get)]
    train = [t for t in unique if t not in set(held)]
    if not train:
        raise ConfigError(f"config key 'encode.adapt_holdout' = {fraction} leaves no training texts")
    return train, held


def mask_tokens(ids: np.ndarray, attention: np.ndarray, special: np.ndarray, rng: np.random.Generator, *,
                mask_prob: float, mask_id: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """BERT masking of a padded [B, L] batch → (masked input ids, labels with -100 where not selected)."""
    candidates = (attention == 1) & ~special
    selected = candidates & (rng.random(ids.shape) < mask_prob)
    for row in np.flatnonzero(~selected.any(1) & candidates.any(1)):  # at least one target per text
        selected[row, rng.choice(np.flatnonzero(candidates[row]))] = True
    labels = np.where(selected, ids, -100)
    draw = rng.random(ids.shape)
    masked = ids.copy()
    masked[selected & (draw < 0.8)] = mask_id
    swap = selected & (draw >= 0.8) & (draw < 0.9)
    masked[swap] = rng.integers(0, vocab_size, size=int(swap.sum()))
    return masked, labels


def mlm_loss_reference(logits: np.ndarray, labels: np.ndarray) -> float:
    """float64 numpy: mean cross-entropy over positions with label != -100."""
    pos = labels != -100
    z = logits[pos].astype(np.float64)
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(z)), labels[pos]].mean())


class _Batcher:
    """Tokenised texts → padded [B, L] int32 arrays (+ special-token masks)."""

    def __init__(self, tokenizer, texts: Sequence[str], max_length: int):
        enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False,
                        return_special_tokens_mask=True)
        self.ids, self.special = enc["input_ids"], enc["special_tokens_mask"]
        self.pad = tokenizer.pad_token_id or 0

    def batch(self, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        width = max(8, -(-max(len(self.ids[r]) for r in rows) // 8) * 8)
        ids = np.full((len(rows), width), self.pad, dtype=np.int32)
        attention = np.zeros((len(rows), width), dtype=np.int32)
        special = np.ones((len(rows), width), dtype=bool)
        for i, r in enumerate(rows):
            n = len(self.ids[r])
            ids[i, :n], attention[i, :n], special[i, :n] = self.ids[r], 1, np.asarray(self.special[r], dtype=bool)
        return ids, attention, special


def _texts_digest(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in sorted(set(texts)):
        digest.update(hashlib.sha256(text.encode("utf-8")).digest())
    return digest.hexdigest()


def adapt(workdir: str | Path, model_spec: str, texts: Sequence[str], cfg: Config,
          progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run MLM adaptation (or reuse an identical earlier one); returns the report incl. `model_dir`."""
    from dyembed.encode.hf import (load_config, load_tf_model, load_tokenizer, resolve_model_dir, sha256_files,
                                   weight_files)
    from dyembed.envcheck import import_tensorflow

    ecfg = cfg.encode
    check_adapt_settings(ecfg)
    workdir = Path(workdir)
    base_dir = resolve_model_dir(model_spec)
    out_dir = workdir / ADAPTED_DIR
    identity = {  # content only: the same base files under another path reuse the adapted model
        "base_config_sha256": sha256_file(base_dir / "config.json") if (base_dir / "config.json").is_file() else None,
        "base_weights_sha256": sha256_files(weight_files(base_dir)[1]),
        "texts_sha256": _texts_digest(texts),
        **{k: getattr(ecfg, k) for k in ("adapt_steps", "adapt_lr", "adapt_batch_size", "adapt_mask_prob",
                                          "adapt_holdout", "max_length", "seed")},
    }
    manifest_path = out_dir / ADAPT_MANIFEST
    if manifest_path.is_file():
        try:
            previous = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            previous = {}
        if previous.get("identity") == identity and weight_files(out_dir):
            log.info("reusing the adapted model in %s (same base model, texts and settings)", out_dir)
            return {**previous["report"], "reused": True}

    tf = import_tensorflow()
    import tf_keras

    started = time.perf_counter()
    tf_keras.utils.set_random_seed(ecfg.seed)  # the MLM head of a headless checkpoint starts from this seed
    tokenizer = load_tokenizer(base_dir)
    config = load_config(base_dir)
    model, layout = load_tf_model(base_dir, config, with_mlm_head=True)
    head_initialised = _head_was_missing(base_dir, layout)
    if tokenizer.mask_token_id is None:
        raise ConfigError(f"tokenizer of {model_spec} has no mask token; masked-LM adaptation needs one")
    max_length = int(min(ecfg.max_length, getattr(config, "max_position_embeddings", ecfg.max_length) or ecfg.max_length))
    train_texts, held_texts = split_heldout(texts, ecfg.adapt_holdout)
    train, held = _Batcher(tokenizer, train_texts, max_length), _Batcher(tokenizer, held_texts, max_length)
    vocab = int(config.vocab_size)
    mask_args = {"mask_prob": ecfg.adapt_mask_prob, "mask_id": int(tokenizer.mask_token_id), "vocab_size": vocab}

    def masked_loss(ids, attention, labels, training):
        logits = model(input_ids=ids, attention_mask=attention, training=training).logits
        pos = labels != -100
        return tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
            tf.boolean_mask(labels, pos), tf.cast(tf.boolean_mask(logits, pos), tf.float32), from_logits=True))

    spec = tf.TensorSpec([None, None], tf.int32)
    # held-out evaluation is a few batches: eager, which costs less than tracing a graph for it
    def eval_loss(ids, attention, labels):
        return masked_loss(tf.constant(ids), tf.constant(attention), tf.constant(labels), False)

    # one fixed mask for the held-out texts, so before/after are measured on identical targets
    eval_rng = np.random.default_rng([ecfg.seed, 1])
    held_batches = []
    for start in range(0, len(held_texts), ecfg.adapt_batch_size):
        ids, attention, special = held.batch(range(start, min(start + ecfg.adapt_batch_size, len(held_texts))))
        masked, labels = mask_tokens(ids, attention, special, eval_rng, **mask_args)
        held_batches.append((masked, attention, labels))

    def heldout_loss() -> float:
        total, count = 0.0, 0
        for masked, attention, labels in held_batches:
            n = int((labels != -100).sum())
            total += float(eval_loss(masked, attention, labels)) * n
            count += n
        return total / count

    log.debug("MLM model loaded in %.1fs", time.perf_counter() - started)
    loss_before = heldout_loss()
    log.debug("held-out loss before: %.4f (%.1fs)", loss_before, time.perf_counter() - started)
    optimizer = tf_keras.optimizers.Adam(learning_rate=ecfg.adapt_lr)

    def train_step(ids, attention, labels):
        with tf.GradientTape() as tape:
            loss = masked_loss(ids, attention, labels, True)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients([(g, v) for g, v in zip(grads, model.trainable_variables) if g is not None])
        return loss

    if ecfg.adapt_steps >= COMPILE_MIN_STEPS:
        train_step = tf.function(train_step, input_signature=[spec] * 3)

    rng = np.random.default_rng([ecfg.seed, 2])
    train_losses = []
    batch = min(ecfg.adapt_batch_size, len(train_texts))
    for step in range(ecfg.adapt_steps):
        rows = rng.choice(len(train_texts), size=batch, replace=False)
        ids, attention, special = train.batch(rows)
        masked, labels = mask_tokens(ids, attention, special, rng, **mask_args)  # fresh mask every step
        train_losses.append(float(train_step(tf.constant(masked), tf.constant(attention), tf.constant(labels))))
        if progress is not None:
            progress(step + 1, ecfg.adapt_steps)
        if (step + 1) % 50 == 0:
            log.info("MLM step %d/%d: train loss %.4f", step + 1, ecfg.adapt_steps, np.mean(train_losses[-50:]))
    log.debug("%d MLM steps done (%.1fs)", ecfg.adapt_steps, time.perf_counter() - started)
    loss_after = heldout_loss()

    report = {
        "model_dir": str(out_dir.resolve()),
        "base_model": model_spec,
        "base_weights_layout": layout,
        "head_initialised": head_initialised,
        "steps": ecfg.adapt_steps,
        "train_texts": len(train_texts),
        "heldout_texts": len(held_texts),
        "loss_before": loss_before,
        "loss_after": loss_after,
        "train_loss_first": train_losses[0],
        "train_loss_last": float(np.mean(train_losses[-max(1, min(10, len(train_losses))):])),
        "seconds": round(time.perf_counter() - started, 3),
        "reused": False,
    }
    _save(model, tokenizer, base_dir, out_dir, {"identity": identity, "report": report})
    log.info("MLM adaptation: held-out loss %.4f -> %.4f after %d steps", loss_before, loss_after, ecfg.adapt_steps)
    return report


def _head_was_missing(base_dir: Path, layout: str) -> bool:
    """True when the checkpoint carries no MLM head (e.g. sentence-transformers models)."""
    if layout != "pt-safetensors":
        return False
    from safetensors import safe_open

    from dyembed.encode.hf import weight_files

    for path in weight_files(base_dir)[1]:
        with safe_open(str(path), framework="numpy") as fh:
            if any(k.startswith(("cls.", "lm_head", "vocab_")) for k in fh.keys()):  # noqa: SIM118 - safe_open has no __iter__
                return False
    return True


def _save(model, tokenizer, base_dir: Path, out_dir: Path, manifest: dict[str, Any]) -> None:
    """Write the adapted model beside its final place, then swap it in (manifest last)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        for name in ST_FILES:  # keep the sentence-transformers pooling declaration for pooling=auto
            if (base_dir / name).is_file():
                shutil.copy2(base_dir / name, tmp / name)
        for sub in base_dir.glob("*_Pooling"):
            shutil.copytree(sub, tmp / sub.name)
        for stale in ("model.safetensors", "model.safetensors.index.json"):
            if (tmp / stale).exists():
                (tmp / stale).unlink()
        write_json(tmp / ADAPT_MANIFEST, manifest)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
