"""`train`: θ learned by replay on tiny worlds with known answers; state on disk; resume; CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dyembed.config import Config
from dyembed.errors import ConfigError, InputDataError, StateError
from replay_world import drifting_world, features, random_events, write_workdir


def tiny_config(**sets) -> Config:
    cfg = Config()
    cfg.model.dim = 8
    cfg.train.batch_size = 16
    cfg.train.truncation = 10
    cfg.train.epochs = 4
    cfg.train.lr = 0.05
    cfg.train.patience = 0
    cfg.evaluate.protocol = "temporal"
    cfg.evaluate.test_fraction = 0.2
    for key, value in sets.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg


@pytest.fixture(scope="module")
def drift_run(tmp_path_factory):
    """The drifting world trained once (temporal split); shared by the checks below."""
    from dyembed.replay.train import train

    users, items, ts, X, topic = drifting_world()
    wd = write_workdir(tmp_path_factory.mktemp("drift"), users, items, ts, X)
    records = []
    summary = train(wd, tiny_config(), progress=records.append)
    return wd, summary, records, (users, items, ts, topic)


def test_train_writes_state_and_learns(drift_run):
    wd, summary, records, _ = drift_run
    assert (wd / "state" / "manifest.json").is_file()
    manifest = json.loads((wd / "state" / "manifest.json").read_text())
    assert manifest["watermark"] == {"rows": summary["events"], "last_ts": summary["watermark"]["last_ts"]}
    assert set(manifest["files"]) >= {"theta.npz", "U.npy", "slots.npy", "count.npy", "last_ts.npy", "config.toml",
                                      "eval/U.npy", "eval/slots.npy", "eval/count.npy", "eval/last_ts.npy", "eval/roles.npy"}
    assert summary["epochs_run"] == 4 and summary["protocol"] == "temporal"
    losses = [h["loss"] for h in summary["history"]]
    assert losses[-1] < losses[0]
    assert summary["best_val"] is not None and summary["best_val"] > 0.2
    phases = {r["phase"] for r in records}
    assert {"train", "validate", "epoch"} <= phases
    json.dumps(summary)  # JSON-able


def test_dynamic_beats_static_on_drifting_world(drift_run):
    from dyembed.replay.api import fit_static_users, load_trained, replay_ranks

    wd, summary, _, (users, items, ts, topic) = drift_run
    trained = load_trained(wd, view="eval")
    roles = trained.split
    test = roles == 2
    assert test.sum() == summary["test_events"] > 0
    hist = ~test
    dyn = replay_ranks(trained, users[test], items[test], ts[test], update=True)
    static_u = fit_static_users(trained, users[hist], items[hist], epochs=30, l2=0.001)
    st = trained.state.copy()
    st.U[:] = static_u
    stat = replay_ranks(trained, users[test], items[test], ts[test], update=False, state=st)
    recall = lambda r: float(np.mean(r <= 10))  # noqa: E731 - 10 items per topic
    # the user's current topic owns the top of the ranking for the dynamic model
    assert recall(dyn.ranks) > 0.8
    assert recall(dyn.ranks) > recall(stat.ranks) + 0.15


def test_eval_snapshot_is_the_frozen_replay_of_train_and_validation_rows(drift_run):
    from dyembed.replay.api import load_trained, replay_ranks
    from dyembed.replay.state import UserState

    wd, _, _, (users, items, ts, _) = drift_run
    trained = load_trained(wd, view="eval")
    keep = trained.split != 2
    fresh = UserState.fresh(trained.n_users, 8, 0, u0=trained.prior())
    again = replay_ranks(trained, users[keep], items[keep], ts[keep], update=True, state=fresh)
    np.testing.assert_allclose(again.state.U, trained.state.U, rtol=1e-5, atol=1e-6)
    assert np.array_equal(again.state.count, trained.state.count)


def test_resume_replays_only_new_rows_and_equals_one_pass(tmp_path):
    from dyembed.replay.api import load_trained, replay_ranks
    from dyembed.replay.state import UserState
    from dyembed.replay.train import train

    X = features(30, 8, seed=1)
    users, items, ts = random_events(600, 12, 30, seed=2)
    cut = 400
    wd = write_workdir(tmp_path / "wd", users[:cut], items[:cut], ts[:cut], X, n_users=10 if users[:cut].max() < 10 else None)
    cfg = tiny_config(train__protocol="none", train__epochs=2)
    first = train(wd, cfg)
    assert first["validation_events"] == 0 and first["watermark"]["rows"] == cut
    theta_before = dict(np.load(wd / "state" / "theta.npz"))
    # append rows (and possibly new users), then resume with θ frozen
    write_workdir(wd, users, items, ts, X)
    resumed = train(wd, cfg, resume=True)
    assert resumed["new_events"] == 600 - cut and resumed["watermark"]["rows"] == 600
    trained = load_trained(wd)
    for k, v in theta_before.items():
        assert np.array_equal(getattr(trained.theta, k), v)
    fresh = UserState.fresh(trained.n_users, 8, 0, u0=trained.prior())
    one_pass = replay_ranks(trained, users, items, ts, update=True, state=fresh)
    np.testing.assert_allclose(trained.state.U, one_pass.state.U, rtol=1e-4, atol=1e-5)
    assert np.array_equal(trained.state.count, one_pass.state.count)
    assert (wd / "state.prev" / "manifest.json").is_file()
    # nothing new: a no-op resume; a log that shrank is refused
    assert train(wd, cfg, resume=True)["new_events"] == 0
    write_workdir(wd, users[:100], items[:100], ts[:100], X)
    with pytest.raises(StateError, match="rewritten"):
        train(wd, cfg, resume=True)


def test_config_and_input_errors(tmp_path):
    from dyembed.replay.train import train

    with pytest.raises(InputDataError):
        train(tmp_path / "missing", tiny_config())
    wd = tmp_path / "wd"
    wd.mkdir()
    with pytest.raises(InputDataError, match="item embeddings"):
        train(wd, tiny_config())
    with pytest.raises(ConfigError, match="update-global"):
        train(wd, tiny_config(), update_global=True)
    with pytest.raises(ConfigError, match="train.batch_size"):
        train(wd, tiny_config(train__batch_size=0))
    X = features(5, 4)
    write_workdir(wd, np.array([0, 0]), np.array([1, 9]), np.array([1, 2]), X)
    with pytest.raises(InputDataError, match="item_idx"):
        train(wd, tiny_config())


def test_cli_train_and_errors(tmp_path):
    from typer.testing import CliRunner

    from dyembed_cli.app import app

    X = features(20, 8, seed=1)
    users, items, ts = random_events(300, 10, 20, seed=2)
    wd = write_workdir(tmp_path / "wd", users, items, ts, X)
    runner = CliRunner()
    sets = ["--set", "model.dim=4", "--set", "train.batch_size=8", "--set", "evaluate.protocol=loo"]
    result = runner.invoke(app, ["train", str(wd), "--epochs", "1", "--tensorboard", str(tmp_path / "tb"), *sets])
    assert result.exit_code == 0, result.output
    assert "epoch" in result.output and "val NDCG@10" in result.output and "state →" in result.output
    assert any((tmp_path / "tb").iterdir())
    result = runner.invoke(app, ["train", str(wd), "--device", "gpu", *sets])
    assert result.exit_code == 2 and "no GPU" in result.output
    result = runner.invoke(app, ["train", str(wd), "--update-global", *sets])
    assert result.exit_code == 2 and "--resume" in result.output
    result = runner.invoke(app, ["train", str(tmp_path / "nope")])
    assert result.exit_code == 3
    result = runner.invoke(app, ["train", str(wd), "--resume", "--json", "-", *sets])
    assert result.exit_code == 0 and '"new_events": 0' in result.output


@pytest.mark.slow
def test_same_seed_same_training(tmp_path):
    from dyembed.replay.train import train

    X = features(20, 8, seed=1)
    users, items, ts = random_events(300, 10, 20, seed=2)
    out = []
    for name in ("a", "b"):
        wd = write_workdir(tmp_path / name, users, items, ts, X)
        cfg = tiny_config(train__epochs=2, model__loss="sampled", model__num_negatives=5, model__rule="adam")
        out.append((train(wd, cfg), dict(np.load(wd / "state" / "theta.npz")), np.load(wd / "state" / "U.npy")))
    (s1, t1, u1), (s2, t2, u2) = out
    assert [h["loss"] for h in s1["history"]] == [h["loss"] for h in s2["history"]]
    for k in t1:
        assert np.array_equal(t1[k], t2[k])
    assert np.array_equal(u1, u2)


@pytest.mark.slow
def test_stop_gradient_variant_trains(tmp_path):
    from dyembed.replay.train import train

    users, items, ts, X, _ = drifting_world(n_users=20)
    wd = write_workdir(tmp_path / "wd", users, items, ts, X)
    summary = train(wd, tiny_config(train__meta=False, train__epochs=2))
    assert np.isfinite(summary["history"][-1]["loss"])


def test_refit_retrains_theta_on_train_and_validation_rows_for_the_chosen_epochs(tmp_path):
    """train.refit: θ learns from the validation events too; without it they only choose the epoch."""
    from dyembed.split import VALIDATION
    from dyembed.replay.train import compute_roles, split_settings, train

    X = features(20, 8, seed=1)
    users, items, ts = random_events(400, 12, 20, seed=2)
    cfg = tiny_config(train__epochs=1)
    roles = compute_roles(users, ts, split_settings(cfg))
    moved = items.copy()
    moved[roles == VALIDATION] = (moved[roles == VALIDATION] + 7) % 20  # other validation answers
    thetas = {}
    for refit in (False, True):
        for name, its in (("same", items), ("moved", moved)):
            wd = write_workdir(tmp_path / f"{name}-{refit}", users, its, ts, X)
            summary = train(wd, tiny_config(train__epochs=1, train__refit=refit))
            thetas[refit, name] = dict(np.load(wd / "state" / "theta.npz"))
            manifest = json.loads((wd / "state" / "manifest.json").read_text())
            assert manifest["watermark"]["rows"] == len(users)  # the serving state still holds every row
            if refit:
                assert summary["refit"]["epochs"] == summary["best_epoch"] == 1
                assert summary["refit"]["events"] == summary["train_events"] + summary["validation_events"]
            else:
                assert summary["refit"] is None
    assert all(np.array_equal(thetas[False, "same"][k], thetas[False, "moved"][k]) for k in thetas[False, "same"])
    assert any(not np.array_equal(thetas[True, "same"][k], thetas[True, "moved"][k]) for k in thetas[True, "same"])
    assert any(not np.array_equal(thetas[True, "same"][k], thetas[False, "same"][k]) for k in thetas[True, "same"])
