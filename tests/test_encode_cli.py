"""`dyembed encode` on the command line: summary, --json, exit codes and one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest
from tiny_models import TITLES, make_tiny_bert, write_items
from typer.testing import CliRunner

from dyembed_cli.app import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_env_model(monkeypatch):
    monkeypatch.delenv("DYEMBED_MODEL", raising=False)


def last_line(result) -> str:
    return result.output.strip().splitlines()[-1]


def test_encode_hashing_cli_summary_and_json(tmp_path):
    write_items(tmp_path)
    result = runner.invoke(app, ["encode", str(tmp_path), "--model", "hashing", "--set", "encode.hashing_dim=16"])
    assert result.exit_code == 0, result.output
    assert "encoded now" in result.output and "hashing" in result.output and "16 (float32)" in result.output
    result = runner.invoke(app, ["encode", str(tmp_path), "--model", "hashing", "--set", "encode.hashing_dim=16", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # logs and notes go to stderr
    assert summary["items_encoded"] == 0 and summary["items_reused"] == len(TITLES) and summary["dim"] == 16


def test_encode_tiny_model_cli_and_workdir_config(tmp_path):
    model = make_tiny_bert(tmp_path / "tiny", layout="tf")
    work = tmp_path / "work"
    write_items(work)
    # the work dir's config.toml (written by preprocess) is the base config when --config is absent
    (work / "config.toml").write_text(f'[encode]\nencoder = "hf:{model}"\nbatch_size = 3\n')
    result = runner.invoke(app, ["--quiet", "encode", str(work), "--json-file", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    assert result.output == ""
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["weights_layout"] == "tf-h5" and summary["batch_size"] == 3 and summary["pooling"] == "mean"
    assert (work / "item_embeddings.parquet").is_file() and (work / "encode_manifest.json").is_file()


def test_encode_cli_errors_and_exit_codes(tmp_path):
    result = runner.invoke(app, ["encode", str(tmp_path / "missing")])
    assert result.exit_code == 3 and last_line(result).startswith("error: items file not found")

    write_items(tmp_path / "w", drop="text")
    result = runner.invoke(app, ["encode", str(tmp_path / "w"), "--model", str(tmp_path)])
    assert result.exit_code == 3
    assert last_line(result).startswith("error: items file") and "has no 'text' column" in last_line(result)

    write_items(tmp_path / "w")
    result = runner.invoke(app, ["encode", str(tmp_path / "w"), "--model", str(tmp_path / "nope")])
    assert result.exit_code == 3 and last_line(result) == f"error: model directory not found: {tmp_path / 'nope'}"

    empty_model = tmp_path / "empty_model"
    empty_model.mkdir()
    (empty_model / "config.json").write_text('{"model_type": "bert"}')
    result = runner.invoke(app, ["encode", str(tmp_path / "w"), "--model", str(empty_model)])
    assert result.exit_code == 3 and "has no weights" in last_line(result)

    result = runner.invoke(app, ["encode", str(tmp_path / "w"), "--model", "some-org/absent-model"])
    assert result.exit_code == 3 and "never downloads" in last_line(result)
    result = runner.invoke(app, ["encode", str(tmp_path / "w"), "--model", "some-org/absent-model",
                                 "--set", "encode.fallback_to_hashing=true", "--set", "encode.hashing_dim=8"])
    assert result.exit_code == 0 and "fell back to the hashing encoder" in result.output

    result = runner.invoke(app, ["encode", str(tmp_path / "w"), "--model", "hashing", "--batch-size", "0"])
    assert result.exit_code == 2 and last_line(result) == "error: config key 'encode.batch_size' (command-line flag) must be an integer >= 1; got 0"
    result = runner.invoke(app, ["encode", str(tmp_path / "w"), "--set", "encode.pooling=median"])
    assert result.exit_code == 2 and "encode.pooling" in last_line(result)
    assert all("Traceback" not in r for r in (result.output,))
    shutil.rmtree(empty_model)
