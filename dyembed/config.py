"""Typed configuration with one precedence rule: defaults < TOML file < CLI flags / `--set`.

Every section is a dataclass; the field annotations are the schema. Unknown keys, wrong types,
values outside a field's `choices` and numbers outside their range (`CONSTRAINTS`, below the
dataclasses: every numeric key must be finite and in range) raise `ConfigError` naming the key,
when the config is loaded — before any heavy work. The resolved config is saved (as TOML) next to
every output, so a run can be repeated with `--config that-file`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dyembed.errors import ConfigError


def _choice(default: Any, choices: list[Any], doc: str = "") -> Any:
    return field(default=default, metadata={"choices": choices, "doc": doc})


@dataclass
class SynthConfig:
    """The synthetic drifting-interest world (`dyembed synth`, `dyembed demo`)."""

    users: int = 600
    items: int = 800
    events: int = 40_000
    topics: int = 12
    seed: int = 0
    # piecewise: a user's main topic jumps at random times; gradual: interest slides between
    # two topics; mixed: half the users each way.
    drift: str = _choice("mixed", ["piecewise", "gradual", "mixed", "none"])
    # expected number of interest changes per user over the whole time span
    drift_rate: float = 3.0
    # probability that an event follows the user's current interest (the rest is popularity noise)
    focus: float = 0.85
    popularity_exponent: float = 1.1
    start_time: int = 1_600_000_000
    span_days: float = 120.0
    malformed_rows: int = 12


@dataclass
class DataConfig:
    """Raw-log ingestion (`dyembed preprocess`); every key is documented in data/README.md."""

    format: str = _choice(
        "generic",
        ["generic", "synth", "movielens-100k", "movielens-1m", "movielens-latest", "amazon-2018", "mind", "recbole"],
    )
    # a directory holding a built-in format's files (explicit `events` / `items` paths win over it)
    input: str | None = None
    events: str | None = None
    items: str | None = None
    # generic format: column names in the events file (rating/weight/event are optional)
    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: str = "timestamp"
    rating_col: str | None = None
    weight_col: str | None = None
    event_col: str | None = None
    # generic format: the id column of the items file
    item_id_col: str = "item_id"
    # fields of the items file joined into the item text; "" = the format's own default
    # (generic and synth: "{title}. {description}")
    text_template: str = ""
    # user-generated, time-stamped text fields (movielens-latest tags) are used only when dated
    # before this time, so item features carry no information from the evaluation's test period:
    # "cut" = the temporal split's cut (evaluate.test_start, else the evaluate.test_fraction
    # quantile of the log's times, as `evaluate --protocol temporal` draws it); "all" (every tag:
    # for serving, not for evaluating); "none" (no tags); or a time (unix seconds or ISO date)
    tags_before: str = "cut"
    # unix (seconds), unix_ms, auto (s/ms/µs/ns by magnitude, per value), iso, or a strftime pattern
    time_format: str = "auto"
    # generic CSV: None = from the extension (.tsv → tab) or sniffed from the header line
    delimiter: str | None = None
    encoding: str = "utf-8"
    min_rating: float | None = None
    min_user_events: int = 1
    min_item_events: int = 1
    kcore: int = 0
    # events whose item is not in the items file are rejected (reason unknown_item)
    require_text: bool = True
    drop_duplicates: bool = True
    # keep items of the items file that no kept event refers to (cold items, indexed after the rest)
    keep_unused_items: bool = False
    # --append: events older than the stored watermark are quarantined (drop, reason out_of_order),
    # merged at their true time (keep), or moved to the watermark (clamp)
    allow_late: str = _choice("drop", ["drop", "keep", "clamp"])
    # events dated more than this many days after the run's wall-clock time are quarantined
    # (reason future_timestamp): one bad clock would otherwise move the watermark into the future
    # and make every later night's events "late". Negative (e.g. -1) switches the check off.
    max_future_days: float = 2.0
    language: str = "english"
    chunk_rows: int = 1_000_000


@dataclass
class EncodeConfig:
    """Item text features (`dyembed encode`); see docs/encoder.md."""

    # "hf:<hub id or local dir>" or "hashing"; $DYEMBED_MODEL and `--model` override it
    encoder: str = "hf:sentence-transformers/all-MiniLM-L6-v2"
    # fall back to the hashing encoder (with a one-line note) when the model cannot be loaded
    fallback_to_hashing: bool = False
    # auto = what the model's sentence-transformers files declare (modules.json, 1_Pooling), else mean
    pooling: str = _choice("auto", ["auto", "mean", "cls", "max", "last"])
    max_length: int = 128
    batch_size: int = 64
    normalize: bool = True
    dtype: str = _choice("float32", ["float32", "float16"])
    input_field: str = "text"
    # prepended to every text before tokenising (E5 wants "passage: ")
    prefix: str = ""
    hashing_dim: int = 384
    # unique texts encoded between two checkpoints (a killed run resumes from the last one)
    checkpoint_every: int = 2048
    # XLA-compile one forward per bucket shape (False: one graph with dynamic shapes)
    jit_compile: bool = False
    # fewer texts to encode than this run eagerly (tracing the graph costs more than it saves)
    compile_min_texts: int = 1000
    adapt_steps: int = 0
    adapt_lr: float = 5e-5
    adapt_batch_size: int = 32
    adapt_mask_prob: float = 0.15
    # fraction of item texts held out to measure the MLM loss before/after adaptation
    adapt_holdout: float = 0.1
    seed: int = 0


@dataclass
class ModelConfig:
    """The dynamic user model (docs/model.md has the maths)."""

    dim: int = 64
    rule: str = _choice("sgd", ["sgd", "adagrad", "adam"])
    # full softmax over all items, or sampled: shared negatives per t-batch with log-Q correction
    loss: str = _choice("full", ["full", "sampled"])
    num_negatives: int = 1024
    # negative sampler Q: item popularity^neg_power (training counts + 1), or uniform
    neg_sampling: str = _choice("popularity", ["popularity", "uniform"])
    neg_power: float = 0.75
    user_init: str = _choice("prior", ["prior", "zero", "random"])
    # standard deviation of user_init = random
    init_scale: float = 0.1
    item_residual: bool = True
    item_bias: bool = True
    temperature: float = 1.0
    learn_temperature: bool = False
    # the user step size alpha (initial value when trained; learned as log alpha)
    step_size: float = 0.05
    per_dim_step: bool = False
    l2_prior: float = 0.0
    # time decay of the user vector toward the prior; 0 switches it off
    decay_half_life_days: float = 0.0
    clip_norm: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    eps: float = 1e-8
    # scale each event's user gradient by the events.parquet `weight` column when present
    use_weights: bool = True
    # the user's last `history` items are part of its state (a ring buffer, 4 bytes per item and
    # user); the context and repeat terms read them. 0 = no recent items kept
    history: int = 0
    # repeat term: s_j += β h_j, h_j = Σ γr^age over the recent items equal to j (β, γr learned;
    # β < 0 learns to hold back what the user just consumed, β > 0 to re-offer it)
    repeat: bool = False
    repeat_init: float = 0.0
    repeat_decay: float = 0.9
    # context term: the query is u + c W, c = the γc-decayed mean of the recent items' vectors
    # (W starts at 0, W and γc learned): short-term, sequential patterns
    context: bool = False
    context_decay: float = 0.5
    # items without θ-training rows: "text" scores them like items added after training (text
    # vector x P, residual 0, median trained bias); "trained" keeps the bias training gave a
    # never-positive item (the lowest: such items are never recommended)
    cold_items: str = _choice("trained", ["trained", "text"])


@dataclass
class TrainConfig:
    """Learning the global parameters θ by replay (`dyembed train`)."""

    epochs: int = 10
    lr: float = 0.01
    # users replayed side by side while training (the lanes of a t-batch block; capped at
    # events / longest user sequence, beyond which lanes are only padding). 64 measured best on ml-100k
    batch_size: int = 64
    # events laid out into t-batches at a time: batches never reach further ahead than this
    window: int = 1_000_000
    # meta: backpropagate through the users' own update steps, truncated every `truncation` steps
    # (false: users' states are constants for θ — the unstable stop-gradient variant)
    meta: bool = True
    truncation: int = 25
    # L2 on the projection P and the item residual E
    weight_decay: float = 0.0
    # Adam learning rate of the dynamics scalars (β and the decays of model.repeat / model.context);
    # 0 = train.lr. They need larger steps than the item side to move within a few epochs
    scalar_lr: float = 0.0
    # θ's loss per block: "events" divides the block's summed loss by its capacity (lanes ×
    # truncation), so every event weighs the same in an epoch; "block" by the block's own event
    # weight, which over-weights the late, sparse blocks of long-history users
    loss_normalizer: str = _choice("block", ["events", "block"])
    # early stopping on validation NDCG@val_k (needs validation rows); patience in epochs
    patience: int = 3
    validation: bool = True
    val_k: int = 10
    # after early stopping, train θ again from its initial value on train + validation rows for the
    # chosen number of epochs, so θ also learns from the validation events (what the peers do for
    # their test model); doubles the training time
    refit: bool = False
    # split used for training: "evaluate" takes [evaluate] protocol/test_fraction/test_start;
    # "none" trains on every event (production / cron)
    protocol: str = _choice("evaluate", ["evaluate", "loo", "temporal", "none"])
    # temporal protocol: the last fraction of the training rows is the validation stream
    validation_fraction: float = 0.1
    # stop starting new epochs after this many seconds (0 = no limit)
    time_budget: float = 0.0
    seed: int = 0
    tensorboard: str | None = None


@dataclass
class EvaluateConfig:
    """Offline evaluation (`dyembed evaluate`)."""

    protocol: str = _choice("temporal", ["loo", "temporal"])
    test_fraction: float = 0.2
    test_start: int | None = None
    ks: list[int] = field(default_factory=lambda: [10, 20])
    # auto = masked iff fewer than repeat_threshold of the history events repeat an earlier item of
    # their user (dyembed/masking.py: the one rule for every model and protocol); on / off force it
    mask_seen: str = _choice("auto", ["auto", "on", "off"])
    repeat_threshold: float = 0.05
    # any of pop, recent-pop, random, history-mean, static, frozen (frozen: temporal protocol only)
    baselines: list[str] = field(default_factory=lambda: ["pop", "recent-pop", "random", "history-mean", "static", "frozen"])
    bootstrap: int = 200
    seed: int = 0
    # recent-pop: item counts over this sliding window before each test event
    recent_window_days: float = 7.0
    # history-mean: weight of a past event halves every this many later events of the user (0 = plain mean)
    history_half_life_events: float = 10.0
    # static: full-softmax fit of one free vector per user on the history events
    static_epochs: int = 30
    static_l2: float = 0.01
    # memory cap of one [events, items] score block of the numpy baselines and of recommend
    max_block_mb: float = 64.0
    # --plot: number of equal-count test-time buckets
    plot_buckets: int = 10


@dataclass
class RuntimeConfig:
    device: str = _choice("auto", ["auto", "cpu", "gpu"])
    # matmuls against the item matrix in bfloat16 (CPU) / float16 (GPU), accumulating in float32
    mixed_precision: bool = False
    threads: int = 0
    # cap on one [lanes, n_items] score block (MB); lanes are reduced to stay under it
    max_block_mb: int = 256
    # compile the replay step with XLA
    jit: bool = False
    # seconds to wait for another run's lock on the work directory (0: fail at once, exit 4)
    lock_wait: float = 0.0
    # previous state versions kept beside state/ (state.prev, state.prev.2, …) for rollback
    keep_states: int = 1


@dataclass
class Config:
    synth: SynthConfig = field(default_factory=SynthConfig)
    data: DataConfig = field(default_factory=DataConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {f.name: f.type for f in dataclasses.fields(Config)}  # type: ignore[misc]


@dataclass(frozen=True)
class Range:
    """Valid values of a numeric key (bounds inclusive unless `*_open`); NaN and ±inf never are."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def ok(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def describe(self, integer: bool = False) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return ("an integer" if integer else "a finite number") + (" " + " and ".join(parts) if parts else "")


