"""`dyembed tune`: the search finds a planted setting, scores on validation only, survives a kill."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("optuna")

from dyembed.config import Config, load_config  # noqa: E402
from dyembed.errors import ConfigError  # noqa: E402
from dyembed.tune import SPACE, Param, tune, trial_settings  # noqa: E402

runner = CliRunner()


def invoke(*args):
    from dyembed_cli.app import app

    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def world(tmp_path):
    from evaluate_world import tiny_config, write_world
    from dyembed.config import to_toml

    workdir = tmp_path / "w"
    write_world(workdir, seed=3)
    cfg = tiny_config("temporal")
    (workdir / "config.toml").write_text(to_toml(cfg))
    return workdir, cfg


def planted_fit(calls):
    """A stand-in for train's fit whose validation score peaks at step_size 0.8, rule adagrad,
    context on, dim 64 (no TF: the search itself is what is tested)."""

    def fit(workdir, cfg, progress=None):
        calls.append(cfg)
        m = cfg.model
        score = 0.5 - 0.05 * np.log(m.step_size / 0.8) ** 2 + 0.05 * (m.rule == "adagrad") + 0.04 * m.context
        score += 0.02 * (m.dim == 64) - 0.01 * abs(np.log10(cfg.train.lr / 0.01))
        for epoch in (1, 2):
            progress({"phase": "epoch", "epoch": epoch, "val": score * epoch / 2})
        return {"best_val": float(score), "best_epoch": 2, "epochs_run": 2, "stopped": "epochs"}

    return fit


def test_search_finds_the_planted_optimum_and_writes_a_config_train_takes(world):
    workdir, cfg = world
    calls: list = []
    summary = tune(workdir, cfg, trials=40, budget_minutes=5, seed=0, fit=planted_fit(calls))
    best = summary["best"]["settings"]
    assert len(summary["trials"]) == 40
    assert best["model.rule"] == "adagrad" and best["model.context"] is True and best["model.dim"] == 64
    assert 0.3 < best["model.step_size"] < 2.0
    # every trial got the base config plus its own settings, with history on whenever a term reads it
    for c in calls:
        assert c.evaluate == cfg.evaluate and c.train.epochs == cfg.train.epochs
        assert (c.model.history > 0) == (c.model.repeat or c.model.context)
    chosen = load_config(workdir / "tune" / "best.toml")
    for dotted, value in best.items():
        section, key = dotted.split(".")
        assert getattr(getattr(chosen, section), key) == value
    assert chosen.data == cfg.data and chosen.evaluate == cfg.evaluate
    text = (workdir / "tune" / "best.toml").read_text()
    assert text.startswith(f"# dyembed tune: chosen on the validation split (temporal; validation ndcg@10 "
                           f"{summary['best']['value']:.4f}")
    table = json.loads((workdir / "tune" / "trials.json").read_text())
    assert [r["number"] for r in table["trials"]] == list(range(40))
    assert max(r["value"] for r in table["trials"] if r["value"] is not None) == summary["best"]["value"]


def test_same_seed_same_search_and_a_rerun_continues_the_study(world, tmp_path):
    workdir, cfg = world
    first = tune(workdir, cfg, trials=3, budget_minutes=5, seed=7, fit=planted_fit([]))
    again = tune(workdir, cfg, trials=5, budget_minutes=5, seed=7, fit=planted_fit([]))
    assert [r["settings"] for r in again["trials"][:3]] == [r["settings"] for r in first["trials"]]
    assert len(again["trials"]) == 5
    other = tmp_path / "other"
    import shutil

    shutil.copytree(workdir, other, ignore=shutil.ignore_patterns("tune"))
    twin = tune(other, cfg, trials=3, budget_minutes=5, seed=7, fit=planted_fit([]))
    assert [r["settings"] for r in twin["trials"]] == [r["settings"] for r in first["trials"]]
    # nothing to do when the study already holds --trials trials
    calls: list = []
    tune(workdir, cfg, trials=5, budget_minutes=5, seed=7, fit=planted_fit(calls))
    assert calls == []


def test_a_killed_search_keeps_its_best_and_resumes(world):
    workdir, cfg = world
    calls: list = []
    good = planted_fit(calls)

    def dies_on_third(workdir_, cfg_, progress=None):
        if len(calls) == 2:
            calls.append(None)
            raise KeyboardInterrupt
        return good(workdir_, cfg_, progress)

    with pytest.raises(KeyboardInterrupt):
        tune(workdir, cfg, trials=6, budget_minutes=5, seed=1, fit=dies_on_third)
    rows = json.loads((workdir / "tune" / "trials.json").read_text())["trials"]
    assert [r["state"] for r in rows] == ["complete", "complete"]
    best_before = (workdir / "tune" / "best.toml").read_text()
    assert f"{max(r['value'] for r in rows):.4f}" in best_before.splitlines()[0]
    summary = tune(workdir, cfg, trials=6, budget_minutes=5, seed=1, fit=good)
    states = [r["state"] for r in summary["trials"]]
    assert states.count("fail") == 1 and len(states) == 7 and "fail" not in states[3:]  # the killed trial does not count
    assert states.count("complete") + states.count("pruned") == 6, states
    assert states[2] == "fail"


def test_diverged_and_pruned_trials_are_not_chosen(world):
    from dyembed.errors import DivergedError

    workdir, cfg = world

    def fit(workdir_, cfg_, progress=None):
        if cfg_.model.step_size > 1.0:  # "diverges", although it would look best
            raise DivergedError("training diverged in epoch 1: nothing was saved")
        return planted_fit([])(workdir_, cfg_, progress)

    summary = tune(workdir, cfg, trials=12, budget_minutes=5, seed=0, fit=fit)
    assert summary["best"]["settings"]["model.step_size"] <= 1.0
    notes = [r["note"] for r in summary["trials"] if r["state"] == "pruned"]
    assert any(n and n.startswith("diverged") for n in notes)


def test_another_config_refuses_to_mix_scores_and_fresh_starts_over(world):
    workdir, cfg = world
    tune(workdir, cfg, trials=2, budget_minutes=5, fit=planted_fit([]))
    res = invoke("tune", workdir, "--trials", 2, "--set", "train.patience=7")
    assert res.exit_code == 2
    assert "holds a search over another config or other data" in res.output and "--fresh" in res.output
    other = Config()
    other.train.patience = 7
    other.evaluate = cfg.evaluate
    summary = tune(workdir, other, trials=1, budget_minutes=5, fresh=True, fit=planted_fit([]))
    assert len(summary["trials"]) == 1 and (workdir / "tune" / "study.db.prev").is_file()


def test_protocol_none_and_missing_optuna_are_usage_errors(world, monkeypatch):
    workdir, cfg = world
    cfg.train.protocol = "none"
    with pytest.raises(ConfigError, match="scores settings on the validation split"):
        tune(workdir, cfg, trials=1, fit=planted_fit([]))
    monkeypatch.setitem(sys.modules, "optuna", None)
    res = invoke("tune", workdir, "--trials", 1)
    assert res.exit_code == 2
    assert res.output.strip() == "error: dyembed tune needs Optuna: pip install 'dyembed[tune]' (or pip install 'optuna>=3.6')"


def test_trial_settings_expand_the_dynamics_switch():
    assert trial_settings({"model.dynamics": "none", "model.history": 20}) == {
        "model.repeat": False, "model.context": False, "model.history": 0}
    assert trial_settings({"model.dynamics": "repeat+context", "model.history": 20}) == {
        "model.repeat": True, "model.context": True, "model.history": 20}
    assert trial_settings({"model.step_size": 0.5}) == {"model.step_size": 0.5}  # base config's dynamics kept
    assert {p.key for p in SPACE} >= {"model.step_size", "train.lr", "model.dim", "model.rule", "train.weight_decay"}


# --------------------------------------------------------------------------- real training


def _poison_test_rows(workdir, cfg):
    """Every test row of the split points at item 0 — the answers a leak would have to read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dyembed.replay.train import compute_roles, split_settings

    table = pq.read_table(workdir / "events.parquet")
    roles = compute_roles(table.column("user_idx").to_numpy(), table.column("ts").to_numpy(), split_settings(cfg))
    items = table.column("item_idx").to_numpy().copy()
    assert (items[roles == 2] != 0).any()
    items[roles == 2] = 0
    pq.write_table(table.set_column(table.schema.get_field_index("item_idx"), "item_idx", pa.array(items, pa.int32())),
                   workdir / "events.parquet")


