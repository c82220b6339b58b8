"""θ as TensorFlow variables beside the frozen item features (the table of parameters: theta.py).

Item vectors:  v_j = x_j P + e_j          (x_j: frozen, L2-normalised LM features of item j)
"""

from __future__ import annotations

import math

import numpy as np

from dyembed.config import ModelConfig
from dyembed.envcheck import import_tensorflow
from dyembed.replay.theta import DYNAMICS_SCALARS, PARAMS, Dims, Theta, popularity_bias, proposal_logq

__all__ = ["Model", "init_theta", "popularity_bias", "proposal_logq"]


def init_theta(features: np.ndarray, cfg: ModelConfig, *, seed: int = 0,
               train_items: np.ndarray | None = None) -> Theta:
    """Starting θ for these item features (theta.PARAMS says how each parameter starts)."""
    n_items, feature_dim = np.shape(features)
    return Theta.init(Dims(int(n_items), int(feature_dim), cfg.dim), cfg, seed=seed, train_items=train_items)


class Model:
    """θ as tf.Variables plus the frozen item features; `trainable` lists what `train` learns.

    Every parameter of theta.PARAMS that the config enables is an attribute of the same name (a
    tf.Variable; None when disabled); `logq` is a constant. `frozen=True` (θ never changes: the
    replays of `evaluate`, via api.Trained.engine) computes the item matrix V = X P + E once and
    keeps only V ([n_items, d]) on the device, not X ([n_items, D]: 1.5 GB at 1M items × D 384)
    nor E; the replay then also skips the X·P matmul of every block. V is computed in row
    chunks, so the device never holds X; TensorFlow's matmul gives the same bits per row whatever
    the chunk (tests/test_catalogue_memory.py checks them). A frozen model cannot be trained or
    assigned.
    """

    FROZEN_CHUNK_ROWS = 65_536  # rows of X multiplied at a time when building a frozen V (~100 MB at D 384)

    def __init__(self, features: np.ndarray, theta: Theta, cfg: ModelConfig, *, frozen: bool = False):
        tf = import_tensorflow()
        self.tf = tf
        self.cfg = cfg
        features = np.asarray(features, np.float32)
        n_items, feature_dim = features.shape
        self.dims = Dims(int(n_items), int(feature_dim), cfg.dim)
        theta.check(self.dims, cfg)
        self.n_items, self.feature_dim, self.dim = self.dims.n_items, self.dims.feature_dim, cfg.dim
        self.frozen = frozen
        self._theta = theta if frozen else None  # a frozen model hands back the caller's arrays
        for p in PARAMS:
            value = getattr(theta, p.name) if p.enabled(cfg) else None
            if p.name == "logq":
                self.logq = None if value is None else tf.constant(np.asarray(value, np.float32))
            elif p.name == "E" and frozen:
                self.E = None  # folded into the frozen V
            else:
                setattr(self, p.name, None if value is None else
                        tf.Variable(np.asarray(value, np.float32), name=p.name))
        if frozen:
            self.X = None
            self._V = self._frozen_item_matrix(features, theta.E if cfg.item_residual else None)
        else:
            self.X = tf.constant(features)
            self._V = None

    def _frozen_item_matrix(self, features: np.ndarray, E: np.ndarray | None):
        """V = X P (+ E) as one constant tensor, X sent to the device a chunk of rows at a time."""
        tf = self.tf
        parts = []
        for lo in range(0, self.n_items, self.FROZEN_CHUNK_ROWS):
            hi = min(self.n_items, lo + self.FROZEN_CHUNK_ROWS)
            part = tf.matmul(tf.constant(features[lo:hi]), self.P)
            parts.append(part + tf.constant(np.asarray(E[lo:hi], np.float32)) if E is not None else part)
        return parts[0] if len(parts) == 1 else tf.concat(parts, axis=0)

    def _trainable_names(self) -> list[str]:
        return [p.name for p in PARAMS if p.enabled(self.cfg) and p.trainable(self.cfg) and getattr(self, p.name) is not None]

    @property
    def trainable(self) -> list:
        """The variables `train` updates (theta.PARAMS decides: b only with model.item_bias, τ only
        with model.learn_temperature, never the sampler)."""
        if self.frozen:
            raise ValueError("a frozen Model (θ fixed, V precomputed) cannot be trained")
        return [getattr(self, name) for name in self._trainable_names()]

    def trainable_names(self) -> list[str]:
        return self._trainable_names()

    def is_dynamics_scalar(self, name: str) -> bool:
        return name in DYNAMICS_SCALARS

    def item_matrix_tf(self):
        """V = X P (+ E), a tensor (differentiable w.r.t. θ; the precomputed constant when frozen)."""
        if self._V is not None:
            return self._V
        V = self.tf.matmul(self.X, self.P)
        return V + self.E if self.E is not None else V

    def item_matrix(self) -> np.ndarray:
        return self.item_matrix_tf().numpy()

    @property
    def temperature(self) -> float:
        return float(math.exp(float(self.log_tau.numpy())))

    def alpha(self) -> np.ndarray:
        return np.exp(self.log_alpha.numpy())

    def to_theta(self) -> Theta:
        """θ's current values as numpy arrays."""
        values = {}
        for p in PARAMS:
            var = getattr(self, p.name, None)
            if var is not None:
                values[p.name] = var.numpy()
        if self.frozen and self._theta is not None and self._theta.E is not None and self.cfg.item_residual:
            values["E"] = np.array(self._theta.E, np.float32)
        return Theta(**values)

    def assign(self, theta: Theta) -> None:
        """Load θ values (same shapes) into the variables, e.g. the best epoch's θ."""
        if self.frozen:
            raise ValueError("a frozen Model (θ fixed, V precomputed) cannot be assigned a new θ")
        for p in PARAMS:
            var = getattr(self, p.name, None)
            value = getattr(theta, p.name)
            if var is not None and value is not None and p.name != "logq":
                var.assign(value)
