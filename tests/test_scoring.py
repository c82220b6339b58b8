"""recommend's numpy scores (dyembed.replay.scoring) == the float64 reference's pre-event scores."""

import numpy as np

from dyembed.config import ModelConfig
from dyembed.replay.rules_reference import ReferenceParams, event_scores, reference_replay
from dyembed.replay.scoring import score_users
from dyembed.replay.spec import RuleSpec
from dyembed.replay.state import UserState
from replay_world import features, random_events, random_theta


def test_serving_scores_equal_the_reference_for_every_term():
    cfg = ModelConfig(dim=5, history=4, context=True, repeat=True, rule="adagrad")
    X = features(20, 7, seed=1)
    users, items, ts = random_events(120, 6, 20, seed=2)
    theta = random_theta(X, cfg, items, seed=3)
    spec = RuleSpec.from_config(cfg)
    params = ReferenceParams.from_theta(theta, X)
    state, *_ = reference_replay(params, spec, UserState.fresh(6, 5, 1, u0=theta.u0, history=4), users, items, ts)
    V = (X @ theta.P + theta.E).astype(np.float32)
    got = score_users(theta, V, state.U, state.recent, state.count)
    for i in range(6):
        want = event_scores(state.U[i].astype(np.float64), state.recent[i], int(state.count[i]), params)
        np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-4)
    # a user with no recent items: plain u · v / τ + b
    plain = score_users(theta, V, state.U[:1], np.full((1, 4), -1), np.zeros(1, np.int32))
    np.testing.assert_allclose(plain[0], V @ state.U[0] / theta.temperature + theta.b, rtol=1e-5, atol=1e-5)
