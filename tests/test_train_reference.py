"""θ's training against the float64 reference: gradients of one block and the Adam updates.

The engine's tape-derived gradient of a block's objective (users' unrolled steps inside the
block, the state at the block start a constant, a fresh user under user_init = prior starting
at θ's u0) must equal central finite differences of rules_reference.reference_objective, for
every rule × loss × user-state variant (the "recent" variant has the context and repeat terms),
with and without weight decay, both loss normalisers, and the stop-gradient variant
(train.meta = false). Then a training replay of two blocks must take the same θ steps as the
float64 Adam fed with those reference gradients (truncation: block 2 starts from the states
block 1 wrote back). With the sampled loss the steps on E and b are lazy: only the rows the
block gathered (its targets, negatives and, with the context term, its users' recent items at
the block start) move.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dyembed.config import ModelConfig
from dyembed.replay.rules_reference import (ReferenceAdam, ReferenceParams, finite_difference_gradient,
                                            reference_objective, reference_replay)
from dyembed.replay.spec import LOSSES, RULES, RuleSpec
from dyembed.replay.state import UserState
from dyembed.replay.tbatch import lane_layout
from replay_world import features, random_theta

N_USERS, N_ITEMS, D, DIM, NEG, HISTORY = 6, 15, 5, 3, 6, 3
N_EVENTS = 36


def config(rule: str, loss: str, variant: str) -> ModelConfig:
    extra = dict(history=HISTORY, context=True, repeat=True) if variant == "recent" else {}
    return ModelConfig(dim=DIM, rule=rule, loss=loss, num_negatives=NEG, l2_prior=0.05, decay_half_life_days=1.0,
                       clip_norm=1.5, per_dim_step=True, learn_temperature=True, **extra)


def events(seed: int):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, N_USERS, N_EVENTS).astype(np.int32)
    items = rng.integers(0, N_ITEMS, N_EVENTS).astype(np.int32)
    items[5:9] = items[4]  # repeats, so the repeat term is exercised
    ts = np.sort(rng.integers(1_000_000, 1_000_000 + 3 * 86_400, N_EVENTS)).astype(np.int64)
    weight = rng.uniform(0.5, 1.5, N_EVENTS).astype(np.float32)
    return users, items, ts, weight


def start_state(cfg: ModelConfig, spec: RuleSpec, u0: np.ndarray, seed: int) -> UserState:
    """Users 0-2 mid-history (their state a constant for θ), users 3-5 fresh (at the prior u0)."""
    rng = np.random.default_rng(seed)
    state = UserState.fresh(N_USERS, DIM, spec.n_slots, u0=u0, history=cfg.history)
    old = np.arange(3)
    state.U[old] = rng.standard_normal((3, DIM)).astype(np.float32) * 0.5
    state.slots[:, old] = rng.uniform(0.01, 0.3, (spec.n_slots, 3, DIM)).astype(np.float32)
    state.count[old] = [1, 4, 7]
    state.last_ts[old] = 1_000_000 - rng.integers(0, 86_400, 3)
    if cfg.history:
        state.recent[old] = rng.integers(0, N_ITEMS, (3, cfg.history))
        state.recent[0, 1:] = -1  # one event so far
    return state


def engine_for(cfg, theta, X, state, *, lr=0.01, scalar_lr=0.0, meta=True, weight_decay=0.0, normalizer="block"):
    from dyembed.replay.engine import Engine
    from dyembed.replay.model import Model

    model = Model(X, theta, cfg)
    engine = Engine(model, RuleSpec.from_config(cfg), state, lr=lr, scalar_lr=scalar_lr, meta=meta,
                    weight_decay=weight_decay, loss_normalizer=normalizer, num_negatives=NEG)
    return model, engine


def per_event_negatives(blk, negs, n_events, offset=0):
    """The block's shared negatives of each event row (rows offset.. of the block)."""
    out = np.full((n_events, negs.shape[1]), -1, np.int64)
    t_idx, lane = np.nonzero(blk.valid)
    out[blk.pos[t_idx, lane] + offset] = negs[t_idx]
    return out


def assert_gradients_close(got: dict, want: dict):
    for name, g_ref in want.items():
        scale = max(1.0, float(np.abs(g_ref).max()))
        np.testing.assert_allclose(got[name], g_ref, rtol=2e-3, atol=2e-4 * scale, err_msg=name)


CASES = [(rule, loss, variant, True, wd, norm)
         for (rule, loss, variant), (wd, norm) in zip(itertools.product(RULES, LOSSES, ("plain", "recent")),
                                                      itertools.cycle([(0.0, "block"), (0.1, "events"), (0.05, "block")]))]
CASES += [("sgd", "full", "recent", False, 0.0, "block"), ("adam", "sampled", "plain", False, 0.1, "events")]