AT_LEAST_0, AT_LEAST_1, POSITIVE, ANY = Range(0), Range(1), Range(0, low_open=True), Range()
FRACTION, OPEN_FRACTION = Range(0, 1), Range(0, 1, low_open=True, high_open=True)
INT64 = 2**63 - 1

# every int / float key of every section (a test checks that none is missing): lists (evaluate.ks)
# are checked element by element, None is allowed where the annotation allows it
CONSTRAINTS: dict[str, Range] = {
    # upper bounds: what one machine can generate (1e9 events are ~33 GB of CSV)
    "synth.users": Range(1, 100_000_000), "synth.items": Range(1, 100_000_000), "synth.events": Range(1, 1_000_000_000),
    "synth.topics": AT_LEAST_1,
    "synth.seed": AT_LEAST_0, "synth.drift_rate": AT_LEAST_0, "synth.focus": FRACTION,
    "synth.popularity_exponent": AT_LEAST_0, "synth.start_time": AT_LEAST_0, "synth.span_days": POSITIVE,
    "synth.malformed_rows": AT_LEAST_0,
    "data.min_rating": ANY, "data.min_user_events": AT_LEAST_1, "data.min_item_events": AT_LEAST_1,
    "data.kcore": AT_LEAST_0, "data.max_future_days": ANY,  # negative: the check is off
    "data.chunk_rows": AT_LEAST_1,
    "encode.max_length": Range(2), "encode.batch_size": AT_LEAST_1, "encode.hashing_dim": AT_LEAST_1,
    "encode.checkpoint_every": AT_LEAST_1, "encode.compile_min_texts": AT_LEAST_0, "encode.adapt_steps": AT_LEAST_0,
    "encode.adapt_lr": POSITIVE, "encode.adapt_batch_size": AT_LEAST_1, "encode.adapt_mask_prob": OPEN_FRACTION,
    "encode.adapt_holdout": OPEN_FRACTION, "encode.seed": AT_LEAST_0,
    "model.dim": AT_LEAST_1, "model.num_negatives": AT_LEAST_1, "model.neg_power": AT_LEAST_0,
    "model.init_scale": AT_LEAST_0, "model.temperature": POSITIVE, "model.step_size": POSITIVE,
    "model.l2_prior": AT_LEAST_0, "model.decay_half_life_days": AT_LEAST_0, "model.clip_norm": AT_LEAST_0,
    "model.adam_beta1": Range(0, 1, high_open=True), "model.adam_beta2": Range(0, 1, high_open=True),
    "model.eps": POSITIVE, "model.history": AT_LEAST_0, "model.repeat_init": ANY,
    "model.repeat_decay": OPEN_FRACTION, "model.context_decay": OPEN_FRACTION,  # stored as logits
    "train.epochs": AT_LEAST_0, "train.lr": AT_LEAST_0, "train.batch_size": AT_LEAST_1, "train.window": AT_LEAST_1,
    "train.truncation": AT_LEAST_1, "train.weight_decay": AT_LEAST_0, "train.patience": AT_LEAST_0,
    "train.val_k": AT_LEAST_1, "train.validation_fraction": Range(0, 1, high_open=True),
    "train.time_budget": AT_LEAST_0, "train.seed": AT_LEAST_0, "train.scalar_lr": AT_LEAST_0,
    "evaluate.test_fraction": OPEN_FRACTION, "evaluate.test_start": ANY, "evaluate.ks": AT_LEAST_1,
    "evaluate.repeat_threshold": FRACTION, "evaluate.bootstrap": AT_LEAST_0, "evaluate.seed": AT_LEAST_0,
    "evaluate.recent_window_days": POSITIVE, "evaluate.history_half_life_events": AT_LEAST_0,
    "evaluate.static_epochs": AT_LEAST_1, "evaluate.static_l2": AT_LEAST_0, "evaluate.max_block_mb": POSITIVE,
    "evaluate.plot_buckets": AT_LEAST_1,
    "runtime.threads": AT_LEAST_0, "runtime.max_block_mb": AT_LEAST_1, "runtime.lock_wait": AT_LEAST_0,
    "runtime.keep_states": AT_LEAST_1,
}


