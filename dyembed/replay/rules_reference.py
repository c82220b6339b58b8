"""Slow, readable float64 reference of the dynamic rule: one event at a time, pure numpy.

The TF engine (engine.py) must reproduce these numbers (states and per-event scores, rtol 1e-4)
for every rule × loss with θ frozen; tests/test_replay_contract.py checks it.

For user u (state before the event), item j at time t, item matrix V, bias b, temperature τ:

    decay       u ← u0 + 2^(-(t - t_last)/h) (u - u0)            (h > 0 and the user has a past event)
    score       s = V u / τ + b                                    (the prequential score vector)
    full        p = softmax(s);          ∇u = Vᵀ (p - e_j) / τ
    sampled     c = [j, n_1..n_S] (shared negatives), z_k = s_{c_k} - log Q(c_k),
                negatives equal to j are dropped (accidental hits), q = softmax(z),
                ∇u = Σ_k q_k v_{c_k} / τ - v_j / τ
    weight      ∇u ← w ∇u                                          (event weight, default 1)
    prior pull  ∇u ← ∇u + λ (u - u0)
    clip        ∇u ← ∇u · min(1, c / ||∇u||)
    sgd         u ← u - α ∇u
    adagrad     G ← G + ∇u²;  u ← u - α ∇u / (√G + ε)
    adam        k ← k + 1;  m ← β1 m + (1-β1) ∇u;  v ← β2 v + (1-β2) ∇u²
                u ← u - α (m / (1-β1^k)) / (√(v / (1-β2^k)) + ε)

α is a scalar or a per-dimension vector. Rank (pessimistic ties):
1 + #{items i ≠ j not excluded with s_i ≥ s_j}.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dyembed.replay.spec import RuleSpec
from dyembed.replay.state import UserState


@dataclass
class ReferenceParams:
    """θ as plain float64 arrays (V already includes the projection and the residual)."""

    V: np.ndarray  # [n_items, d]
    b: np.ndarray  # [n_items]
    tau: float
    alpha: np.ndarray  # [] or [d]
    u0: np.ndarray  # [d]
    logq: np.ndarray | None = None  # [n_items] log proposal probabilities (sampled loss)


def _logsumexp(z: np.ndarray) -> float:
    m = np.max(z)
    return float(m + np.log(np.sum(np.exp(z - m))))


def event_gradient(u: np.ndarray, j: int, params: ReferenceParams, spec: RuleSpec,
                   negatives: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """(∇u of the event loss, the loss), before weighting, pull and clipping."""
    V, tau = params.V, params.tau
    s = V @ u / tau + params.b
    if spec.loss == "full":
        loss = _logsumexp(s) - s[j]
        p = np.exp(s - np.max(s))
        p /= p.sum()
        return V.T @ p / tau - V[j] / tau, loss
    if negatives is None or params.logq is None:
        raise ValueError("the sampled loss needs negatives and logq")
    cand = np.concatenate([[j], [n for n in negatives if n != j]]).astype(np.int64)
    z = s[cand] - params.logq[cand]
    loss = _logsumexp(z) - z[0]
    q = np.exp(z - np.max(z))
    q /= q.sum()
    return V[cand].T @ q / tau - V[j] / tau, loss


def reference_replay(
    params: ReferenceParams,
    spec: RuleSpec,
    state: UserState,
    user_idx: np.ndarray,
    item_idx: np.ndarray,
    ts: np.ndarray,
    *,
    weight: np.ndarray | None = None,
    negatives: np.ndarray | None = None,
    exclude: list[set[int]] | None = None,
    update: bool = True,
) -> tuple[UserState, np.ndarray, np.ndarray, np.ndarray]:
    """Replay events in row order; returns (new state, target scores, ranks, losses).

    `negatives[n]` are event n's shared negatives (sampled loss); `exclude[user]` the items masked
    from that user's rankings. The input state is not modified.
    """
    p = ReferenceParams(
        V=np.asarray(params.V, np.float64), b=np.asarray(params.b, np.float64), tau=float(params.tau),
        alpha=np.asarray(params.alpha, np.float64), u0=np.asarray(params.u0, np.float64),
        logq=None if params.logq is None else np.asarray(params.logq, np.float64),
    )
    U = state.U.astype(np.float64)
    slots = state.slots.astype(np.float64)
    count = state.count.astype(np.int64)
    last = state.last_ts.astype(np.int64)
    n = len(user_idx)
    scores, ranks, losses = np.zeros(n), np.zeros(n, np.int64), np.zeros(n)
    for e in range(n):
        i, j, t = int(user_idx[e]), int(item_idx[e]), int(ts[e])
        u = U[i].copy()
        if update and spec.half_life > 0 and count[i] > 0:
            lam = 2.0 ** (-max(0, t - last[i]) / spec.half_life)
            u = p.u0 + lam * (u - p.u0)
        s = p.V @ u / p.tau + p.b
        scores[e] = s[j]
        beats = s >= s[j]
        beats[j] = False
        if exclude is not None and exclude[i]:
            beats[[x for x in exclude[i] if x != j]] = False
        ranks[e] = 1 + int(beats.sum())
        g, losses[e] = event_gradient(u, j, p, spec, None if negatives is None else negatives[e])
        if not update:
            continue
        if weight is not None:
            g = g * float(weight[e])
        g = g + spec.l2 * (u - p.u0)
        if spec.clip > 0:
            norm = np.linalg.norm(g)
            if norm > spec.clip:
                g = g * (spec.clip / norm)
        if spec.rule == "sgd":
            u = u - p.alpha * g
        elif spec.rule == "adagrad":
            slots[0, i] += g * g
            u = u - p.alpha * g / (np.sqrt(slots[0, i]) + spec.eps)
        else:
            k = count[i] + 1
            slots[0, i] = spec.beta1 * slots[0, i] + (1 - spec.beta1) * g
            slots[1, i] = spec.beta2 * slots[1, i] + (1 - spec.beta2) * g * g
            m_hat = slots[0, i] / (1 - spec.beta1 ** k)
            v_hat = slots[1, i] / (1 - spec.beta2 ** k)
            u = u - p.alpha * m_hat / (np.sqrt(v_hat) + spec.eps)
        U[i] = u
        count[i] += 1
        last[i] = t
    new_state = UserState(U=U, slots=slots, count=count.astype(np.int32), last_ts=last)
    return new_state, scores, ranks, losses
