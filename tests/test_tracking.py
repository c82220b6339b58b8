"""Tracking users can see (issue 14 §5): library versions in the manifests, the state version and
encoder fingerprint in metrics.json, TensorBoard runs for train / evaluate / update."""

from __future__ import annotations

import json
from importlib import metadata

import pytest
from typer.testing import CliRunner

from dyembed_cli.app import app
from update_world import copy_world, shared_world

runner = CliRunner()


@pytest.fixture
def world(tmp_path_factory):
    return shared_world(tmp_path_factory)


def scalars_of(run_dir):
    """{tag: [(step, value)]} of a TensorBoard run, read back with the tensorboard package (tracking extra)."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    import numpy as np

    import tensorflow as tf

    acc = event_accumulator.EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["tensors"]:
        values = [(e.step, np.asarray(tf.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
        out[tag] = [(step, float(v)) for step, v in values if v.ndim == 0 and v.dtype == np.float32]
    return {t: v for t, v in out.items() if v}, acc


def test_library_versions_are_the_installed_ones():
    from dyembed import __version__
    from dyembed.tracking import library_versions

    versions = library_versions()
    assert versions["dyembed"] == __version__
    for dist in ("numpy", "tensorflow", "transformers", "pyarrow"):
        assert versions[dist] == metadata.version(dist)


def test_manifests_record_the_library_versions(world, tmp_path):
    work = copy_world(world, tmp_path)
    state = json.loads((work / "state" / "manifest.json").read_text())
    encode = json.loads((work / "encode_manifest.json").read_text())
    for manifest in (state, encode):
        libs = manifest["libraries"]
        assert libs["tensorflow"] == metadata.version("tensorflow")
        assert libs["transformers"] == metadata.version("transformers")
        assert libs["numpy"] == metadata.version("numpy")


def test_metrics_json_names_the_state_and_encoder_it_scored(world, tmp_path):
    work = copy_world(world, tmp_path)
    train = runner.invoke(app, ["--quiet", "train", str(work), "--protocol", "loo"])
    assert train.exit_code == 0, train.output
    result = runner.invoke(app, ["--quiet", "evaluate", str(work), "--protocol", "loo", "--baselines", "pop",
                                 "--json-file", str(tmp_path / "metrics.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "metrics.json").read_text())
    state = json.loads((work / "state" / "manifest.json").read_text())
    fingerprint = json.loads((work / "encode_manifest.json").read_text())["fingerprint_id"]
    assert report["state"]["version"] == state["version"] == 2  # train ran twice on this copy
    assert report["state"]["encoder_fingerprint"] == state["lineage"]["vectors"]["encoder"] == fingerprint
    assert report["state"]["libraries"]["tensorflow"] == metadata.version("tensorflow")


def test_train_evaluate_update_write_tensorboard_runs(world, tmp_path):
    pytest.importorskip("tensorboard")
    work = copy_world(world, tmp_path)
    tb = tmp_path / "tb"
    raw = world[1]
    assert runner.invoke(app, ["--quiet", "train", str(work), "--protocol", "loo", "--tensorboard", str(tb)]).exit_code == 0
    evaluated = runner.invoke(app, ["evaluate", str(work), "--protocol", "loo", "--baselines", "pop", "--json",
                                    "--tensorboard", str(tb)])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    updated = runner.invoke(app, ["update", str(work), "--new-log", str(raw / "new.csv"), "--json", "--tensorboard", str(tb)])
    assert updated.exit_code == 0, updated.output
    summary = json.loads(updated.stdout)
    assert sorted(p.name for p in tb.iterdir()) == ["evaluate", "train", "update"]

    train_scalars, train_acc = scalars_of(tb / "train")
    assert {"train_loss", "alpha", "tau"} <= set(train_scalars)
    ev_scalars, ev_acc = scalars_of(tb / "evaluate")
    version = report["state"]["version"]
    for model in ("dyembed", "pop"):
        step, value = ev_scalars[f"loo/{model}/ndcg@10"][-1]
        assert step == version and value == pytest.approx(report["models"][model]["per_event"]["ndcg@10"], rel=1e-6)
    up_scalars, up_acc = scalars_of(tb / "update")
    step, value = up_scalars["counts/events_added"][-1]
    assert step == summary["state_version"] == version + 1 and value == summary["events_added"]
    assert up_scalars["window/ndcg@10"][-1][1] == pytest.approx(summary["metrics"]["per_event"]["ndcg@10"], rel=1e-6)
    # hyper-parameters: the hparams plugin's summary, and the config as text
    for acc in (train_acc, ev_acc, up_acc):
        tags = acc.Tags()["tensors"]
        assert "_hparams_/session_start_info" in tags and "config" in tags
