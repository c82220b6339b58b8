"""Each optional model component learns the answer of a tiny world built so that only it can.

- context (model.context): items follow a fixed item → next-item transition; a user's long-run
  interest is uniform over the chain, so only the short-term context (the recent items through
  the learned W) can tell the next item.
- repeat (model.repeat): users read the items of one topic and never read an item twice. The
  user step pulls the vector towards what was just read, so unmasked, the plain model ranks the
  user's own past items first (the calibration's finding in ../shared/docs/ARCHITECTURE.md); the
  repeat term must learn β < 0 and push them down.
- cold items (model.cold_items = "text"): every topic's second half of items appears only after
  the validation boundary; a user reads one topic, so the right next items are those cold items,
  which only their text (the topic's features) can place. Trained as-is, θ pushes their bias to
  the bottom (never a positive); as new items they are scored by text and the median bias.
All are judged on train's own validation NDCG@10 (temporal split), against the same model with
the component off.
"""

from __future__ import annotations

import numpy as np

from dyembed.config import Config
from dyembed.replay.train import compute_roles, split_settings
from dyembed.split import TRAIN
from replay_world import features, write_workdir
from test_train import tiny_config


def component_config(**sets) -> Config:
    """test_train's tiny training config, a little wider and longer: the components learn scalars too."""
    return tiny_config(model__dim=16, train__epochs=8, train__scalar_lr=0.05, **sets)


def interleave(sequences: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Users' sequences on user-synchronous clocks: event k of every user at about the same time."""
    rng = np.random.default_rng(1)
    users, items, ts = [], [], []
    for u, seq in enumerate(sequences):
        for k, item in enumerate(seq):
            users.append(u)
            items.append(item)
            ts.append(1_000_000 + k * 1000 + int(rng.integers(1000)))
    order = np.argsort(np.array(ts), kind="stable")
    return (np.array(users, np.int32)[order], np.array(items, np.int32)[order], np.array(ts, np.int64)[order])


def transition_world(n_users: int = 40, per_user: int = 30, n_items: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    successor = rng.permutation(n_items)
    sequences = []
    for _ in range(n_users):
        item, seq = int(rng.integers(n_items)), []
        for _ in range(per_user):
            seq.append(item)
            item = int(successor[item])
        sequences.append(seq)
    return interleave(sequences)


def topic_world_without_repeats(n_users: int = 40, per_user: int = 16, topics: int = 6, per_topic: int = 20,
                                seed: int = 0):
    rng = np.random.default_rng(seed)
    sequences = []
    for _ in range(n_users):
        topic = int(rng.integers(topics))
        sequences.append([topic * per_topic + int(i) for i in rng.permutation(per_topic)[:per_user]])
    x = np.repeat(features(topics, 16, seed=3), per_topic, axis=0) + 0.3 * rng.standard_normal((topics * per_topic, 16))
    return interleave(sequences), (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def best_val(tmp_path, name: str, world, X: np.ndarray, **sets) -> tuple[float, dict]:
    from dyembed.replay.train import train

    users, items, ts = world
    wd = write_workdir(tmp_path / name, users, items, ts, X)
    summary = train(wd, component_config(**sets))
    theta = dict(np.load(wd / "state" / "theta.npz"))
    return summary["best_val"], theta


def test_only_the_context_learns_a_fixed_item_transition(tmp_path):
    world, X = transition_world(), features(40, 16, seed=3)
    with_context, _ = best_val(tmp_path, "context", world, X, model__history=4, model__context=True)
    without, _ = best_val(tmp_path, "plain", world, X)
    assert with_context > 0.6, with_context
    assert with_context > without + 0.3, (with_context, without)


def test_the_repeat_term_learns_to_push_down_what_the_user_already_read(tmp_path):
    world, X = topic_world_without_repeats()
    unmasked = {"evaluate__mask_seen": "off"}
    with_repeat, theta = best_val(tmp_path, "repeat", world, X, model__history=16, model__repeat=True, **unmasked)
    without, _ = best_val(tmp_path, "plain", world, X, **unmasked)
    assert float(theta["beta"]) < -0.5, theta["beta"]
    assert with_repeat > without + 0.08, (with_repeat, without)


def cold_item_world(n_users: int = 48, topics: int = 6, per_topic: int = 20, seed: int = 0):
    """Users read their topic's warm half first, then (the last ~20 % of the time) its cold half."""
    rng = np.random.default_rng(seed)
    half = per_topic // 2
    sequences = []
    for _ in range(n_users):
        topic = int(rng.integers(topics))
        warm = [topic * per_topic + int(i) for i in rng.permutation(half)]
        cold = [topic * per_topic + half + int(i) for i in rng.permutation(half)[:3]]
        sequences.append(warm + cold)
    x = np.repeat(features(topics, 16, seed=3), per_topic, axis=0) + 0.2 * rng.standard_normal((topics * per_topic, 16))
    return interleave(sequences), (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_text_scores_items_theta_never_trained_on(tmp_path):
    world, X = cold_item_world()
    sets = dict(evaluate__test_fraction=0.1, train__validation_fraction=0.12)
    as_new, theta = best_val(tmp_path, "text", world, X, model__cold_items="text", **sets)
    as_trained, theta_trained = best_val(tmp_path, "trained", world, X, **sets)
    assert as_new > as_trained + 0.2, (as_new, as_trained)
    # the saved θ holds the new-item values for every item without a train row
    users, items, ts = world
    roles = compute_roles(users, ts, split_settings(component_config(**sets)))
    untrained = np.bincount(items[roles == TRAIN], minlength=X.shape[0]) == 0
    assert 20 <= untrained.sum() <= 60
    assert np.all(theta["b"][untrained] == np.float32(np.median(theta["b"][~untrained])))
    assert np.all(theta["E"][untrained] == 0)
    assert theta_trained["b"][untrained].max() < np.median(theta_trained["b"][~untrained])


def test_as_new_items_resets_only_the_untrained_rows():
    from dyembed.replay.model import init_theta

    cfg = component_config(model__loss="sampled").model
    X = features(6, 4)
    theta = init_theta(X, cfg, train_items=np.array([0, 0, 1, 2, 3]))
    theta = theta.replace(E=np.arange(6 * cfg.dim, dtype=np.float32).reshape(6, cfg.dim),
                          b=np.array([4.0, 1.0, 2.0, 3.0, -9.0, -9.0], np.float32))
    reset = theta.as_new_items(np.array([False, False, False, False, True, True]))
    np.testing.assert_array_equal(reset.b, [4.0, 1.0, 2.0, 3.0, 2.5, 2.5])
    np.testing.assert_array_equal(reset.E[4:], 0)
    np.testing.assert_array_equal(reset.E[:4], theta.E[:4])
    np.testing.assert_array_equal(reset.logq, theta.logq)  # the sampler is not learned
    np.testing.assert_array_equal(reset.P, theta.P)
    assert theta.as_new_items(np.zeros(6, bool)) is theta
