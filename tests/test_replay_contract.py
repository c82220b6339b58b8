"""The correctness contract, one suite for every rule × loss × user-state variant (θ frozen):

batched t-batch replay == one-event-at-a-time float64 numpy reference (states, per-event scores,
losses, ranks; rtol 1e-4); closed-form gradient == GradientTape; replay(A+B) == replay(A) then B;
same seed ⇒ same numbers; batch sizes that don't divide the data; a user with thousands of
events; a batch where every event is one user; inputs not mutated; state save/load round trip.
The "recent" variant keeps each user's last HISTORY items (fewer than most users' events, so the
ring wraps) and has the context (c W) and repeat (β h) terms on.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dyembed.config import ModelConfig
from dyembed.errors import StateError
from dyembed.replay.rules_reference import ReferenceParams, event_gradient, reference_replay
from dyembed.replay.seen import seen_items
from dyembed.replay.spec import LOSSES, RULES, RuleSpec
from dyembed.replay.state import UserState, load_state, save_state
from replay_world import features, random_events, random_theta

VARIANTS = ("plain", "recent")
COMBOS = list(itertools.product(RULES, LOSSES, VARIANTS))
N_USERS, N_ITEMS, D, DIM, NEG, HISTORY = 9, 40, 12, 6, 7, 5


def model_config(rule: str, loss: str, variant: str = "plain", **extra) -> ModelConfig:
    base = dict(dim=DIM, rule=rule, loss=loss, num_negatives=NEG, l2_prior=0.05, decay_half_life_days=1.0,
                clip_norm=3.0, per_dim_step=True)
    if variant == "recent":
        base.update(history=HISTORY, context=True, repeat=True)
    base.update(extra)
    return ModelConfig(**base)


class World:
    """One engine per rule × loss (traced once, reused by every test of the module)."""

    def __init__(self, rule: str, loss: str, variant: str = "plain"):
        from dyembed.replay.engine import Engine
        from dyembed.replay.model import Model

        self.cfg = model_config(rule, loss, variant)
        self.spec = RuleSpec.from_config(self.cfg)
        self.X = features(N_ITEMS, D, seed=1)
        self.users, self.items, self.ts = random_events(500, N_USERS, N_ITEMS, seed=2)
        self.weight = np.random.default_rng(3).uniform(0.5, 1.5, len(self.users)).astype(np.float32)
        self.theta = random_theta(self.X, self.cfg, self.items, seed=4)
        self.model = Model(self.X, self.theta, self.cfg)
        self.state0 = UserState.fresh(N_USERS, DIM, self.spec.n_slots, init="prior", u0=self.theta.u0,
                                      history=self.cfg.history)
        self.engine = Engine(self.model, self.spec, self.state0, lr=0.0, num_negatives=NEG)
        self.seen = seen_items(N_USERS, self.users[:150], self.items[:150])
        self.params = ReferenceParams.from_theta(self.theta, self.X, V=self.model.item_matrix())

    def run(self, users=None, items=None, ts=None, weight="default", state=None, *, lanes=3, steps=7, window=170,
            seed=0, exclude="default", update=True):
        users = self.users if users is None else users
        items = self.items if items is None else items
        ts = self.ts if ts is None else ts
        weight = self.weight if isinstance(weight, str) else weight
        exclude = self.seen if isinstance(exclude, str) else exclude
        self.engine.set_state(state if state is not None else self.state0)
        negs_out: list = []
        res = self.engine.replay(users, items, ts, weight, update=update, ranks=True, exclude=exclude, lanes=lanes,
                                 steps=steps, window=window, rng=np.random.default_rng(seed), negatives_out=negs_out)
        return res, self.engine.get_state(), self.event_negatives(negs_out, len(users))

    def event_negatives(self, negs_out, n):
        if self.spec.loss != "sampled":
            return None
        negs = np.full((n, NEG), -1, np.int64)
        for rows, block_negs in negs_out:
            t_idx, lane = np.nonzero(rows >= 0)
            negs[rows[t_idx, lane]] = block_negs[t_idx]
        assert (negs >= 0).all()
        return negs

    def reference(self, negs, users=None, items=None, ts=None, weight="default", state=None, exclude="default", update=True):
        users = self.users if users is None else users
        items = self.items if items is None else items
        ts = self.ts if ts is None else ts
        weight = self.weight if isinstance(weight, str) else weight
        exclude = self.seen if isinstance(exclude, str) else exclude
        excl = None if exclude is None else [set(exclude.items_of(u).tolist()) for u in range(N_USERS)]
        return reference_replay(self.params, self.spec, state if state is not None else self.state0, users, items, ts,
                                weight=weight, negatives=negs, exclude=excl, update=update)


_WORLDS: dict = {}


@pytest.fixture(params=COMBOS, ids=[f"{r}-{l}-{v}" for r, l, v in COMBOS])
def world(request) -> World:
    if request.param not in _WORLDS:
        _WORLDS[request.param] = World(*request.param)
    return _WORLDS[request.param]


def assert_state_close(got: UserState, want: UserState, rtol=1e-4, atol=1e-5):
    np.testing.assert_allclose(got.U, want.U, rtol=rtol, atol=atol)
    np.testing.assert_allclose(got.slots, want.slots, rtol=rtol, atol=atol)
    assert (got.recent is None) == (want.recent is None)
    if got.recent is not None:
        assert np.array_equal(got.recent, want.recent)
    assert np.array_equal(got.count, want.count)
    assert np.array_equal(got.last_ts, want.last_ts)


def assert_outputs_close(res, ref_scores, ref_ranks, ref_losses):
    np.testing.assert_allclose(res.scores, ref_scores, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(res.losses, ref_losses, rtol=1e-4, atol=1e-5)
    assert np.array_equal(res.ranks, ref_ranks)


def test_batched_equals_reference(world):
    res, state, negs = world.run()
    ref_state, scores, ranks, losses = world.reference(negs)
    assert_state_close(state, ref_state)
    assert_outputs_close(res, scores, ranks, losses)
    assert state.count.sum() == len(world.users)


def test_frozen_scoring_leaves_state_alone(world):
    start = world.state0.copy()
    start.U += np.random.default_rng(0).standard_normal(start.U.shape).astype(np.float32) * 0.1
    res, state, negs = world.run(state=start, update=False)
    _, scores, ranks, losses = world.reference(negs, state=start, update=False)
    assert_state_close(state, start, rtol=0, atol=0)
    assert_outputs_close(res, scores, ranks, losses)


@pytest.mark.parametrize("lanes,steps,window", [(1, 5, 500), (2, 3, 7), (64, 13, 33)])
def test_batch_shapes_that_do_not_divide_the_data(world, lanes, steps, window):
    n = 120
    sl = slice(0, n)
    res, state, negs = world.run(world.users[sl], world.items[sl], world.ts[sl], world.weight[sl],
                                 lanes=lanes, steps=steps, window=window)
    ref_state, scores, ranks, losses = world.reference(negs, world.users[sl], world.items[sl], world.ts[sl], world.weight[sl])
    assert_state_close(state, ref_state)
    assert_outputs_close(res, scores, ranks, losses)


def test_resume_equals_one_pass(world):
    """replay(A + B) == replay(A), then replay(B) from A's state (also through a fresh engine)."""
    full, full_state, negs_full = world.run(exclude=None)
    cut = 233
    a, state_a, negs_a = world.run(world.users[:cut], world.items[:cut], world.ts[:cut], world.weight[:cut], exclude=None)
    b, state_b, negs_b = world.run(world.users[cut:], world.items[cut:], world.ts[cut:], world.weight[cut:],
                                   state=state_a, exclude=None)
    if world.spec.loss == "full":  # negatives differ between the two layouts; full softmax has none
        assert_state_close(state_b, full_state, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.r_[a.scores, b.scores], full.scores, rtol=1e-5, atol=1e-6)
    # both routes equal the reference given their negatives
    ref_b, scores_b, _, _ = world.reference(None if negs_b is None else np.r_[negs_a, negs_b], exclude=None)
    assert_state_close(state_b, ref_b)
    np.testing.assert_allclose(np.r_[a.scores, b.scores], scores_b, rtol=1e-4, atol=1e-5)


