"""The per-user rule as small pure functions: each TensorFlow function (batched over lanes, the
engine's fast path) sits beside its float64 numpy twin (one user, the reference's path).

For user state (u, optimiser slots, update count k, last event time, recent items) and an event
(item j, time t, weight w), in this order (docs/model.md has the whole story):

    decay      u ← u0 + 2^(-(t - t_last)/h) (u - u0)             h > 0 and the user has a past event
    recent     a_m = (k - 1 - m) mod H, the age of ring slot m; weights γ^a_m (0 for empty slots)
    context    c = Σ_m γc^a_m v_(ring m) / Σ_m γc^a_m               (0 without history)
    repeat     h_i = Σ_m γr^a_m [ring_m = i]
    score      s = (u + c W) Vᵀ / τ + b + β h                       the event is scored here
    loss       full: logsumexp(s) - s_j;  ∇u = Vᵀ (softmax(s) - e_j) / τ
               sampled: over [j, negatives] with logits s - log Q, accidental hits dropped
    gradient   ∇u ← w ∇u + λ (u - u0), clipped to norm ≤ c
    step       sgd | adagrad | adam (per-user slots; Adam counts the user's own steps)
    push       ring[k mod H] ← j;  k ← k + 1;  t_last ← t

The score is linear in u with coefficient v_i / τ, so ∇u keeps its closed form whatever the
context and repeat terms add. θ learns through these functions by automatic differentiation (the
engine's tape); tests/test_train_reference.py checks that gradient against finite differences of
the float64 objective built from the numpy twins (rules_reference.py).
"""

from __future__ import annotations

import numpy as np

from dyembed.replay.spec import RuleSpec

LN2 = float(np.log(2.0))
NEG_INF = -1e30  # masks accidental hits among sampled negatives (exp underflows to exactly 0)
TINY = 1e-30  # keeps sqrt differentiable at 0


def _logsumexp_np(z: np.ndarray) -> float:
    m = np.max(z)
    return float(m + np.log(np.sum(np.exp(z - m))))


def _softmax_np(z: np.ndarray) -> np.ndarray:
    p = np.exp(z - np.max(z))
    return p / p.sum()


# ---- decay toward the prior ------------------------------------------------------------------
def decay_tf(tf, u, u0, dt, has_past, half_life: float):
    """u0 + 2^(-dt/h) (u - u0) for lanes with a past event (dt float [B], has_past bool [B])."""
    lam = tf.where(has_past, tf.exp(-dt * (LN2 / half_life)), 1.0)
    return u0 + lam[:, None] * (u - u0)


def decay_np(u: np.ndarray, u0: np.ndarray, dt: float, has_past: bool, half_life: float) -> np.ndarray:
    if not has_past:
        return u
    return u0 + 2.0 ** (-max(0.0, dt) / half_life) * (u - u0)


# ---- recent items: ages, weights, context, repeat counts, push -------------------------------
def recent_weights_tf(tf, ring, cnt, log_gamma):
    """γ^age per ring slot [B, H] (0 for empty slots, ring = -1)."""
    H = tf.shape(ring)[1]
    m = tf.range(H)[None, :]
    age = tf.math.floormod(cnt[:, None] - 1 - m, H)
    return tf.where(ring >= 0, tf.exp(tf.cast(age, log_gamma.dtype) * log_gamma), 0.0)


def recent_weights_np(ring: np.ndarray, count: int, gamma: float) -> np.ndarray:
    H = len(ring)
    age = (count - 1 - np.arange(H)) % H
    return np.where(ring >= 0, gamma ** age.astype(np.float64), 0.0)


def context_tf(tf, V, ring, weights):
    """c = Σ_m w_m v_(ring m) / Σ_m w_m  [B, d] (0 for lanes without history)."""
    rows = tf.gather(V, tf.maximum(ring, 0))  # [B, H, d]
    total = tf.reduce_sum(weights, axis=1, keepdims=True)
    return tf.reduce_sum(rows * weights[:, :, None], axis=1) / tf.maximum(total, TINY)


def context_np(V: np.ndarray, ring: np.ndarray, weights: np.ndarray) -> np.ndarray:
    total = weights.sum()
    if total <= 0:
        return np.zeros(V.shape[1])
    return (weights[:, None] * V[np.maximum(ring, 0)]).sum(axis=0) / total


def add_repeat_scores_tf(tf, scores, ring, weights, beta):
    """scores [B, N] + β h, h_i = Σ_m w_m [ring_m = i] (a scatter of B × H values)."""
    B, H = tf.shape(ring)[0], tf.shape(ring)[1]
    lane = tf.repeat(tf.range(B), H)
    idx = tf.stack([lane, tf.reshape(tf.maximum(ring, 0), [-1])], axis=1)
    return tf.tensor_scatter_nd_add(scores, idx, tf.reshape(beta * weights, [-1]))


def repeat_count_of_targets_tf(tf, ring, weights, it):
    """h at each lane's own target: it [B] → [B]."""
    return tf.reduce_sum(tf.where(ring == it[:, None], weights, 0.0), axis=1)


def repeat_counts_of_shared_tf(tf, ring, weights, candidates):
    """h at candidates shared by all lanes: [S] → [B, S]."""
    hits = tf.cast(ring[:, :, None] == candidates[None, None, :], weights.dtype)  # [B, H, S]
    return tf.reduce_sum(hits * weights[:, :, None], axis=1)


def repeat_counts_np(ring: np.ndarray, weights: np.ndarray, n_items: int) -> np.ndarray:
    h = np.zeros(n_items)
    np.add.at(h, ring[ring >= 0], weights[ring >= 0])
    return h


