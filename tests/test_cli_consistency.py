"""The everyday friction of issue 14 §4: one meaning per flag, one-line usage errors, "did you mean",
remote paths, --quiet, help defaults, runtime settings from the command (exit codes and messages)."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from dyembed_cli.app import app
from evaluate_world import loo_workdir  # noqa: F401 - module fixture

runner = CliRunner()
TF_COMMANDS = ("encode", "train", "tune", "evaluate", "update", "demo", "export")
JSON_COMMANDS = ("preprocess", "encode", "train", "tune", "evaluate", "recommend", "update", "export", "state list", "state verify")


def invoke(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def one_error_line(result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("args, message", [
    (["train", "w", "--device", "tpu"], "error: Invalid value for --device: must be one of auto, cpu, gpu; got 'tpu'; "
                                        "see `dyembed train --help`"),
    (["recommend", "w", "--k", "abc"], "error: Invalid value for '--k': Input should be a valid integer"),
    (["recommend", "w", "--k", "0"], "error: Invalid value for '--k': Input should be greater than or equal to 1"),
    (["evaluate", "w", "--k", "0"], "error: Invalid value for '--k': Input should be greater than or equal to 1"),
    (["recommend"], "error: Missing argument 'workdir'; see `dyembed recommend --help`"),
    (["synth", "--out", "x", "--no-such-flag"], "error: No such option: --no-such-flag"),
    (["no-such-command"], "error: No such command 'no-such-command'; see `dyembed --help`"),
])
def test_usage_errors_are_one_line_exit_2(args, message):
    assert one_error_line(invoke(*args), 2).startswith(message)


def test_did_you_mean_for_a_mistyped_key(tmp_path):
    line = one_error_line(invoke("synth", "--out", tmp_path, "--set", "model.dimm=32"), 2)
    assert line == "error: unknown config key 'model.dimm' (--set); did you mean 'model.dim'?"
    line = one_error_line(invoke("synth", "--out", tmp_path, "--set", "modle.dim=32"), 2)
    assert line.startswith("error: unknown config section 'modle' (--set); did you mean 'model'?; sections: synth")
    bad = tmp_path / "config.toml"
    bad.write_text("[train]\nepoch = 3\n")
    line = one_error_line(invoke("synth", "--out", tmp_path, "-c", bad), 2)
    assert line == f"error: unknown config key 'train.epoch' ({bad}); did you mean 'train.epochs'?"
    # nothing close: no guess
    assert one_error_line(invoke("synth", "--out", tmp_path, "--set", "model.zzz=1"), 2) == \
        "error: unknown config key 'model.zzz' (--set)"


@pytest.mark.parametrize("args", [["preprocess", "w", "--events", "s3://bucket/logs.csv"],
                                  ["preprocess", "w", "--set", "data.items=gs://b/items.jsonl"],
                                  ["recommend", "w", "--user", "1", "--out", "s3://b/recs.parquet"]])
def test_remote_paths_are_refused_in_one_line(args):
    line = one_error_line(invoke(*args), 2)
    assert "remote URLs (s3://, gs://, http://, …) are not supported; dyembed reads and writes local paths" in line


def test_remote_path_in_a_config_file_is_refused(tmp_path):
    bad = tmp_path / "remote.toml"
    bad.write_text('[data]\nevents = "s3://bucket/events.csv"\n')
    line = one_error_line(invoke("preprocess", tmp_path / "w", "-c", bad), 2)
    assert line == (f"error: config key 'data.events' ({bad}) is a remote URL (s3://bucket/events.csv): dyembed reads "
                    "local paths only; copy the file here first (e.g. `aws s3 cp`)")


@pytest.mark.parametrize("command", TF_COMMANDS)
def test_every_tensorflow_command_takes_device(command):
    result = invoke(command, "--help", env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "--device" in result.stdout and "runtime.device = auto" in result.stdout


@pytest.mark.parametrize("command", JSON_COMMANDS)
def test_json_is_the_same_flag_everywhere(command):
    result = invoke(*command.split(), "--help", env={"COLUMNS": "200"})
    assert result.exit_code == 0
    line = next(l for l in result.stdout.splitlines() if "--json " in l)
    assert "ONE line of JSON on stdout" in line


def test_help_shows_defaults():
    text = invoke("evaluate", "--help", env={"COLUMNS": "200"}).stdout
    for default in ("evaluate.protocol = temporal", "evaluate.ks = 10, 20", "evaluate.mask_seen = auto"):
        assert default in text
    assert "[default: 10]" in invoke("recommend", "--help", env={"COLUMNS": "200"}).stdout
    assert "train.epochs = 10" in invoke("train", "--help", env={"COLUMNS": "200"}).stdout


def test_quiet_prints_nothing_but_json(loo_workdir):
    result = invoke("--quiet", "recommend", loo_workdir, "--user", "u3")
    assert result.exit_code == 0 and result.output == ""
    result = invoke("--quiet", "recommend", loo_workdir, "--user", "u3", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["users"] == 1 and result.stderr == ""


def test_state_saved_for_a_gpu_serves_and_evaluates_on_cpu(tmp_path, monkeypatch):
    """runtime.device=gpu in the state's and the work dir's config.toml: recommend (no TensorFlow)
    serves; evaluate takes --device from the command (before: exit 2 naming a --device it lacked)."""
    import evaluate_world

    tiny = evaluate_world.tiny_config

    def gpu_config(protocol):
        cfg = tiny(protocol)
        cfg.runtime.device = "gpu"
        cfg.evaluate.baselines = ["pop"]
        return cfg

    monkeypatch.setattr(evaluate_world, "tiny_config", gpu_config)
    work = tmp_path / "w"
    evaluate_world.write_world(work, seed=3)
    evaluate_world.write_state(work, "loo")
    assert 'device = "gpu"' in (work / "state" / "config.toml").read_text()
    result = invoke("recommend", work, "--user", "u3", "--json")
    assert result.exit_code == 0, result.output
    result = invoke("evaluate", work, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["models"]["dyembed"]["events"] > 0
    # the work dir's own config asks for a GPU this machine lacks: the message names the flag that exists
    result = invoke("evaluate", work)
    if result.exit_code != 0:
        assert "--device gpu (runtime.device) but TensorFlow sees no GPU" in one_error_line(result, 2)
        assert "--device" in invoke("evaluate", "--help").stdout


def test_state_commands_never_import_tensorflow(loo_workdir, tmp_path):
    import subprocess
    import sys

    work = tmp_path / "w"
    shutil.copytree(loo_workdir, work)
    code = ("import sys; from typer.testing import CliRunner; from dyembed_cli.app import app; "
            f"r = CliRunner().invoke(app, ['state', 'list', {str(work)!r}, '--json']); assert r.exit_code == 0, r.output; "
            f"r = CliRunner().invoke(app, ['state', 'verify', {str(work)!r}]); assert r.exit_code == 0, r.output; "
            "print('tensorflow' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"


def test_usage_error_raised_in_a_command_is_one_line_exit_2(tmp_path):
    """A BadParameter raised inside a command body (not by click's parser) takes the same one-line path."""
    line = one_error_line(invoke("update", tmp_path, "--new-log", tmp_path / "x.csv", "--wait", "nan"), 2)
    assert line == "error: Invalid value for --wait: must be a number of seconds >= 0; got nan; see `dyembed update --help`"


def test_json_file_must_be_a_file(tmp_path):
    line = one_error_line(invoke("train", tmp_path, "--json-file", tmp_path), 2)
    assert line == f"error: --json-file {tmp_path} is a directory; give a file name"


@pytest.mark.parametrize("args, code", [(["synth", "--out", "{d}", "--set", "model.dimm=32"], 2),
                                        (["update", "{d}", "--new-log", "{d}/x.csv", "--keep", "0"], 2),
                                        (["recommend", "{d}/no-such-workdir", "--user", "1"], 4)])
def test_debug_adds_the_traceback_and_keeps_the_exit_code(tmp_path, args, code):
    args = [a.replace("{d}", str(tmp_path)) for a in args]
    plain = invoke(*args)
    debug = invoke("--debug", *args)
    assert plain.exit_code == debug.exit_code == code, (plain.output, debug.output)
    assert "Traceback" not in plain.stderr and "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == plain.stderr.strip().splitlines()[-1]
