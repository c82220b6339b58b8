"""dyembed.replay.api: prequential ranks against brute force, masks, top-k, static fit, loading."""

from __future__ import annotations

import numpy as np
import pytest

from dyembed.config import Config
from dyembed.errors import StateError
from dyembed.replay.api import Trained, fit_static_users, load_trained, replay_ranks, seen_items
from dyembed.replay.model import init_theta
from dyembed.replay.spec import RuleSpec
from dyembed.replay.state import UserState
from replay_world import features, random_events, random_theta

N_USERS, N_ITEMS = 8, 50


@pytest.fixture(scope="module")
def trained() -> Trained:
    cfg = Config()
    cfg.model.dim = 6
    cfg.model.rule = "adam"
    X = features(N_ITEMS, 10, seed=3)
    users, items, ts = random_events(300, N_USERS, N_ITEMS, seed=4)
    theta = random_theta(X, cfg.model, items, seed=5)
    X[7] = X[3]  # items 3 and 7 tie exactly (same features, residual and bias)
    theta.E[7] = theta.E[3]
    theta.b[7] = theta.b[3]
    spec = RuleSpec.from_config(cfg.model)
    state = UserState.fresh(N_USERS, 6, spec.n_slots, u0=theta.u0)
    state.U += np.random.default_rng(6).standard_normal(state.U.shape).astype(np.float32)
    return Trained(workdir=None, config=cfg, manifest={}, theta=theta, state=state, split=np.zeros(0, np.int8), features=X)


def brute_ranks(trained: Trained, U: np.ndarray, users, items, seen) -> np.ndarray:
    V, b, tau = trained.item_matrix().astype(np.float64), trained.item_bias().astype(np.float64), trained.temperature
    ranks = []
    for u, j in zip(users, items):
        s = V @ U[u].astype(np.float64) / tau + b
        masked = np.zeros(N_ITEMS, bool)
        if seen is not None:
            masked[seen.items_of(u)] = True
        masked[j] = False
        others = np.ones(N_ITEMS, bool)
        others[j] = False
        ranks.append(1 + int(((s >= s[j]) & others & ~masked).sum()))
    return np.array(ranks)


def test_frozen_ranks_match_brute_force_with_masks_and_ties(trained):
    users, items, ts = random_events(200, N_USERS, N_ITEMS, seed=9)
    items[:20] = 3  # targets with an exact tie (item 7) count the tie against themselves
    seen = seen_items(N_USERS, users[:100], items[:100])
    before = trained.state.copy()
    out = replay_ranks(trained, users, items, ts, update=False, exclude=seen, topk=5)
    assert out.state is trained.state
    np.testing.assert_array_equal(trained.state.U, before.U)
    want = brute_ranks(trained, trained.state.U, users, items, seen)
    np.testing.assert_array_equal(out.ranks, want)
    assert out.ranks.dtype == np.int64 and out.scores_of_target.dtype == np.float32
    # top-k: the best non-masked items in order (the target itself is never masked)
    V, b = trained.item_matrix(), trained.item_bias()
    for k in (0, 57, 199):
        u = users[k]
        s = V @ trained.state.U[u] / trained.temperature + b
        masked = np.zeros(N_ITEMS, bool)
        masked[seen.items_of(u)] = True
        masked[items[k]] = False
        s[masked] = -np.inf
        assert set(out.topk_items[k].tolist()) == set(np.argsort(-s)[:5].tolist())


def test_event_seen_masks_earlier_events_of_the_stream_too(trained):
    """EventSeen: each event's mask is its user's history plus the user's earlier ranked events."""
    from dyembed.replay.seen import seen_before_events

    users, items, ts = random_events(200, N_USERS, N_ITEMS, seed=11)
    history = seen_items(N_USERS, users[:60], items[:60])
    seen = seen_before_events(N_USERS, users[60:], items[60:], history)
    out = replay_ranks(trained, users[60:], items[60:], ts[60:], update=False, exclude=seen)
    V, b = trained.item_matrix().astype(np.float64), trained.item_bias().astype(np.float64)
    for k, (u, j) in enumerate(zip(users[60:], items[60:])):
        s = V @ trained.state.U[u].astype(np.float64) / trained.temperature + b
        before = set(items[:60][users[:60] == u].tolist()) | set(items[60:60 + k][users[60:60 + k] == u].tolist())
        masked = np.isin(np.arange(N_ITEMS), list(before - {j}))
        others = np.arange(N_ITEMS) != j
        assert out.ranks[k] == 1 + int(((s >= s[j]) & others & ~masked).sum()), k


