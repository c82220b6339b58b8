"""θ, the global parameters of the dynamic user model: one table says what each one is.

    v_j  = x_j P + e_j                                   item vector (x_j: frozen LM features)
    c    = Σ_m γc^m v_(m) / Σ_m γc^m                      context: decayed mean of the user's recent items
    h_j  = Σ_m γr^m [item_(m) = j]                        repeat: decayed count of item j among them
    s_j  = (u + c W) · v_j / τ + b_j + β h_j              score      ((m) = the m-th most recent item)

Every parameter is described once, in PARAMS: its shape, when it exists, whether `train` learns
it, how it starts, and whether it has one row per item (such rows are extended for items added
after training: residual 0, median bias, lowest sampler mass). `Theta` holds the values as plain
numpy arrays (the state's theta.npz), the TF variables live in model.Model. Positive or bounded
scalars are stored unconstrained: τ, α as logs, the decays γ as logits, so gradient steps keep
them in range.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dyembed.config import ModelConfig
from dyembed.errors import ConfigError, StateError


@dataclass(frozen=True)
class Dims:
    n_items: int
    feature_dim: int
    dim: int


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


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


@dataclass(frozen=True)
class InitContext:
    """What initial values may depend on."""

    cfg: ModelConfig
    dims: Dims
    rng: np.random.Generator
    train_items: np.ndarray  # item_idx of the training rows (popularity)


@dataclass(frozen=True)
class ParamSpec:
    name: str
    doc: str
    shape: Callable[[Dims, ModelConfig], tuple[int, ...]]
    init: Callable[[InitContext], np.ndarray]
    enabled: Callable[[ModelConfig], bool] = lambda cfg: True
    trainable: Callable[[ModelConfig], bool] = lambda cfg: True
    per_item: bool = False
    # value of a new item's row (extend_items, as_new_items): "zero", "median" or "min" of the existing rows
    new_item: str = "zero"


def _f32(x) -> np.ndarray:
    return np.asarray(x, np.float32)


PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("P", "projection of the text features [D, d]; N(0, 1/d) so ||x P|| ≈ 1",
              shape=lambda k, c: (k.feature_dim, k.dim),
              init=lambda i: _f32(i.rng.standard_normal((i.dims.feature_dim, i.dims.dim)) / math.sqrt(i.dims.dim))),
    ParamSpec("E", "per-item ID residual [n_items, d] (model.item_residual)",
              shape=lambda k, c: (k.n_items, k.dim), init=lambda i: np.zeros((i.dims.n_items, i.dims.dim), np.float32),
              enabled=lambda c: c.item_residual, per_item=True, new_item="zero"),
    ParamSpec("b", "item bias [n_items], starts at log popularity of the training rows (model.item_bias)",
              shape=lambda k, c: (k.n_items,),
              init=lambda i: popularity_bias(i.train_items, i.dims.n_items) if i.cfg.item_bias and len(i.train_items)
              else np.zeros(i.dims.n_items, np.float32),
              trainable=lambda c: c.item_bias, per_item=True, new_item="median"),
    ParamSpec("log_tau", "log temperature (learned with model.learn_temperature)",
              shape=lambda k, c: (), init=lambda i: _f32(math.log(i.cfg.temperature)),
              trainable=lambda c: c.learn_temperature),
    ParamSpec("log_alpha", "log of the users' step size, scalar or per dimension (model.per_dim_step)",
              shape=lambda k, c: (k.dim,) if c.per_dim_step else (),
              init=lambda i: np.full((i.dims.dim,) if i.cfg.per_dim_step else (), math.log(i.cfg.step_size), np.float32)),
    ParamSpec("u0", "the user prior [d]: where users start, what decay and the L2 pull go toward",
              shape=lambda k, c: (k.dim,), init=lambda i: np.zeros(i.dims.dim, np.float32)),
    ParamSpec("logq", "log Q, the negative sampler (sampled loss only; fixed)",
              shape=lambda k, c: (k.n_items,),
              init=lambda i: proposal_logq(i.train_items, i.dims.n_items, kind=i.cfg.neg_sampling, power=i.cfg.neg_power),
              enabled=lambda c: c.loss == "sampled", trainable=lambda c: False, per_item=True, new_item="min"),
    ParamSpec("W", "context transition [d, d]: the recent items' mean c moves the query by c W (model.context)",
              shape=lambda k, c: (k.dim, k.dim), init=lambda i: np.zeros((i.dims.dim, i.dims.dim), np.float32),
              enabled=lambda c: c.context),
    ParamSpec("logit_context_decay", "logit of γc, the per-event decay of the context mean (model.context)",
              shape=lambda k, c: (), init=lambda i: _f32(_logit(i.cfg.context_decay)), enabled=lambda c: c.context),
    ParamSpec("beta", "weight β of the decayed repeat count h_j in the score (model.repeat)",
              shape=lambda k, c: (), init=lambda i: _f32(i.cfg.repeat_init), enabled=lambda c: c.repeat),
    ParamSpec("logit_repeat_decay", "logit of γr, the per-event decay of the repeat count (model.repeat)",
              shape=lambda k, c: (), init=lambda i: _f32(_logit(i.cfg.repeat_decay)), enabled=lambda c: c.repeat),
)
SPECS: dict[str, ParamSpec] = {p.name: p for p in PARAMS}
# the scalars that shape the users' dynamics rather than the item side: `train.scalar_lr` applies to them
DYNAMICS_SCALARS = ("beta", "logit_repeat_decay", "logit_context_decay")


def check_model_config(cfg: ModelConfig) -> None:
    """The model keys θ's shapes and starting values depend on."""
    if cfg.dim < 1:
        raise ConfigError(f"config key 'model.dim' must be at least 1, got {cfg.dim}")
    if not (cfg.step_size > 0 and math.isfinite(cfg.step_size)) or not (cfg.temperature > 0 and math.isfinite(cfg.temperature)):
        raise ConfigError("config keys 'model.step_size' and 'model.temperature' must be positive and finite")
    if (cfg.repeat or cfg.context) and cfg.history < 1:
        raise ConfigError("config keys 'model.repeat' and 'model.context' need the user's recent items: "
                          "set 'model.history' (items kept per user) to at least 1")
    for key in ("repeat_decay", "context_decay"):
        value = getattr(cfg, key)
        if not 0.0 < value < 1.0:
            raise ConfigError(f"config key 'model.{key}' must be strictly between 0 and 1, got {value!r}")
    if not math.isfinite(cfg.repeat_init):
        raise ConfigError(f"config key 'model.repeat_init' must be finite, got {cfg.repeat_init!r}")


