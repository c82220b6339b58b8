"""What `dyembed evaluate` and `recommend` call: a trained model, prequential ranking, baselines.

    trained = load_trained(workdir)
    out = replay_ranks(trained, users, items, ts, update=True, exclude=seen_items(n, u, i))
    out.ranks[k] = 1 + #{non-masked items j != target with s_j >= s_target}   (pessimistic ties)

Every event is scored with its user's state *before* the event (after the time decay to the
event's time when `update`), then, if `update`, the user takes its dynamic step (θ frozen).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dyembed.config import Config, RuntimeConfig, apply_mapping
from dyembed.replay.seen import SeenItems, seen_items
from dyembed.replay.spec import RuleSpec
from dyembed.replay.state import UserState, load_state, state_dir
from dyembed.replay.theta import Theta

__all__ = ["Trained", "RankOutput", "SeenItems", "seen_items", "load_trained", "replay_ranks", "fit_static_users"]


@dataclass
class RankOutput:
    ranks: np.ndarray  # int64[n]
    topk_items: np.ndarray | None  # int32[n, topk]
    scores_of_target: np.ndarray  # float32[n]
    state: UserState  # the state after the events (the input state itself when update=False)


@dataclass
class Trained:
    """A trained model loaded from `WORKDIR/state/`."""

    workdir: Path
    config: Config
    manifest: dict[str, Any]
    theta: Theta
    state: UserState  # the serving users, or the evaluation snapshot (load_trained's `view`)
    split: np.ndarray | None  # eval view: int8 role per event row it was split on (0 train, 1 validation, 2 test)
    features: np.ndarray | None  # [n_items, D]; None after release_features()
    _engine: Any = field(default=None, repr=False)
    _V: np.ndarray | None = field(default=None, repr=False)

    @property
    def spec(self) -> RuleSpec:
        return RuleSpec.from_config(self.config.model)

    @property
    def temperature(self) -> float:
        return self.theta.temperature

    @property
    def n_users(self) -> int:
        return self.state.n_users

    @property
    def n_items(self) -> int:
        return self.theta.n_items

    def item_matrix(self) -> np.ndarray:
        """V = X P + E, float32 [n_items, d] (numpy; cached)."""
        if self._V is None:
            features = self._features("item_matrix()")
            V = np.asarray(features, np.float32) @ self.theta.P  # no float32 copy of X (1.5 GB at 1M items)
            if self.theta.E is not None and self.config.model.item_residual:
                V += self.theta.E
            self._V = V.astype(np.float32, copy=False)
        return self._V

    def release_features(self) -> None:
        """Free the [n_items, D] item features (1.5 GB at 1M items × D 384) once what needs them
        is built: item_matrix() and engine() keep working when they were called before (the
        engine holds V, not X); called for the first time afterwards they raise RuntimeError."""
        self.features = None

    def _features(self, what: str) -> np.ndarray:
        if self.features is None:
            raise RuntimeError(f"Trained.{what} needs the item features, released by release_features(); "
                               "build it before releasing")
        return self.features

    def item_bias(self) -> np.ndarray:
        return self.theta.b.astype(np.float32)

    def prior(self) -> np.ndarray:
        return self.theta.u0.astype(np.float32)

    def step_size(self) -> np.ndarray:
        return self.theta.alpha()

    def engine(self):
        """The (cached) replay engine with θ frozen; its user table is reset per call."""
        if self._engine is None:
            from dyembed.replay.engine import Engine
            from dyembed.replay.model import Model
            from dyembed.replay.runtime import block_budget_mb, configure_runtime, current_device

            configure_runtime(self.config.runtime)  # TensorFlow starts here, not in load_trained

            # θ is frozen here: the model keeps V = X P + E only (not X), computed once
            model = Model(self._features("engine()"), self.theta, self.config.model, frozen=True)
            rt = self.config.runtime
            self._engine = Engine(model, self.spec, self.state, lr=0.0, num_negatives=self.config.model.num_negatives,
                                  mixed_precision=rt.mixed_precision, jit=rt.jit,
                                  max_block_mb=block_budget_mb(rt.max_block_mb, current_device()))
        return self._engine


def load_trained(workdir: str | Path, view: str = "serving", runtime: RuntimeConfig | None = None) -> Trained:
    """Load θ, a user state and the training config from `WORKDIR/state/` (checksums verified),
    after checking that the work dir still holds what that state consumed (dyembed/lineage.py).

    `runtime` (device, threads, memory caps) is the running command's, never the saved state's:
    a state trained with runtime.device=gpu serves on a CPU machine (None: the defaults). Loading
    imports no TensorFlow; engine() and fit_static_users() configure it when first needed.

    view="serving" (recommend): the users after every event of the watermark; `split` is None.
    view="eval" (evaluate): the evaluation snapshot, the users at the split boundary, and
    `split`, the role of every row it was split on. StateError (exit 4) naming what differs."""
    import tomllib

    from dyembed import lineage
    from dyembed.errors import StateError
    from dyembed.replay.io import load_features

    workdir = Path(workdir)
    manifest, theta_arrays, users, roles = load_state(workdir, view=view)
    theta = Theta.from_arrays(theta_arrays)
    directory = state_dir(workdir)
    cfg = Config()
    apply_mapping(cfg, tomllib.loads((directory / "config.toml").read_text(encoding="utf-8")), "state/config.toml")
    cfg.runtime = dataclasses.replace(runtime) if runtime is not None else RuntimeConfig()
    n_items = theta.n_items
    vectors = lineage.vector_digest(marks=[n_items])
    features = load_features(workdir, digest=vectors)
    record = manifest.get("lineage") or {}
    marks = lineage.marks(record)
    marks.pop("vector_marks")
    if view == "eval":
        marks["user_marks"] += lineage.marks((manifest["eval"].get("lineage") or {}))["user_marks"]
        sc = lineage.scan(workdir, vectors=vectors, history_roles=roles, **{k: v for k, v in marks.items() if k != "event_marks"})
        # θ's item side is the serving lineage's; the users and events the snapshot's own
        lineage.require(workdir, directory, {**record, "events": None, "users": None}, sc)
        lineage.require_eval(workdir, directory, manifest["eval"].get("lineage") or {}, sc)
    else:
        lineage.require(workdir, directory, record, lineage.scan(workdir, vectors=vectors, **marks))
    if features.shape[0] != n_items:
        raise StateError(f"item_embeddings.parquet has {features.shape[0]} items but the state was trained with "
                         f"{n_items}; run `dyembed train --resume` to extend it")
    return Trained(workdir=workdir, config=cfg, manifest=manifest, theta=theta, state=users, split=roles, features=features)


def replay_ranks(
    trained: Trained,
    user_idx: np.ndarray,
    item_idx: np.ndarray,
    ts: np.ndarray,
    *,
    update: bool,
    exclude: SeenItems | None = None,
    topk: int = 0,
    state: UserState | None = None,
    progress: Callable[[int], None] | None = None,
    weight: np.ndarray | None = None,
) -> RankOutput:
    """Prequential ranks of `item_idx` for events in row order (see the module docstring).

    `state` defaults to the trained state; it is never modified (the updated state is returned).
    `progress(done_events)` is called after each block. Score blocks stay under runtime.max_block_mb.
    """
    state = trained.state if state is None else state
    n = len(user_idx)
    if n and (np.max(user_idx) >= state.n_users or np.min(user_idx) < 0):
        from dyembed.errors import InputDataError

        raise InputDataError(f"user_idx outside the state's 0..{state.n_users - 1} (new users: run `dyembed train --resume`)")
    engine = trained.engine()
    engine.set_state(state)
    tcfg = trained.config.train
    use_w = weight if trained.config.model.use_weights else None
    result = engine.replay(user_idx, item_idx, ts, use_w, update=update, ranks=True, exclude=exclude, topk=topk,
                           lanes=max(tcfg.batch_size, 256), steps=64, window=tcfg.window, progress=progress,
                           rng=np.random.default_rng(tcfg.seed))
    new_state = engine.get_state() if update else state
    return RankOutput(ranks=result.ranks, topk_items=result.topk, scores_of_target=result.scores, state=new_state)


def fit_static_users(trained: Trained, user_idx: np.ndarray, item_idx: np.ndarray, *, epochs: int = 30,
                     l2: float = 0.01, lr: float = 0.05, batch_size: int = 2048, seed: int = 0) -> np.ndarray:
    """The `static` baseline: one free vector per user, fitted offline, never updated per event.

    Minimises, per user i with events E_i,  (1/|E_i|) Σ_{j ∈ E_i} CE(softmax(V u_i / τ + b), j)
    + (l2/2) ||u_i - u0||², with the trained item side (V, b, τ) fixed; minibatch Adam with
    per-user moments (lazy: only rows in the batch move). Users without events stay at u0.
    """
    from dyembed.envcheck import import_tensorflow
    from dyembed.replay.runtime import configure_runtime

    configure_runtime(trained.config.runtime)
    tf = import_tensorflow()
    V = tf.constant(trained.item_matrix())
    b = tf.constant(trained.item_bias())
    tau = trained.temperature
    u0 = trained.prior()
    n_users, d = trained.n_users, V.shape[1]
    user_idx = np.asarray(user_idx, np.int32)
    item_idx = np.asarray(item_idx, np.int32)
    counts = np.bincount(user_idx, minlength=n_users).astype(np.float32)
    U = tf.Variable(np.broadcast_to(u0, (n_users, d)).copy())
    M = tf.Variable(tf.zeros([n_users, d]))
    S = tf.Variable(tf.zeros([n_users, d]))
    steps = tf.Variable(tf.zeros([n_users]))
    inv_count = tf.constant(1.0 / np.maximum(counts, 1.0))
    u0_t = tf.constant(u0)
    lanes = max(1, min(batch_size, int(256 * 2**20 // max(1, V.shape[0] * 16))))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32)])
    def step(users, items):
        uniq, pos = tf.unique(users)
        u = tf.gather(U, users)
        s = tf.matmul(u, V, transpose_b=True) / tau + b
        p = tf.nn.softmax(s)
        g = (tf.matmul(p, V) - tf.gather(V, items)) / tau * tf.gather(inv_count, users)[:, None]
        g = tf.math.unsorted_segment_sum(g, pos, tf.shape(uniq)[0])
        u_rows = tf.gather(U, uniq)
        g += l2 * (u_rows - u0_t)
        k = tf.gather(steps, uniq) + 1.0
        m = 0.9 * tf.gather(M, uniq) + 0.1 * g
        v = 0.999 * tf.gather(S, uniq) + 0.001 * g * g
        m_hat = m / (1 - tf.pow(0.9, k))[:, None]
        v_hat = v / (1 - tf.pow(0.999, k))[:, None]
        idx = uniq[:, None]
        U.scatter_nd_update(idx, u_rows - lr * m_hat / (tf.sqrt(v_hat) + 1e-8))
        M.scatter_nd_update(idx, m)
        S.scatter_nd_update(idx, v)
        steps.scatter_nd_update(idx, k)

    rng = np.random.default_rng(seed)
    n = len(user_idx)
    for _ in range(max(0, int(epochs))):
        perm = rng.permutation(n)
        for lo in range(0, n, lanes):
            rows = perm[lo:lo + lanes]
            step(tf.constant(user_idx[rows]), tf.constant(item_idx[rows]))
    return U.numpy()