def test_update_scores_before_the_step_and_returns_new_state(trained):
    users, items, ts = random_events(120, N_USERS, N_ITEMS, seed=10)
    out = replay_ranks(trained, users, items, ts, update=True)
    # the first event of each user is scored with the trained state (no decay configured)
    first = {}
    for k, u in enumerate(users):
        first.setdefault(int(u), k)
    rows = np.array(sorted(first.values()))
    want = brute_ranks(trained, trained.state.U, users[rows], items[rows], None)
    np.testing.assert_array_equal(out.ranks[rows], want)
    assert out.state is not trained.state
    assert out.state.count.sum() == trained.state.count.sum() + len(users)
    # continuing from the returned state == one pass
    a = replay_ranks(trained, users[:50], items[:50], ts[:50], update=True)
    b = replay_ranks(trained, users[50:], items[50:], ts[50:], update=True, state=a.state)
    np.testing.assert_allclose(np.r_[a.scores_of_target, b.scores_of_target], out.scores_of_target, rtol=1e-5, atol=1e-6)


def test_memory_cap_only_changes_speed(trained):
    users, items, ts = random_events(150, N_USERS, N_ITEMS, seed=11)
    full = replay_ranks(trained, users, items, ts, update=True)
    engine = trained.engine()
    engine.max_block_mb = 0  # one lane at a time
    try:
        assert engine.rank_lanes(256) == 1
        capped = replay_ranks(trained, users, items, ts, update=True)
    finally:
        engine.max_block_mb = 256
    np.testing.assert_array_equal(capped.ranks, full.ranks)
    np.testing.assert_allclose(capped.state.U, full.state.U, rtol=1e-5, atol=1e-6)


def test_unknown_user_is_an_input_error(trained):
    from dyembed.errors import InputDataError

    with pytest.raises(InputDataError, match="user_idx"):
        replay_ranks(trained, np.array([N_USERS]), np.array([0]), np.array([0]), update=False)


def test_static_fit_lowers_the_training_loss(trained):
    users, _, _ = random_events(400, N_USERS, N_ITEMS, seed=12)
    users[users == 5] = 4  # user 5 has no events: stays at the prior
    rng = np.random.default_rng(13)
    items = ((users * 6 + rng.integers(0, 5, len(users))) % N_ITEMS).astype(np.int32)  # each user likes 5 items
    U = fit_static_users(trained, users, items, epochs=40, l2=0.001, lr=0.1)
    assert U.shape == (N_USERS, 6)
    np.testing.assert_allclose(U[5], trained.prior(), rtol=0, atol=0)

    def mean_loss(vectors):
        V, b, tau = trained.item_matrix(), trained.item_bias(), trained.temperature
        s = vectors[users] @ V.T / tau + b
        s -= s.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(s).sum(axis=1)) - s[np.arange(len(items)), items]))

    prior = np.broadcast_to(trained.prior(), U.shape)
    assert mean_loss(U) < mean_loss(prior) - 0.5
    # the fit is near a stationary point of the per-user objective
    V, b, tau = trained.item_matrix().astype(np.float64), trained.item_bias(), trained.temperature
    u = 0
    rows = np.flatnonzero(users == u)
    s = V @ U[u] / tau + b
    p = np.exp(s - s.max())
    p /= p.sum()
    grad = np.mean([(V.T @ p - V[j]) / tau for j in items[rows]], axis=0) + 0.001 * (U[u] - trained.prior())
    assert np.linalg.norm(grad) < 0.05


def test_seen_items_csr():
    seen = seen_items(4, np.array([0, 0, 2, 0, 2]), np.array([5, 1, 3, 5, 3]))
    assert seen.indptr.tolist() == [0, 2, 2, 3, 3]
    assert seen.items_of(0).tolist() == [1, 5] and seen.items_of(1).tolist() == [] and seen.items_of(2).tolist() == [3]
    owner, items = seen.pairs(np.array([2, 0, 1]))
    assert owner.tolist() == [0, 1, 1] and items.tolist() == [3, 1, 5]


def test_load_trained_without_state_is_a_state_error(tmp_path):
    with pytest.raises(StateError, match="no trained state") as info:
        load_trained(tmp_path)
    assert info.value.exit_code == 4


def test_init_theta_starts_at_popularity():
    cfg = Config().model
    items = np.array([0, 0, 0, 1, 2, 2])
    theta = init_theta(features(4, 5), cfg, train_items=items)
    assert np.argsort(-theta.b).tolist()[:3] == [0, 2, 1]
    assert theta.P.shape == (5, cfg.dim) and theta.E.shape == (4, cfg.dim)


def test_a_state_with_more_users_gets_a_fresh_table(trained):
    """States of another size (e.g. after new users arrived) rebuild the table and its compiled steps."""
    bigger = trained.state.grown(N_USERS + 3, UserState.fresh(N_USERS + 3, 6, 2, u0=trained.prior()))
    users = np.array([N_USERS + 2, 1, N_USERS + 2], np.int32)
    items = np.array([4, 5, 6], np.int32)
    out = replay_ranks(trained, users, items, np.array([1, 2, 3]), update=True, state=bigger)
    assert out.state.n_users == N_USERS + 3 and out.state.count[N_USERS + 2] == 2
    np.testing.assert_array_equal(out.ranks[:2], brute_ranks(trained, bigger.U, users[:2], items[:2], None))
    back = replay_ranks(trained, users[1:2], items[1:2], np.array([2]), update=False)  # original size again
    assert back.ranks[0] == out.ranks[1]