def test_validation_fit_never_reads_test_answers(world, tmp_path):
    """The score of a setting is the same when every test answer of the log is replaced."""
    import shutil

    from dyembed.replay.train import fit_validation

    workdir, cfg = world
    cfg.train.epochs = 1
    poisoned = tmp_path / "poisoned"
    shutil.copytree(workdir, poisoned)
    _poison_test_rows(poisoned, cfg)
    clean, dirty = (fit_validation(w, cfg) for w in (workdir, poisoned))
    assert clean["validation_events"] == dirty["validation_events"] > 0
    assert clean["best_val"] == pytest.approx(dirty["best_val"], rel=1e-6)
    assert [h["loss"] for h in clean["history"]] == pytest.approx([h["loss"] for h in dirty["history"]], rel=1e-6)
    assert not (workdir / "state").exists() and not (poisoned / "state").exists()


@pytest.mark.slow
def test_real_search_finds_the_planted_step_size_and_never_reads_test_rows(world, tmp_path):
    """The drifting world: users switch topic half-way, so only a user step that moves (α 0.5)
    follows them; α 0.001 stays at the prior (popularity). The search must pick 0.5, with the same
    validation scores when every test answer is replaced."""
    import shutil

    workdir, cfg = world
    cfg.train.epochs = 1
    space = (Param("model.step_size", choices=(0.001, 0.5)),)
    poisoned = tmp_path / "poisoned"
    shutil.copytree(workdir, poisoned)
    _poison_test_rows(poisoned, cfg)
    results = [tune(w, cfg, trials=4, budget_minutes=10, seed=0, space=space) for w in (workdir, poisoned)]
    for summary in results:
        assert summary["best"]["settings"] == {"model.step_size": 0.5}
        values = {r["settings"]["model.step_size"]: r["value"] for r in summary["trials"]}
        assert set(values) == {0.001, 0.5} and values[0.5] > values[0.001] + 0.02
    clean, dirty = ([(r["settings"], r["value"]) for r in s["trials"]] for s in results)
    assert [s for s, _ in clean] == [s for s, _ in dirty]
    np.testing.assert_allclose([v for _, v in clean], [v for _, v in dirty], rtol=1e-6)
    assert not (workdir / "state").exists()  # a search writes no state
    # the chosen config trains as it is
    res = invoke("train", workdir, "--config", workdir / "tune" / "best.toml")
    assert res.exit_code == 0, res.output