def push_recent_tf(tf, ring, cnt, items, ok):
    """ring[b, cnt_b mod H] ← items_b for lanes with an event (ok)."""
    H = tf.shape(ring)[1]
    slot = tf.math.floormod(cnt, H)
    put = tf.one_hot(slot, H, on_value=True, off_value=False, dtype=tf.bool) & ok[:, None]
    return tf.where(put, items[:, None], ring)


def push_recent_np(ring: np.ndarray, count: int, item: int) -> np.ndarray:
    ring = ring.copy()
    ring[count % len(ring)] = item
    return ring


# ---- losses and the closed-form user gradient -------------------------------------------------
def full_loss_grad_tf(tf, scores, it, V, tau, mm):
    """Full softmax: loss = logsumexp(s) - s_j; ∇u = Vᵀ(softmax(s) − e_j)/τ.

    (On CPU, logsumexp + exp measured faster than TF's fused softmax / cross-entropy kernels.)"""
    s_t = tf.gather(scores, it[:, None], batch_dims=1)[:, 0]
    lse = tf.reduce_logsumexp(scores, axis=1)
    p = tf.exp(scores - lse[:, None])
    return lse - s_t, (mm(p, V) - tf.gather(V, it)) / tau


def full_loss_grad_np(s: np.ndarray, j: int, V: np.ndarray, tau: float) -> tuple[float, np.ndarray]:
    return _logsumexp_np(s) - s[j], (V.T @ _softmax_np(s) - V[j]) / tau


def sampled_loss_grad_tf(tf, s_t, s_n, v_t, v_n, it, neg, logq_t, logq_n, tau, mm):
    """Sampled softmax over [target, shared negatives], logits z = s − log Q, negatives equal to
    the target masked (accidental hits); ∇u = (Σ_k q_k v_k − v_target)/τ with q = softmax(z).
    s_t [B], s_n [B, S] are the full scores of the candidates."""
    z_t = s_t - logq_t
    z_n = tf.where(neg[None, :] == it[:, None], NEG_INF, s_n - logq_n[None, :])
    z = tf.concat([z_t[:, None], z_n], axis=1)
    lse = tf.reduce_logsumexp(z, axis=1)
    q = tf.exp(z - lse[:, None])
    return lse - z_t, (q[:, :1] * v_t + mm(q[:, 1:], v_n) - v_t) / tau


def sampled_loss_grad_np(s: np.ndarray, j: int, negatives: np.ndarray, V: np.ndarray, logq: np.ndarray,
                         tau: float) -> tuple[float, np.ndarray]:
    cand = np.concatenate([[j], [n for n in negatives if n != j]]).astype(np.int64)
    z = s[cand] - logq[cand]
    q = _softmax_np(z)
    return _logsumexp_np(z) - z[0], (V[cand].T @ q - V[j]) / tau


# ---- the user's gradient step ---------------------------------------------------------------
def shape_gradient_tf(tf, grad, weight, u, u0, spec: RuleSpec):
    """w ∇u + λ (u − u0), clipped to norm ≤ c."""
    g = grad * weight[:, None]
    if spec.l2 > 0:
        g += spec.l2 * (u - u0)
    if spec.clip > 0:
        norm = tf.sqrt(tf.maximum(tf.reduce_sum(g * g, axis=1), TINY))
        g *= tf.minimum(1.0, spec.clip / norm)[:, None]
    return g


def shape_gradient_np(grad: np.ndarray, weight: float, u: np.ndarray, u0: np.ndarray, spec: RuleSpec) -> np.ndarray:
    g = grad * weight + spec.l2 * (u - u0)
    if spec.clip > 0:
        norm = np.linalg.norm(g)
        if norm > spec.clip:
            g = g * (spec.clip / norm)
    return g


def optimizer_step_tf(tf, u, g, slots: tuple, cnt, alpha, spec: RuleSpec):
    """(u_next, slots_next) for sgd / adagrad (G) / adam (m, v; bias correction by the user's count)."""
    if spec.rule == "sgd":
        return u - alpha * g, ()
    if spec.rule == "adagrad":
        acc = slots[0] + g * g
        return u - alpha * g / (tf.sqrt(tf.maximum(acc, TINY)) + spec.eps), (acc,)
    k = tf.cast(cnt + 1, u.dtype)[:, None]
    m = spec.beta1 * slots[0] + (1 - spec.beta1) * g
    v = spec.beta2 * slots[1] + (1 - spec.beta2) * g * g
    m_hat = m / (1 - tf.pow(spec.beta1, k))
    v_hat = v / (1 - tf.pow(spec.beta2, k))
    return u - alpha * m_hat / (tf.sqrt(tf.maximum(v_hat, TINY)) + spec.eps), (m, v)


def optimizer_step_np(u: np.ndarray, g: np.ndarray, slots: tuple, count: int, alpha, spec: RuleSpec):
    if spec.rule == "sgd":
        return u - alpha * g, ()
    if spec.rule == "adagrad":
        acc = slots[0] + g * g
        return u - alpha * g / (np.sqrt(acc) + spec.eps), (acc,)
    k = count + 1
    m = spec.beta1 * slots[0] + (1 - spec.beta1) * g
    v = spec.beta2 * slots[1] + (1 - spec.beta2) * g * g
    m_hat = m / (1 - spec.beta1 ** k)
    v_hat = v / (1 - spec.beta2 ** k)
    return u - alpha * m_hat / (np.sqrt(v_hat) + spec.eps), (m, v)
