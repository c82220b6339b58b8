"""SASRec (Kang & McAuley 2018) trained with full-softmax cross-entropy at every position
(Klenitskiy & Vasilev, "Turning Dross Into Gold Loss: is BERT4Rec really better than SASRec?",
RecSys 2023), in TensorFlow (tf_keras layers, the Keras 2 that dyembed already depends on).

Model (as the reference implementations): item embedding E (0 = padding) scaled by √d plus a
learned absolute position embedding, dropout; `blocks` × [Q = LN(x); x = Q + MHA(Q, x, x) with a
causal mask (and padded keys masked); x = LN(x); x = x + FFN(x) (ReLU, dropout); x ·= not-padding];
a final LN; the logits of every item are the hidden state times Eᵀ (tied weights).

Training: each user's item sequence over the fit rows, cut into windows of maxlen + 1 items from
the end (so every next-item target is trained once per epoch, the newest one with the longest
context); at every non-padding position the loss is the full-softmax cross-entropy of the next
item. Adam (β₂ = 0.98). Early stopping on validation NDCG@10 (per event, dyembed's ranks and
masking), evaluated after every epoch; the best checkpoint is kept for each masking setting and
training stops when none improved for `patience` epochs, at `max_epochs`, or at the time budget.

At query time: the last `maxlen` items of the user's history up to the event (its earlier rows of
the stage; temporal test events see earlier test events, the true history), the hidden state at
the last position scores every item. A user with no history gets an all-padding input (the model
was never trained on it: what a SASRec gives a brand-new user).

The test model is the validation-chosen checkpoint (trained on train rows only), as dyembed's own
θ is: standard practice for an early-stopped network (SASRec, RecBole); the validation rows are
part of every test event's input history.
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any

import numpy as np

from bench.peers.harness import Final, Trial, World, rank_each, score_of, user_sequences

GRID = {"dropout": [0.2, 0.5], "learning_rate": [1e-3, 3e-3]}
HIDDEN, BLOCKS, HEADS = 64, 2, 1
INFER_BATCH = 512


def default_maxlen(world: World) -> int:
    """50, or 200 when the median user has more than 100 fit events (ml-latest-small), as the brief."""
    lengths = np.bincount(world.log.user_idx[world.validation.fit_rows])
    lengths = lengths[lengths > 0]
    return 200 if lengths.size and np.median(lengths) > 100 else 50


def training_windows(sequences: list[np.ndarray], maxlen: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) int32 [n_windows, maxlen] as item_idx + 1, left-padded with 0.

    A sequence s_0..s_{n-1} gives the pairs (s_t → s_{t+1}); they are cut from the end into windows
    of maxlen consecutive pairs, so each target appears once with at most maxlen items of context."""
    inputs, targets = [], []
    for seq in sequences:
        ids = np.asarray(seq, dtype=np.int64) + 1
        n_pairs = ids.size - 1
        for end in range(n_pairs, 0, -maxlen):
            start = max(0, end - maxlen)
            x = np.zeros(maxlen, np.int32)
            y = np.zeros(maxlen, np.int32)
            x[maxlen - (end - start):] = ids[start:end]
            y[maxlen - (end - start):] = ids[start + 1:end + 1]
            inputs.append(x)
            targets.append(y)
    if not inputs:
        return np.zeros((0, maxlen), np.int32), np.zeros((0, maxlen), np.int32)
    return np.stack(inputs), np.stack(targets)


def _tf():
    from dyembed.envcheck import import_tensorflow

    tf = import_tensorflow()
    import tf_keras

    return tf, tf_keras