@dataclass
class Theta:
    """θ's values as numpy arrays; absent (disabled) parameters are None."""

    P: np.ndarray
    b: np.ndarray
    log_tau: np.ndarray
    log_alpha: np.ndarray
    u0: np.ndarray
    E: np.ndarray | None = None
    logq: np.ndarray | None = None
    W: np.ndarray | None = None
    logit_context_decay: np.ndarray | None = None
    beta: np.ndarray | None = None
    logit_repeat_decay: np.ndarray | None = None

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def init(cls, dims: Dims, cfg: ModelConfig, *, seed: int = 0, train_items: np.ndarray | None = None) -> "Theta":
        """Starting values (see PARAMS): P random, E and W zero, b log popularity, u0 zero."""
        check_model_config(cfg)
        ctx = InitContext(cfg=cfg, dims=dims, rng=np.random.default_rng(seed),
                          train_items=np.zeros(0, np.int64) if train_items is None else np.asarray(train_items))
        return cls(**{p.name: p.init(ctx) for p in PARAMS if p.enabled(cfg)})

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "Theta":
        """From theta.npz's arrays; unknown names are a corrupt (or newer) state."""
        unknown = sorted(set(arrays) - set(SPECS))
        if unknown:
            raise StateError(f"θ has unknown parameters {', '.join(unknown)} (a state written by a newer dyembed?)")
        missing = [n for n in ("P", "b", "log_tau", "log_alpha", "u0") if n not in arrays]
        if missing:
            raise StateError(f"θ lacks {', '.join(missing)}")
        return cls(**{name: np.asarray(value) for name, value in arrays.items()})

    def arrays(self) -> dict[str, np.ndarray]:
        """name → array for the parameters that exist (what theta.npz stores)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    def replace(self, **values: np.ndarray) -> "Theta":
        return dataclasses.replace(self, **values)

    # ---- facts ---------------------------------------------------------------------------------
    @property
    def n_items(self) -> int:
        return int(self.b.shape[0])

    @property
    def temperature(self) -> float:
        return float(np.exp(self.log_tau))

    def alpha(self) -> np.ndarray:
        return np.exp(self.log_alpha)

    def check(self, dims: Dims, cfg: ModelConfig) -> None:
        """Every enabled parameter is present with its shape; nothing else is (exit 4 otherwise)."""
        for p in PARAMS:
            value = getattr(self, p.name)
            if not p.enabled(cfg):
                if value is not None and p.name != "E":  # a residual may be kept though switched off
                    raise StateError(f"θ has '{p.name}' but the model config does not use it ({p.doc})")
                continue
            if value is None:
                raise StateError(f"θ has no '{p.name}' ({p.doc}) but the model config needs it")
            want = p.shape(dims, cfg)
            if tuple(np.shape(value)) != want:
                raise StateError(f"θ '{p.name}' has shape {tuple(np.shape(value))}, expected {want} "
                                 f"(item features or model settings changed since training?)")

    def extend_items(self, n_items: int) -> "Theta":
        """θ for a catalogue grown to n_items (items appended since training; text features only)."""
        old = self.n_items
        if n_items < old:
            raise StateError(f"item_embeddings.parquet has {n_items} items but the state has {old}: items were "
                             "removed; retrain")
        if n_items == old:
            return self
        extra = n_items - old
        grown = {}
        for p in PARAMS:
            value = getattr(self, p.name)
            if not p.per_item or value is None:
                continue
            grown[p.name] = np.concatenate([value, np.full((extra,) + value.shape[1:], _new_item_fill(p, value), value.dtype)])
        return self.replace(**grown)

    def as_new_items(self, untrained: np.ndarray) -> "Theta":
        """θ with the rows of items θ never trained on (mask `untrained`) reset to the new-item values,
        computed from the trained rows: such an item is scored by its text alone (residual 0) with
        the median trained bias, like an item added after training, instead of the bias that
        training pushed down for a never-positive item (model.cold_items = "text")."""
        untrained = np.asarray(untrained, bool)
        if untrained.shape != (self.n_items,):
            raise ValueError(f"untrained mask has shape {untrained.shape}, expected ({self.n_items},)")
        if not untrained.any() or untrained.all():
            return self
        reset = {}
        for p in PARAMS:
            value = getattr(self, p.name)
            if not p.per_item or value is None or p.name == "logq":  # the sampler is fixed, not learned
                continue
            value = value.copy()
            value[untrained] = _new_item_fill(p, value[~untrained])
            reset[p.name] = value
        return self.replace(**reset)


def _new_item_fill(p: ParamSpec, rows: np.ndarray) -> float:
    """The value a new item's row of per-item parameter p takes, from the existing `rows`."""
    return {"zero": 0.0, "median": float(np.median(rows)), "min": float(np.min(rows))}[p.new_item]
