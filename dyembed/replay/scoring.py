"""Scores of users' current states over the whole catalogue, in numpy (no TensorFlow): what
`recommend` serves. Batched float32 twin of rules_reference.event_scores (tested against it):

    s = (u + c W) Vᵀ / τ + b + β h        c, h from the user's recent items (rules.py)

(No time decay: the time of the next event is unknown when serving.)
"""

from __future__ import annotations

import numpy as np

from dyembed.replay.theta import Theta


def _sigmoid(x) -> float:
    return float(1.0 / (1.0 + np.exp(-float(x))))


def recent_weights(recent: np.ndarray, count: np.ndarray, gamma: float) -> np.ndarray:
    """γ^age per ring slot [b, H], 0 for empty slots (rules.recent_weights_np for a batch)."""
    H = recent.shape[1]
    age = np.mod(count[:, None].astype(np.int64) - 1 - np.arange(H)[None, :], H)
    return np.where(recent >= 0, np.float32(gamma) ** age.astype(np.float32), np.float32(0.0)).astype(np.float32)


def score_users(theta: Theta, V: np.ndarray, U: np.ndarray, recent: np.ndarray | None = None,
                count: np.ndarray | None = None) -> np.ndarray:
    """[b, n_items] float32 scores of users with vectors U [b, d] (and recent items [b, H], counts [b])."""
    U = np.asarray(U, np.float32)
    query = U
    needs_recent = theta.W is not None or theta.beta is not None
    if needs_recent and (recent is None or count is None):
        raise ValueError("this model's scores need the users' recent items and counts")
    if theta.W is not None:
        w = recent_weights(recent, count, _sigmoid(theta.logit_context_decay))
        total = w.sum(axis=1, keepdims=True)
        c = np.einsum("bh,bhd->bd", w, V[np.maximum(recent, 0)]) / np.maximum(total, np.float32(1e-30))
        query = U + c.astype(np.float32) @ np.asarray(theta.W, np.float32)
    scores = (query @ V.T) / np.float32(theta.temperature) + np.asarray(theta.b, np.float32)
    if theta.beta is not None:
        w = recent_weights(recent, count, _sigmoid(theta.logit_repeat_decay)) * np.float32(theta.beta)
        rows = np.repeat(np.arange(len(U)), recent.shape[1])
        np.add.at(scores, (rows, np.maximum(recent, 0).reshape(-1)), w.reshape(-1))
    return scores.astype(np.float32, copy=False)
