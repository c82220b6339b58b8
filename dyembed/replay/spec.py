"""The dynamic update rule's settings as one immutable value, shared by the TF engine and the reference.

Kept free of TensorFlow so the float64 reference (rules_reference.py) can use it on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from dyembed.config import ModelConfig
from dyembed.errors import ConfigError

RULES = ("sgd", "adagrad", "adam")
LOSSES = ("full", "sampled")
INITS = ("prior", "zero", "random")
SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class RuleSpec:
    """How one user steps on one event (see docs/model.md for the maths).

    rule        sgd | adagrad | adam (per-user slots; Adam bias correction uses the user's own step count)
    loss        full (softmax over all items) | sampled (shared negatives + log-Q correction)
    l2          weight of the pull toward the prior: g += l2 (u - u0)
    half_life   seconds; > 0: before an event, u ← u0 + 2^(-dt/half_life) (u - u0)
    clip        > 0: the gradient is rescaled to norm <= clip
    """

    rule: str = "sgd"
    loss: str = "full"
    l2: float = 0.0
    half_life: float = 0.0
    clip: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    init: str = "prior"

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ConfigError(f"config key 'model.rule' must be one of {', '.join(RULES)}; got {self.rule!r}")
        if self.loss not in LOSSES:
            raise ConfigError(f"config key 'model.loss' must be one of {', '.join(LOSSES)}; got {self.loss!r}")
        if self.init not in INITS:
            raise ConfigError(f"config key 'model.user_init' must be one of {', '.join(INITS)}; got {self.init!r}")
        for key, value in (("l2_prior", self.l2), ("decay_half_life_days", self.half_life), ("clip_norm", self.clip)):
            if value < 0:
                raise ConfigError(f"config key 'model.{key}' must be >= 0, got {value!r}")
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            raise ConfigError("config keys 'model.adam_beta1' and 'model.adam_beta2' must be in [0, 1)")
        if self.eps <= 0:
            raise ConfigError(f"config key 'model.eps' must be positive, got {self.eps!r}")

    @property
    def n_slots(self) -> int:
        """Per-user optimiser slot vectors: sgd 0, adagrad 1 (accumulator), adam 2 (m, v)."""
        return {"sgd": 0, "adagrad": 1, "adam": 2}[self.rule]

    @classmethod
    def from_config(cls, model: ModelConfig) -> "RuleSpec":
        return cls(
            rule=model.rule,
            loss=model.loss,
            l2=float(model.l2_prior),
            half_life=float(model.decay_half_life_days) * SECONDS_PER_DAY,
            clip=float(model.clip_norm),
            beta1=float(model.adam_beta1),
            beta2=float(model.adam_beta2),
            eps=float(model.eps),
            init=model.user_init,
        )