def test_same_seed_same_numbers(world):
    r1, s1, _ = world.run(seed=11)
    r2, s2, _ = world.run(seed=11)
    assert np.array_equal(r1.scores, r2.scores) and np.array_equal(r1.ranks, r2.ranks)
    assert np.array_equal(s1.U, s2.U) and np.array_equal(s1.slots, s2.slots)


def test_inputs_not_mutated(world):
    arrays = [world.users, world.items, world.ts, world.weight]
    before = [a.copy() for a in arrays]
    state = world.state0.copy()
    state_before = state.copy()
    world.run(state=state)
    for a, b in zip(arrays, before):
        assert np.array_equal(a, b)
    assert_state_close(state, state_before, rtol=0, atol=0)
    assert np.array_equal(world.seen.indices, seen_items(N_USERS, world.users[:150], world.items[:150]).indices)


@pytest.mark.parametrize("rule,loss", [("sgd", "full"), ("adam", "sampled"), ("adagrad", "full")])
def test_one_user_with_thousands_of_events(rule, loss):
    w = _WORLDS.get((rule, loss)) or _WORLDS.setdefault((rule, loss), World(rule, loss))
    rng = np.random.default_rng(5)
    n = 3000
    users = np.where(rng.random(n) < 0.9, 0, rng.integers(1, N_USERS, n)).astype(np.int32)
    items = rng.integers(0, N_ITEMS, n).astype(np.int32)
    ts = np.sort(rng.integers(0, 10**7, n)).astype(np.int64)
    res, state, negs = w.run(users, items, ts, None, lanes=4, steps=25, window=1000)
    ref_state, scores, ranks, losses = w.reference(negs, users, items, ts, None)
    assert_state_close(state, ref_state, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(res.scores, scores, rtol=1e-4, atol=1e-4)
    assert (res.ranks != ranks).mean() < 0.002  # float32 vs float64 may flip a near-tie


def test_every_event_one_user(world):
    n = 60
    users = np.full(n, 4, np.int32)
    res, state, negs = world.run(users, world.items[:n], world.ts[:n], world.weight[:n], lanes=8, steps=5)
    ref_state, scores, ranks, losses = world.reference(negs, users, world.items[:n], world.ts[:n], world.weight[:n])
    assert_state_close(state, ref_state)
    assert_outputs_close(res, scores, ranks, losses)
    assert state.count[4] == n and state.count.sum() == n


def test_closed_form_gradient_equals_gradient_tape(world):
    """∇u in closed form == the tape's, with extra score terms that do not depend on u (β h) and
    a shifted query (u + c W): the score stays linear in u with coefficient v / τ."""
    import tensorflow as tf

    from dyembed.replay import rules

    rng = np.random.default_rng(8)
    V = tf.constant(world.params.V, tf.float32)
    b = tf.constant(world.params.b, tf.float32)
    tau = tf.constant(world.params.tau, tf.float32)
    logq = tf.constant(world.params.logq if world.params.logq is not None else np.zeros(N_ITEMS), tf.float32)
    extra = tf.constant(rng.standard_normal((5, N_ITEMS)).astype(np.float32))  # stands for β h
    shift = tf.constant(rng.standard_normal((5, DIM)).astype(np.float32))  # stands for c W
    it = tf.constant(rng.integers(0, N_ITEMS, 5).astype(np.int32))
    neg = tf.constant(np.r_[it.numpy()[:1], rng.integers(0, N_ITEMS, NEG - 1)].astype(np.int32))  # incl. a hit
    u = tf.Variable(rng.standard_normal((5, DIM)).astype(np.float32))
    mm = lambda a, c, transpose_b=False: tf.matmul(a, c, transpose_b=transpose_b)  # noqa: E731
    with tf.GradientTape() as tape:
        scores = tf.matmul(u + shift, V, transpose_b=True) / tau + b + extra
        s_t = tf.gather(scores, it[:, None], batch_dims=1)[:, 0]
        if world.spec.loss == "full":
            loss, grad = rules.full_loss_grad_tf(tf, scores, it, V, tau, mm)
        else:
            loss, grad = rules.sampled_loss_grad_tf(tf, s_t, tf.gather(scores, neg, axis=1), tf.gather(V, it),
                                                    tf.gather(V, neg), it, neg, tf.gather(logq, it),
                                                    tf.gather(logq, neg), tau, mm)
        total = tf.reduce_sum(loss)
    taped = tape.gradient(total, u)
    np.testing.assert_allclose(grad.numpy(), taped.numpy(), rtol=1e-4, atol=1e-6)
    # and the float64 reference's closed form agrees
    for row in range(5):
        s = scores.numpy()[row].astype(np.float64)
        g_ref, l_ref = event_gradient(s, int(it[row]), world.params, world.spec,
                                      None if world.spec.loss == "full" else neg.numpy())
        np.testing.assert_allclose(grad.numpy()[row], g_ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(loss.numpy()[row], l_ref, rtol=1e-4, atol=1e-5)


def test_state_save_load_round_trip(world, tmp_path):
    _, state, _ = world.run()
    roles = np.zeros(len(world.users), np.int8)
    save_state(tmp_path, users=state, theta=world.model.to_theta().arrays(), snapshot=(state, roles),
               manifest={"watermark": {"rows": 500, "last_ts": int(world.ts[-1])}, "eval": {"rows": 500}},
               config_toml="[model]\n")
    manifest, theta, loaded, roles_back = load_state(tmp_path)
    assert_state_close(loaded, state, rtol=0, atol=0)
    for k, v in world.model.to_theta().arrays().items():
        assert np.array_equal(theta[k], v)
    assert roles_back is None
    _, _, snap, roles_back = load_state(tmp_path, view="eval")
    assert_state_close(snap, state, rtol=0, atol=0)
    assert np.array_equal(roles_back, roles)
    assert manifest["watermark"]["rows"] == 500 and {"U.npy", "eval/U.npy", "eval/roles.npy"} <= set(manifest["files"])
    # a second save keeps the first as state.prev; a corrupted file is refused
    save_state(tmp_path, users=state, theta=theta, manifest={"watermark": {"rows": 500, "last_ts": 0}}, config_toml="")
    assert (tmp_path / "state.prev" / "manifest.json").is_file()
    with pytest.raises(StateError, match="cannot be evaluated"):
        load_state(tmp_path, view="eval")
    with open(tmp_path / "state" / "U.npy", "r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(StateError, match="checksum"):
        load_state(tmp_path)


def test_mixed_precision_stays_close_to_the_reference():
    """runtime.mixed_precision: bfloat16 matmuls on CPU; states within bfloat16 rounding."""
    from dyembed.replay.engine import Engine

    w = _WORLDS.get(("sgd", "full", "plain")) or _WORLDS.setdefault(("sgd", "full", "plain"), World("sgd", "full"))
    engine = Engine(w.model, w.spec, w.state0, lr=0.0, mixed_precision=True)
    n = 150
    res = engine.replay(w.users[:n], w.items[:n], w.ts[:n], w.weight[:n], ranks=True, lanes=3, steps=7)
    ref_state, scores, _, _ = w.reference(None, w.users[:n], w.items[:n], w.ts[:n], w.weight[:n], exclude=None)
    np.testing.assert_allclose(engine.get_state().U, ref_state.U, rtol=0.05, atol=0.02)
    np.testing.assert_allclose(res.scores, scores, rtol=0.05, atol=0.05)