def build_model(n_items: int, maxlen: int, *, hidden: int = HIDDEN, blocks: int = BLOCKS, heads: int = HEADS,
                dropout: float = 0.2, seed: int = 0):
    tf, keras = _tf()
    layers = keras.layers
    init = keras.initializers

    class SASRec(keras.Model):
        def __init__(self):
            super().__init__()
            self.item_emb = layers.Embedding(n_items + 1, hidden, embeddings_initializer=init.GlorotUniform(seed))
            self.pos_emb = layers.Embedding(maxlen, hidden, embeddings_initializer=init.GlorotUniform(seed + 1))
            self.emb_drop = layers.Dropout(dropout, seed=seed)
            self.att_norm, self.att, self.ffn_norm, self.ffn = [], [], [], []
            for b in range(blocks):
                self.att_norm.append(layers.LayerNormalization(epsilon=1e-8))
                self.att.append(layers.MultiHeadAttention(heads, hidden // heads, dropout=dropout,
                                                          kernel_initializer=init.GlorotUniform(seed + 10 + b)))
                self.ffn_norm.append(layers.LayerNormalization(epsilon=1e-8))
                self.ffn.append([layers.Dense(hidden, activation="relu", kernel_initializer=init.GlorotUniform(seed + 20 + b)),
                                 layers.Dropout(dropout, seed=seed + 30 + b),
                                 layers.Dense(hidden, kernel_initializer=init.GlorotUniform(seed + 40 + b)),
                                 layers.Dropout(dropout, seed=seed + 50 + b)])
            self.last_norm = layers.LayerNormalization(epsilon=1e-8)
            causal = np.tril(np.ones((maxlen, maxlen), dtype=bool))
            self.causal = tf.constant(causal[None])

        def call(self, seq, training=False):
            real = tf.cast(seq > 0, tf.float32)[..., None]  # [b, L, 1]
            x = self.item_emb(seq) * math.sqrt(hidden) + self.pos_emb(tf.range(maxlen))[None]
            x = self.emb_drop(x, training=training) * real
            # causal, and padded keys never attended (a row of padding only attends padding: finite)
            mask = tf.logical_and(self.causal, (seq > 0)[:, None, :])
            for b in range(blocks):
                q = self.att_norm[b](x)
                x = q + self.att[b](q, x, x, attention_mask=mask, training=training)
                x = self.ffn_norm[b](x)
                h = x
                for layer in self.ffn[b]:
                    h = layer(h, training=training) if isinstance(layer, layers.Dropout) else layer(h)
                x = (x + h) * real
            return self.last_norm(x)

        def item_table(self):
            return self.item_emb.embeddings[1:]  # [n_items, hidden], row j = item j

    model = SASRec()
    model.maxlen = maxlen
    model(tf.zeros((1, maxlen), tf.int32))  # build the variables
    return model


class SasrecScorer:
    """Hidden states of every ranked row of the stage, computed up front in batches; scores(rows)
    = H[rows] Eᵀ (the ranks do not depend on how rank_rows cuts its blocks)."""

    def __init__(self, model, stage, maxlen: int):
        tf, _ = _tf()
        self.rows = stage.target_rows
        seqs = stage.histories.padded(self.rows, maxlen)
        self.hidden = np.concatenate([_last_hidden(model, seqs[i:i + INFER_BATCH])
                                      for i in range(0, len(seqs), INFER_BATCH)]) if len(seqs) else np.zeros((0, HIDDEN), np.float32)
        self.items = model.item_table().numpy()

    def scores(self, rows: np.ndarray) -> np.ndarray:
        return self.hidden[np.searchsorted(self.rows, rows)] @ self.items.T

    def observe(self, rows: np.ndarray) -> None:
        pass


def _last_hidden(model, seqs: np.ndarray) -> np.ndarray:
    tf, _ = _tf()
    return _infer(model)(tf.constant(seqs)).numpy()


def _infer(model):
    if not hasattr(model, "_infer_fn"):
        tf, _ = _tf()
        model._infer_fn = tf.function(lambda s: model(s, training=False)[:, -1, :],
                                      input_signature=[tf.TensorSpec([None, model.maxlen], tf.int32)])
    return model._infer_fn


def train(model, inputs: np.ndarray, targets: np.ndarray, *, learning_rate: float, batch_size: int,
          max_epochs: int, seed: int, on_epoch, time_budget: float = 0.0):
    """Epochs of full-softmax CE at every non-padding position; `on_epoch(epoch, loss)` returns
    False to stop (early stopping). Returns (epochs run, seconds, why it stopped)."""
    tf, keras = _tf()
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate, beta_2=0.98)
    variables = model.trainable_variables

    @tf.function(input_signature=[tf.TensorSpec([None, inputs.shape[1]], tf.int32)] * 2, reduce_retracing=True)
    def step(x, y):
        with tf.GradientTape() as tape:
            h = model(x, training=True)
            valid = y > 0
            logits = tf.matmul(tf.boolean_mask(h, valid), model.item_table(), transpose_b=True)
            labels = tf.boolean_mask(y, valid) - 1
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    why = "max_epochs"
    epoch = 0
    for epoch in range(1, max_epochs + 1):
        order = rng.permutation(len(inputs))
        losses = []
        for lo in range(0, len(order), batch_size):
            idx = order[lo:lo + batch_size]
            losses.append(float(step(tf.constant(inputs[idx]), tf.constant(targets[idx]))))
        if not on_epoch(epoch, float(np.mean(losses))):
            why = "early_stopping"
            break
        if time_budget > 0 and time.perf_counter() - started > time_budget:
            why = "time_budget"
            break
    return epoch, time.perf_counter() - started, why


