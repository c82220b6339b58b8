"""Global parameters θ of the dynamic user model, as TensorFlow variables.

Item vectors:  v_j = x_j P + e_j          (x_j: frozen, L2-normalised LM features of item j)
Scores:        s_ij = u_i · v_j / τ + b_j
θ = (P [D,d], E [n_items,d] optional ID residual, b [n_items] optional item bias,
     log τ (learned when model.learn_temperature), log α (scalar, or [d] with model.per_dim_step),
     u0 [d] the user prior).
τ and α are stored as logs so they stay positive under gradient steps.
"""

from __future__ import annotations

import math

import numpy as np

from dyembed.config import ModelConfig
from dyembed.envcheck import import_tensorflow
from dyembed.errors import ConfigError, StateError

THETA_NAMES = ("P", "E", "b", "log_tau", "log_alpha", "u0", "logq")


def popularity_bias(item_idx: np.ndarray, n_items: int) -> np.ndarray:
    """log((c_j + 1) / Σ(c + 1)): the MostPop scores, a good starting point for b."""
    counts = np.bincount(np.asarray(item_idx, np.int64), minlength=n_items)[:n_items].astype(np.float64) + 1.0
    return np.log(counts / counts.sum()).astype(np.float32)


def proposal_logq(item_idx: np.ndarray, n_items: int, *, kind: str = "popularity", power: float = 0.75) -> np.ndarray:
    """log Q(j) of the negative sampler: uniform, or (c_j + 1)^power normalised."""
    if kind == "uniform":
        return np.full(n_items, -math.log(n_items), np.float32)
    counts = np.bincount(np.asarray(item_idx, np.int64), minlength=n_items)[:n_items].astype(np.float64) + 1.0
    weights = counts**power
    return np.log(weights / weights.sum()).astype(np.float32)


def init_theta(features: np.ndarray, cfg: ModelConfig, *, seed: int = 0, train_items: np.ndarray | None = None,
               neg_kind: str = "popularity") -> dict[str, np.ndarray]:
    """Initial θ as numpy arrays: P ~ N(0, 1/d) (so ||x P|| ≈ 1), E = 0, b = log popularity, u0 = 0."""
    n_items, feature_dim = features.shape
    d = cfg.dim
    if d < 1:
        raise ConfigError(f"config key 'model.dim' must be at least 1, got {d}")
    if cfg.step_size <= 0 or cfg.temperature <= 0:
        raise ConfigError("config keys 'model.step_size' and 'model.temperature' must be positive")
    rng = np.random.default_rng(seed)
    theta = {
        "P": (rng.standard_normal((feature_dim, d)) / math.sqrt(d)).astype(np.float32),
        "b": popularity_bias(train_items, n_items) if (cfg.item_bias and train_items is not None and len(train_items))
        else np.zeros(n_items, np.float32),
        "log_tau": np.array(math.log(cfg.temperature), np.float32),
        "log_alpha": np.full((d,) if cfg.per_dim_step else (), math.log(cfg.step_size), np.float32),
        "u0": np.zeros(d, np.float32),
    }
    if cfg.item_residual:
        theta["E"] = np.zeros((n_items, d), np.float32)
    if cfg.loss == "sampled":
        items = train_items if train_items is not None else np.zeros(0, np.int64)
        theta["logq"] = proposal_logq(items, n_items, kind=neg_kind, power=cfg.neg_power)
    return theta