@pytest.mark.parametrize("rule,loss,variant,meta,weight_decay,normalizer", CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}-{'meta' if c[3] else 'stopgrad'}-wd{c[4]}-{c[5]}" for c in CASES])
def test_block_gradient_equals_float64_reference(rule, loss, variant, meta, weight_decay, normalizer):
    cfg = config(rule, loss, variant)
    spec = RuleSpec.from_config(cfg)
    X = features(N_ITEMS, D, seed=1)
    users, items, ts, weight = events(seed=2)
    theta = random_theta(X, cfg, items, seed=3)
    state = start_state(cfg, spec, theta.u0, seed=4)
    model, engine = engine_for(cfg, theta, X, state, meta=meta, weight_decay=weight_decay, normalizer=normalizer)
    lanes, steps = N_USERS, N_EVENTS  # one block
    objective, grads, blk, negs = engine.block_gradients(users, items, ts, weight, lanes=lanes, steps=steps,
                                                         rng=np.random.default_rng(5))
    negatives = per_event_negatives(blk, negs, N_EVENTS) if loss == "sampled" else None
    trajectory = None if meta else theta

    def ref(th):
        return reference_objective(th, X, spec, state, users, items, ts, weight=weight, negatives=negatives,
                                   normalizer=normalizer, capacity=float(lanes * steps), weight_decay=weight_decay,
                                   trajectory_theta=trajectory)

    assert objective == pytest.approx(ref(theta), rel=1e-4)
    names = model.trainable_names()
    expected = {"P", "log_alpha", "u0", "E", "b", "log_tau"} | ({"W", "logit_context_decay", "beta",
                                                                 "logit_repeat_decay"} if variant == "recent" else set())
    assert set(names) == expected
    want = finite_difference_gradient(ref, theta, names)
    assert_gradients_close(grads, want)
    # the table was not touched
    got_state = engine.get_state()
    np.testing.assert_array_equal(got_state.U, state.U)
    np.testing.assert_array_equal(got_state.count, state.count)


@pytest.mark.parametrize("rule,loss,variant", [("adam", "full", "recent"), ("adagrad", "sampled", "recent"),
                                               ("sgd", "sampled", "plain")])
def test_two_training_blocks_take_the_reference_adam_steps(rule, loss, variant):
    cfg = config(rule, loss, variant)
    spec = RuleSpec.from_config(cfg)
    X = features(N_ITEMS, D, seed=1)
    users, items, ts, weight = events(seed=6)
    theta0 = random_theta(X, cfg, items, seed=7)
    state0 = start_state(cfg, spec, theta0.u0, seed=8)
    lr, scalar_lr, wd = 0.01, 0.05, 0.05
    model, engine = engine_for(cfg, theta0, X, state0, lr=lr, scalar_lr=scalar_lr, weight_decay=wd)
    lanes, steps = N_USERS, 5
    blocks = lane_layout(users, lanes, steps)
    assert len(blocks) >= 2
    negs_out: list = []
    engine.replay(users, items, ts, weight, update=True, train=True, lanes=lanes, steps=steps, window=N_EVENTS,
                  rng=np.random.default_rng(9), negatives_out=negs_out)
    got = model.to_theta()

    names = model.trainable_names()
    adam = ReferenceAdam({n: scalar_lr if n in ("beta", "logit_repeat_decay", "logit_context_decay") else lr
                          for n in names})
    theta, state = theta0, state0
    untouched = 0  # rows a lazy step leaves alone
    for k, blk in enumerate(blocks):
        rows = np.sort(blk.pos[blk.valid])
        negatives = None
        if loss == "sampled":
            block_negs = negs_out[k][1]
            negatives = per_event_negatives(blk, block_negs, N_EVENTS)[rows]

        def ref(th, rows=rows, negatives=negatives, state=state):
            return reference_objective(th, X, spec, state, users[rows], items[rows], ts[rows], weight=weight[rows],
                                       negatives=negatives, capacity=float(lanes * steps), weight_decay=wd)

        grads = finite_difference_gradient(ref, theta, names)
        lazy = None
        if loss == "sampled":
            used = [items[rows], negatives.ravel()]
            if cfg.context:
                recent = state.recent[np.unique(users[rows])].ravel()  # at the block start
                used.append(recent[recent >= 0])
            ids = np.unique(np.concatenate(used))
            lazy = {n: ids for n in ("E", "b") if n in names}
            untouched += N_ITEMS - len(ids)
        # the block's users step with the θ of the block start (trajectory), then θ takes its Adam step
        params = ReferenceParams.from_theta(theta, X)
        fresh = state.count == 0
        start = state.copy()
        start.U[fresh] = np.asarray(theta.u0, np.float32)
        state, *_ = reference_replay(params, spec, start, users[rows], items[rows], ts[rows], weight=weight[rows],
                                     negatives=negatives)
        theta = adam.step(theta, grads, rows=lazy)
    assert loss == "full" or untouched > 0  # the lazy rule is exercised
    for name in names:
        np.testing.assert_allclose(getattr(got, name), getattr(theta, name), rtol=1e-4, atol=2e-5, err_msg=name)
    np.testing.assert_allclose(engine.get_state().U, state.U, rtol=1e-4, atol=1e-5)
