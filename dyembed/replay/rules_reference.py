"""Slow, readable float64 reference of the dynamic model: one event at a time, pure numpy.

Two references, both built from the numpy twins in rules.py:

- `reference_replay` — the rule with θ frozen: states, per-event scores, ranks and losses. The TF
  engine must reproduce them (rtol 1e-4) for every rule × loss (tests/test_replay_contract.py).
- `reference_objective` — θ's training objective of one block: every user's events of the block
  replayed from its state at the block start (a constant — truncated backprop — except a user
  with no event yet under user_init = prior, who starts at θ's u0), each event's loss taken with
  the state before it, then

      objective = Σ_e w_e loss_e / N + (weight_decay / 2) (‖P‖² + ‖E‖²)
      N = lanes × truncation (train.loss_normalizer = "events") or max(Σ_e w_e, 1) ("block").

  With train.meta = false the users' trajectories are constants for θ (the stop-gradient
  variant): `trajectory_theta` fixes them while `theta` is what the losses are differentiated in.
  Its finite-difference gradient, and Adam steps taken with it (`reference_adam`), are what the
  engine's θ gradients and updates must equal (tests/test_train_reference.py).

For user u (state before the event), item j at time t (rules.py has the formulas):

    decay → recent weights → context c, repeat counts h → s = (u + c W) Vᵀ/τ + b + β h
    → loss, ∇u → w ∇u + λ(u − u0), clipped → sgd | adagrad | adam → push j onto the ring

Rank (pessimistic ties): 1 + #{items i ≠ j not excluded with s_i ≥ s_j}.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dyembed.replay import rules
from dyembed.replay.spec import RuleSpec
from dyembed.replay.state import UserState
from dyembed.replay.theta import Theta


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


@dataclass
class ReferenceParams:
    """θ as plain float64 arrays (V already includes the projection and the residual)."""

    V: np.ndarray  # [n_items, d]
    b: np.ndarray  # [n_items]
    tau: float
    alpha: np.ndarray  # [] or [d]
    u0: np.ndarray  # [d]
    logq: np.ndarray | None = None  # [n_items] log proposal probabilities (sampled loss)
    W: np.ndarray | None = None  # [d, d] context transition (model.context)
    gamma_context: float = 0.0
    beta: float | None = None  # repeat weight (model.repeat)
    gamma_repeat: float = 0.0

    @classmethod
    def from_theta(cls, theta: Theta, features: np.ndarray, V: np.ndarray | None = None) -> "ReferenceParams":
        """float64 parameters; V = X P + E unless given (e.g. the engine's own float32 V, so that
        ranks compare exactly)."""
        f64 = lambda a: None if a is None else np.asarray(a, np.float64)  # noqa: E731
        if V is None:
            V = np.asarray(features, np.float64) @ f64(theta.P)
            if theta.E is not None:
                V = V + f64(theta.E)
        return cls(V=f64(V), b=f64(theta.b), tau=float(np.exp(np.float64(theta.log_tau))),
                   alpha=np.exp(f64(theta.log_alpha)), u0=f64(theta.u0), logq=f64(theta.logq), W=f64(theta.W),
                   gamma_context=_sigmoid(float(theta.logit_context_decay)) if theta.W is not None else 0.0,
                   beta=None if theta.beta is None else float(theta.beta),
                   gamma_repeat=_sigmoid(float(theta.logit_repeat_decay)) if theta.beta is not None else 0.0)

    def as_float64(self) -> "ReferenceParams":
        f64 = lambda a: None if a is None else np.asarray(a, np.float64)  # noqa: E731
        return ReferenceParams(V=f64(self.V), b=f64(self.b), tau=float(self.tau), alpha=f64(self.alpha),
                               u0=f64(self.u0), logq=f64(self.logq), W=f64(self.W),
                               gamma_context=float(self.gamma_context),
                               beta=None if self.beta is None else float(self.beta),
                               gamma_repeat=float(self.gamma_repeat))


def event_scores(u: np.ndarray, ring: np.ndarray | None, count: int, p: ReferenceParams) -> np.ndarray:
    """s = (u + c W) Vᵀ / τ + b + β h for one user (state before the event)."""
    query = u
    if p.W is not None:
        query = u + rules.context_np(p.V, ring, rules.recent_weights_np(ring, count, p.gamma_context)) @ p.W
    s = p.V @ query / p.tau + p.b
    if p.beta is not None:
        s = s + p.beta * rules.repeat_counts_np(ring, rules.recent_weights_np(ring, count, p.gamma_repeat), len(p.b))
    return s


def event_gradient(s: np.ndarray, j: int, p: ReferenceParams, spec: RuleSpec,
                   negatives: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """(∇u of the event loss, the loss) from the event's score vector, before weighting, pull and clipping."""
    if spec.loss == "full":
        loss, g = rules.full_loss_grad_np(s, j, p.V, p.tau)
        return g, loss
    if negatives is None or p.logq is None:
        raise ValueError("the sampled loss needs negatives and logq")
    loss, g = rules.sampled_loss_grad_np(s, j, negatives, p.V, p.logq, p.tau)
    return g, loss