def _check_value(dotted: str, value: Any, source: str = "") -> None:
    """ConfigError unless a numeric key's value is finite and in its CONSTRAINTS range."""
    rule = CONSTRAINTS.get(dotted)
    if rule is None or value is None:
        return
    where = f" ({source})" if source else ""
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue  # the type check (_coerce) reports it
        integer = isinstance(v, int)
        if integer and abs(v) > INT64:
            raise ConfigError(f"config key '{dotted}'{where} must be an integer of at most {INT64} in size; got {v!r}")
        if not rule.ok(float(v)):
            raise ConfigError(f"config key '{dotted}'{where} must be {rule.describe(integer)}; got {v!r}")


def check_values(cfg: "Config") -> None:
    """Every numeric key of every section in range (CONSTRAINTS); ConfigError naming the first
    that is not. load_config calls it; library entry points (train, evaluate, …) too, for configs
    built in code."""
    for section in dataclasses.fields(cfg):
        check_section(section.name, getattr(cfg, section.name))


def check_section(name: str, values: Any) -> None:
    """check_values for one section (e.g. a SynthConfig handed to `dyembed.synth.generate`)."""
    for f in dataclasses.fields(values):
        _check_value(f"{name}.{f.name}", getattr(values, f.name))


@functools.lru_cache(maxsize=None)
def _section_types(section_cls: type) -> dict[str, Any]:
    # cached: get_type_hints evaluates the string annotations anew each call (0.3 s per config load)
    return typing.get_type_hints(section_cls)


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check `value` against the field annotation; return it converted where that is lossless."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
    raise ConfigError(f"config key '{key}' has an unsupported type")  # pragma: no cover