class Model:
    """θ as tf.Variables plus the frozen item features; `trainable` lists what `train` learns.

    `frozen=True` (θ never changes: the replays of `evaluate`, via api.Trained.engine) computes
    V = X P + E once and keeps only V ([n_items, d]) on the device, not X ([n_items, D]: 1.5 GB
    at 1M items × D 384) nor E; the replay then also skips the X·P matmul of every block. V is
    computed in row chunks, so the device never holds X; TensorFlow's matmul gives the same bits
    per row whatever the chunk (tests/test_catalogue_memory.py checks them). A frozen model
    cannot be trained or assigned.
    """

    FROZEN_CHUNK_ROWS = 65_536  # rows of X multiplied at a time when building a frozen V (~100 MB at D 384)

    def __init__(self, features: np.ndarray, theta: dict[str, np.ndarray], cfg: ModelConfig, *, frozen: bool = False):
        tf = import_tensorflow()
        self.tf = tf
        self.cfg = cfg
        features = np.asarray(features, np.float32)
        n_items, feature_dim = features.shape
        d = cfg.dim
        expected = {"P": (feature_dim, d), "b": (n_items,), "u0": (d,), "log_tau": (),
                    "log_alpha": (d,) if cfg.per_dim_step else (), "E": (n_items, d), "logq": (n_items,)}
        for name, array in theta.items():
            if name in expected and tuple(np.shape(array)) != expected[name]:
                raise StateError(f"θ '{name}' has shape {tuple(np.shape(array))}, expected {expected[name]} "
                                 f"(item features or model.dim changed since training?)")
        if cfg.item_residual and "E" not in theta:
            raise StateError("θ has no item residual 'E' but model.item_residual is true")
        if cfg.loss == "sampled" and "logq" not in theta:
            raise StateError("θ has no sampler 'logq' but model.loss is sampled")
        self.n_items, self.feature_dim, self.dim = n_items, feature_dim, d
        self.frozen = frozen
        self.P = tf.Variable(theta["P"], name="P")
        if frozen:
            self.X = self.E = None
            self._theta = theta  # the caller's arrays (to_numpy), no copy
            self._V = self._frozen_item_matrix(features, theta.get("E") if cfg.item_residual else None)
        else:
            self.X = tf.constant(features)
            self.E = tf.Variable(theta["E"], name="E") if cfg.item_residual else None
            self._V = None
        self.b = tf.Variable(np.asarray(theta["b"], np.float32), name="b")
        self.log_tau = tf.Variable(np.asarray(theta["log_tau"], np.float32), name="log_tau")
        self.log_alpha = tf.Variable(np.asarray(theta["log_alpha"], np.float32), name="log_alpha")
        self.u0 = tf.Variable(np.asarray(theta["u0"], np.float32), name="u0")
        self.logq = tf.constant(np.asarray(theta["logq"], np.float32)) if "logq" in theta else None

    def _frozen_item_matrix(self, features: np.ndarray, E: np.ndarray | None):
        """V = X P (+ E) as one constant tensor, X sent to the device a chunk of rows at a time."""
        tf = self.tf
        parts = []
        for lo in range(0, self.n_items, self.FROZEN_CHUNK_ROWS):
            hi = min(self.n_items, lo + self.FROZEN_CHUNK_ROWS)
            part = tf.matmul(tf.constant(features[lo:hi]), self.P)
            parts.append(part + tf.constant(np.asarray(E[lo:hi], np.float32)) if E is not None else part)
        return parts[0] if len(parts) == 1 else tf.concat(parts, axis=0)

    @property
    def trainable(self) -> list:
        """The variables `train` updates (b only with model.item_bias, τ only with model.learn_temperature)."""
        if self.frozen:
            raise ValueError("a frozen Model (θ fixed, V precomputed) cannot be trained")
        out = [self.P, self.log_alpha, self.u0]
        if self.E is not None:
            out.append(self.E)
        if self.cfg.item_bias:
            out.append(self.b)
        if self.cfg.learn_temperature:
            out.append(self.log_tau)
        return out

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

    def to_numpy(self) -> dict[str, np.ndarray]:
        out = {"P": self.P.numpy(), "b": self.b.numpy(), "log_tau": self.log_tau.numpy(),
               "log_alpha": self.log_alpha.numpy(), "u0": self.u0.numpy()}
        if self.E is not None:
            out["E"] = self.E.numpy()
        elif self.frozen and "E" in self._theta and self.cfg.item_residual:
            out["E"] = np.array(self._theta["E"], np.float32)
        if self.logq is not None:
            out["logq"] = self.logq.numpy()
        return out

    def assign(self, theta: dict[str, np.ndarray]) -> None:
        """Load θ values (same shapes) into the variables, e.g. the best epoch's θ."""
        if self.frozen:
            raise ValueError("a frozen Model (θ fixed, V precomputed) cannot be assigned a new θ")
        for name in ("P", "E", "b", "log_tau", "log_alpha", "u0"):
            var = getattr(self, name)
            if var is not None and name in theta:
                var.assign(theta[name])