class _Users:
    """The per-user state as mutable float64 rows."""

    def __init__(self, state: UserState):
        self.U = state.U.astype(np.float64)
        self.slots = state.slots.astype(np.float64)
        self.count = state.count.astype(np.int64)
        self.last = state.last_ts.astype(np.int64)
        self.recent = None if state.recent is None else state.recent.astype(np.int64)

    def ring(self, i: int) -> np.ndarray | None:
        return None if self.recent is None else self.recent[i]

    def to_state(self) -> UserState:
        return UserState(U=self.U, slots=self.slots, count=self.count.astype(np.int32), last_ts=self.last,
                         recent=None if self.recent is None else self.recent.astype(np.int32))


def _step(users: _Users, i: int, u: np.ndarray, j: int, t: int, g: np.ndarray, w: float, p: ReferenceParams,
          spec: RuleSpec) -> None:
    """The user's gradient step and bookkeeping after the event (state rows of `users` updated)."""
    g = rules.shape_gradient_np(g, w, u, p.u0, spec)
    slots = tuple(users.slots[k, i] for k in range(spec.n_slots))
    u, new_slots = rules.optimizer_step_np(u, g, slots, int(users.count[i]), p.alpha, spec)
    for k, value in enumerate(new_slots):
        users.slots[k, i] = value
    if users.recent is not None:
        users.recent[i] = rules.push_recent_np(users.recent[i], int(users.count[i]), j)
    users.U[i] = u
    users.count[i] += 1
    users.last[i] = t


def _decayed(users: _Users, i: int, u: np.ndarray, t: int, u0: np.ndarray, spec: RuleSpec) -> np.ndarray:
    if spec.half_life > 0:
        return rules.decay_np(u, u0, float(t - users.last[i]), users.count[i] > 0, spec.half_life)
    return u


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
    p = params.as_float64()
    users = _Users(state)
    n = len(user_idx)
    scores, ranks, losses = np.zeros(n), np.zeros(n, np.int64), np.zeros(n)
    for e in range(n):
        i, j, t = int(user_idx[e]), int(item_idx[e]), int(ts[e])
        u = users.U[i].copy()
        if update:
            u = _decayed(users, i, u, t, p.u0, spec)
        s = event_scores(u, users.ring(i), int(users.count[i]), p)
        scores[e] = s[j]
        beats = s >= s[j]
        beats[j] = False
        if exclude is not None and exclude[i]:
            beats[[x for x in exclude[i] if x != j]] = False
        ranks[e] = 1 + int(beats.sum())
        g, losses[e] = event_gradient(s, j, p, spec, None if negatives is None else negatives[e])
        if update:
            _step(users, i, u, j, t, g, 1.0 if weight is None else float(weight[e]), p, spec)
    return users.to_state(), scores, ranks, losses