def _did_you_mean(word: str, choices: Any, prefix: str = "") -> str:
    """'; did you mean 'model.dim'?' for the closest known name, or '' when nothing is close."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{prefix}{close[0]}'?" if close else ""


def _set_key(cfg: Config, dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"config key '{dotted}' ({source}) must look like section.key")
    section_name, key = parts
    if section_name not in SECTIONS:
        raise ConfigError(
            f"unknown config section '{section_name}' ({source}){_did_you_mean(section_name, SECTIONS)}; "
            f"sections: {', '.join(SECTIONS)}"
        )
    section = getattr(cfg, section_name)
    hints = _section_types(type(section))
    if key not in hints:
        raise ConfigError(f"unknown config key '{dotted}' ({source})"
                          f"{_did_you_mean(key, hints, prefix=section_name + '.')}")
    converted = _coerce(dotted, value, hints[key])
    if section_name == "data" and key in ("input", "events", "items") and isinstance(converted, str) \
            and re.match(r"[a-zA-Z][a-zA-Z0-9+.-]+://", converted):
        raise ConfigError(f"config key '{dotted}' ({source}) is a remote URL ({converted}): dyembed reads local paths "
                          "only; copy the file here first (e.g. `aws s3 cp`)")
    choices = {f.name: f.metadata.get("choices") for f in dataclasses.fields(section)}[key]
    if choices and converted not in choices:
        raise ConfigError(f"config key '{dotted}' must be one of {', '.join(map(str, choices))}; got {converted!r}")
    _check_value(dotted, converted, source)
    setattr(section, key, converted)


def apply_mapping(cfg: Config, mapping: dict[str, Any], source: str) -> Config:
    """Overlay a nested {section: {key: value}} mapping (as read from TOML) onto `cfg`."""
    for section_name, values in mapping.items():
        if not isinstance(values, dict):
            raise ConfigError(f"config entry '{section_name}' ({source}) must be a [section] table")
        for key, value in values.items():
            _set_key(cfg, f"{section_name}.{key}", value, source)
    return cfg


def parse_set_value(raw: str) -> Any:
    """`--set k=v`: v is read as a TOML value (42, 1e-3, true, [10, 20], "x"); bare words are strings."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def builtin_configs() -> dict[str, Path]:
    """The configs shipped with dyembed (configs/*.toml), by name."""
    from importlib import resources

    folder = resources.files("dyembed_configs")
    return {p.name.removesuffix(".toml"): Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml")}


def resolve_config_path(path: str | Path) -> Path:
    """A config file path, or the name of a built-in config (`demo`, `movielens-100k`, …)."""
    path = Path(path)
    if path.is_file():
        return path
    builtin = builtin_configs()
    name = path.name.removesuffix(".toml")
    if len(path.parts) == 1 and name in builtin:
        return builtin[name]
    raise ConfigError(f"config file not found: {path} (built-in configs: {', '.join(sorted(builtin))})")


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    flags: dict[str, Any] | None = None,
) -> Config:
    """Resolve a config: defaults, then the TOML file, then explicit flags, then `--set` items."""
    cfg = Config()
    if path is not None:
        path = resolve_config_path(path)
        try:
            mapping = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        apply_mapping(cfg, mapping, str(path))
    for dotted, value in (flags or {}).items():
        if value is not None:
            _set_key(cfg, dotted, value, "command-line flag")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects section.key=value, got '{item}'")
        dotted, raw = item.split("=", 1)
        _set_key(cfg, dotted.strip(), parse_set_value(raw.strip()), "--set")
    check_values(cfg)
    return cfg


def resolve_workdir_config(
    path: str | Path | None,
    overrides: list[str] | None = None,
    flags: dict[str, Any] | None = None,
    workdir: str | Path | None = None,
) -> Config:
    """What every command and dyembed.Workdir use: defaults < `path` (or, when none is given, the
    work dir's saved config.toml) < flags < `--set` overrides."""
    if path is None and workdir is not None and (Path(workdir) / "config.toml").is_file():
        path = Path(workdir) / "config.toml"
    return load_config(path, overrides=overrides, flags=flags)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(cfg: Config, sections: list[str] | None = None) -> str:
    """The resolved config as TOML (None values are left out: absent means none)."""
    lines: list[str] = []
    for name, values in cfg.to_dict().items():
        if sections and name not in sections:
            continue
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
        lines.append("")
    return "\n".join(lines)
