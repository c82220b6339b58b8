"""Config: defaults < TOML file < flags < --set; unknown keys and wrong types name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dyembed.config import Config, builtin_configs, load_config, parse_set_value, to_toml
from dyembed.errors import EXIT_USAGE, ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_defaults_file_flags_set_precedence(tmp_path):
    path = write(tmp_path, "[model]\ndim = 16\nrule = \"adam\"\n[train]\nepochs = 3\n")
    cfg = load_config(path)
    assert (cfg.model.dim, cfg.model.rule, cfg.train.epochs) == (16, "adam", 3)
    assert cfg.model.loss == Config().model.loss  # untouched keys keep their defaults
    cfg = load_config(path, flags={"model.dim": 8, "train.epochs": None})
    assert (cfg.model.dim, cfg.train.epochs) == (8, 3)  # a flag left unset does not override
    cfg = load_config(path, overrides=["model.dim=4", "evaluate.ks=[5, 50]"], flags={"model.dim": 8})
    assert cfg.model.dim == 4 and cfg.evaluate.ks == [5, 50]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[model]\ndimm = 3\n", "unknown config key 'model.dimm'"),
        ("[modle]\ndim = 3\n", "unknown config section 'modle'"),
        ("[model]\ndim = \"big\"\n", "config key 'model.dim' must be an integer"),
        ("[model]\nrule = \"rmsprop\"\n", "config key 'model.rule' must be one of sgd, adagrad, adam"),
        ("[evaluate]\nks = 10\n", "config key 'evaluate.ks' must be a list"),
        ("[model]\nitem_bias = 1\n", "config key 'model.item_bias' must be true or false"),
        ("dim = 3\n", "config entry 'dim'"),
        ("[model\n", "is not valid TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert fragment in str(info.value)
    assert info.value.exit_code == EXIT_USAGE
    assert "\n" not in str(info.value)


def test_set_errors_and_values():
    with pytest.raises(ConfigError, match="--set expects section.key=value"):
        load_config(overrides=["model.dim"])
    with pytest.raises(ConfigError, match="unknown config key 'model.nope'"):
        load_config(overrides=["model.nope=1"])
    assert parse_set_value("1e-3") == 0.001 and parse_set_value("true") is True
    assert parse_set_value("adam") == "adam" and parse_set_value("[1, 2]") == [1, 2]
    cfg = load_config(overrides=["model.temperature=2", "evaluate.test_start=none"])
    assert cfg.model.temperature == 2.0 and isinstance(cfg.model.temperature, float)
    assert cfg.evaluate.test_start is None


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(overrides=["model.dim=12", 'data.text_template="{a}\\t\\"{b}\\""'])
    path = tmp_path / "resolved.toml"
    path.write_text(to_toml(cfg))
    assert load_config(path) == cfg


def test_missing_config_file_lists_builtins(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*built-in configs: .*demo"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "configs").glob("*.toml")))
def test_shipped_configs_validate(name):
    assert name in builtin_configs()
    load_config(name)  # by built-in name
    load_config(REPO / "configs" / f"{name}.toml")


def test_required_shipped_configs_exist():
    assert {"demo", "movielens-100k", "amazon-2018"} <= set(builtin_configs())