def reference_objective(
    theta: Theta,
    features: np.ndarray,
    spec: RuleSpec,
    start: UserState,
    user_idx: np.ndarray,
    item_idx: np.ndarray,
    ts: np.ndarray,
    *,
    weight: np.ndarray | None = None,
    negatives: np.ndarray | None = None,
    normalizer: str = "block",
    capacity: float = 1.0,
    weight_decay: float = 0.0,
    trajectory_theta: Theta | None = None,
) -> float:
    """θ's training objective of one block (module docstring), in float64."""
    p = ReferenceParams.from_theta(theta, features)
    p_traj = p if trajectory_theta is None else ReferenceParams.from_theta(trajectory_theta, features)
    meta = trajectory_theta is None
    users = _Users(start)
    fresh = users.count == 0
    if spec.init == "prior" and meta:
        users.U[fresh] = p.u0  # users with no event yet sit at θ's prior (differentiable)
    elif spec.init == "prior":
        users.U[fresh] = p_traj.u0
    loss_sum, weight_sum = 0.0, 0.0
    for e in range(len(user_idx)):
        i, j, t = int(user_idx[e]), int(item_idx[e]), int(ts[e])
        w = 1.0 if weight is None else float(weight[e])
        u_carried = users.U[i].copy()
        neg = None if negatives is None else negatives[e]
        # the loss: decay toward θ's prior, scores with θ
        u = _decayed(users, i, u_carried, t, p.u0, spec)
        s = event_scores(u, users.ring(i), int(users.count[i]), p)
        g, loss = event_gradient(s, j, p, spec, neg)
        loss_sum += w * loss
        weight_sum += w
        if not meta:  # the trajectory follows its own (constant) θ
            u = _decayed(users, i, u_carried, t, p_traj.u0, spec)
            s = event_scores(u, users.ring(i), int(users.count[i]), p_traj)
            g, _ = event_gradient(s, j, p_traj, spec, neg)
        _step(users, i, u, j, t, g, w, p if meta else p_traj, spec)
    denominator = capacity if normalizer == "events" else max(weight_sum, 1.0)
    objective = loss_sum / denominator
    if weight_decay > 0:
        decay = float(np.sum(np.asarray(theta.P, np.float64) ** 2))
        if theta.E is not None:
            decay += float(np.sum(np.asarray(theta.E, np.float64) ** 2))
        objective += 0.5 * weight_decay * decay
    return objective


def finite_difference_gradient(objective, theta: Theta, names: list[str], *, h: float = 1e-6) -> dict[str, np.ndarray]:
    """Central differences of objective(θ) in float64, for the named parameters of θ."""
    theta = Theta(**{k: np.asarray(v, np.float64) for k, v in theta.arrays().items()})
    grads = {}
    for name in names:
        base = getattr(theta, name)
        grad = np.zeros(base.shape)
        for idx in np.ndindex(base.shape):
            plus, minus = base.copy(), base.copy()
            plus[idx] += h
            minus[idx] -= h
            grad[idx] = (objective(theta.replace(**{name: plus})) - objective(theta.replace(**{name: minus}))) / (2 * h)
        grads[name] = grad
    return grads


@dataclass
class ReferenceAdam:
    """θ's Adam (train.lr per parameter), float64: the update the engine's ThetaAdam must take."""

    lrs: dict[str, float]
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self):
        self.t = 0
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    def step(self, theta: Theta, grads: dict[str, np.ndarray], rows: dict[str, np.ndarray] | None = None) -> Theta:
        """One Adam step; `rows={name: item ids}` makes that parameter's step lazy: only those rows
        (and their moments) move, bias correction by the global step count."""
        self.t += 1
        rows = rows or {}
        new = {}
        for name, g in grads.items():
            value = np.asarray(getattr(theta, name), np.float64)
            m = np.array(np.broadcast_to(self.m.get(name, 0.0), np.shape(g)), np.float64)
            v = np.array(np.broadcast_to(self.v.get(name, 0.0), np.shape(g)), np.float64)
            sel = rows.get(name, Ellipsis)
            m[sel] = self.beta1 * m[sel] + (1 - self.beta1) * g[sel]
            v[sel] = self.beta2 * v[sel] + (1 - self.beta2) * g[sel] * g[sel]
            self.m[name], self.v[name] = m, v
            m_hat = m[sel] / (1 - self.beta1 ** self.t)
            v_hat = v[sel] / (1 - self.beta2 ** self.t)
            value = value.copy()
            value[sel] = value[sel] - self.lrs[name] * m_hat / (np.sqrt(v_hat) + self.eps)
            new[name] = value
        return theta.replace(**new)