class SasrecPeer:
    name = "sasrec"
    description = (f"SASRec-CE: {BLOCKS} blocks, hidden {HIDDEN}, {HEADS} head, full-softmax cross-entropy at every "
                   "position (Klenitskiy & Vasilev 2023), TensorFlow")
    test_model = "the early-stopped checkpoint chosen on validation (trained on train rows only)"

    def __init__(self, spec: dict[str, list] | None = None, *, seed: int = 0, max_epochs: int = 200, patience: int = 10,
                 batch_size: int = 128, maxlen: int | None = None):
        self.spec = dict(spec or GRID)
        self.seed, self.max_epochs, self.patience = seed, max_epochs, patience
        self.batch_size, self.maxlen = batch_size, maxlen

    def at_test_time(self, protocol: str) -> str:
        return "the last maxlen items of the user's true history up to the event (earlier test events included)"

    def _maxlen(self, world: World) -> int:
        return self.maxlen or default_maxlen(world)

    def grid(self, world: World) -> list[dict[str, Any]]:
        keys = list(self.spec)
        return [dict(zip(keys, v)) for v in itertools.product(*(self.spec[k] for k in keys))]

    def grid_spec(self, world: World) -> dict[str, list]:
        return {**self.spec, "fixed": [{"blocks": BLOCKS, "hidden": HIDDEN, "heads": HEADS, "maxlen": self._maxlen(world),
                                        "batch_size": self.batch_size, "max_epochs": self.max_epochs,
                                        "patience": self.patience}]}

    def validate(self, world, setting, maskings, time_budget) -> Trial:
        tf, keras = _tf()
        keras.utils.set_random_seed(self.seed)
        maxlen = self._maxlen(world)
        model = build_model(world.log.n_items, maxlen, dropout=setting["dropout"], seed=self.seed)
        inputs, targets = training_windows(user_sequences(world.log, world.validation.fit_rows), maxlen)
        best = {m: {"score": -1.0, "epoch": 0, "weights": None} for m in maskings}
        curve: list[dict[str, Any]] = []
        eval_seconds = [0.0]

        def on_epoch(epoch: int, loss: float) -> bool:
            t0 = time.perf_counter()
            ranks = rank_each(world, world.validation, lambda: SasrecScorer(model, world.validation, maxlen), maskings)
            scores = {m: score_of(r) for m, r in ranks.items()}
            for m, s in scores.items():
                if s > best[m]["score"]:
                    best[m] = {"score": s, "epoch": epoch, "weights": [w.copy() for w in model.get_weights()]}
            curve.append({"epoch": epoch, "loss": round(loss, 4), **{m: round(s, 5) for m, s in scores.items()}})
            eval_seconds[0] += time.perf_counter() - t0
            return any(epoch - b["epoch"] < self.patience for b in best.values())

        epochs, seconds, why = train(model, inputs, targets, learning_rate=setting["learning_rate"],
                                     batch_size=self.batch_size, max_epochs=self.max_epochs, seed=self.seed,
                                     on_epoch=on_epoch, time_budget=time_budget)
        train_seconds = seconds - eval_seconds[0]  # without the per-epoch validation ranking
        kept = {m: {"weights": b["weights"], "maxlen": maxlen, "dropout": setting["dropout"],
                    "train_seconds": train_seconds} for m, b in best.items()}
        info = {"epochs": epochs, "stopped": why, "windows": int(len(inputs)), "maxlen": maxlen,
                "validation_seconds": round(eval_seconds[0], 2), "curve": curve,
                "by_masking": {m: {"best_epoch": b["epoch"]} for m, b in best.items()}}
        return Trial(setting, {m: b["score"] for m, b in best.items()}, train_seconds, info, kept)

    def final(self, world, setting, kept, time_budget) -> Final:
        model = build_model(world.log.n_items, kept["maxlen"], dropout=kept["dropout"], seed=self.seed)
        model.set_weights(kept["weights"])
        return Final(lambda: SasrecScorer(model, world.test, kept["maxlen"]), kept["train_seconds"],
                     {"note": "validation-chosen checkpoint, no retraining: train_seconds are that grid point's"})
