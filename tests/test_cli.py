"""The CLI shell: help, version, global flags, errors → one line + exit code."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from dyembed import __version__
from dyembed_cli.app import app

runner = CliRunner()


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("synth", "preprocess", "encode", "train", "tune", "evaluate", "recommend", "demo"):
        assert command in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"dyembed {__version__}"


def test_bad_flag_is_usage_error():
    result = runner.invoke(app, ["synth", "--out", "x", "--no-such-flag"])
    assert result.exit_code == 2
    assert "No such option" in result.output


def test_bad_config_key_exits_2_naming_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[synth]\nuserz = 3\n")
    result = runner.invoke(app, ["synth", "--out", str(tmp_path / "o"), "--config", str(bad)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == f"error: unknown config key 'synth.userz' ({bad}); did you mean 'synth.users'?"
    assert "Traceback" not in result.output


def test_bad_set_value_exits_2():
    result = runner.invoke(app, ["synth", "--out", "x", "--set", "synth.users=many"])
    assert result.exit_code == 2
    assert "error: config key 'synth.users' must be an integer" in result.output


def test_synth_writes_the_world(tmp_path):
    result = runner.invoke(app, ["--quiet", "synth", "--out", str(tmp_path), "--users", "20", "--items", "30", "--events", "500", "--topics", "3"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "events.csv").read_text().count("\n") == 500 + 12 + 1  # events + malformed + header
    assert result.output == ""  # --quiet: nothing on the terminal


def test_help_is_light_and_python_m_works():
    """`dyembed --help` must not import TensorFlow or transformers (it has to answer fast)."""
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from dyembed_cli.app import app\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0\n"
        "heavy = [m for m in ('tensorflow', 'transformers', 'tf_keras', 'torch') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == ""
    proc = subprocess.run([sys.executable, "-m", "dyembed", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"dyembed {__version__}"
