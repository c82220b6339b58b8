"""The import-time version check names what is wrong and what to install."""

from __future__ import annotations

from importlib import metadata

import pytest

from dyembed import envcheck
from dyembed.errors import EXIT_USAGE, ConfigError


def fake_versions(monkeypatch, **versions):
    def version(dist):
        key = dist.replace("-", "_")
        if versions.get(key) is None:
            raise metadata.PackageNotFoundError(dist)
        return versions[key]

    monkeypatch.setattr(envcheck.metadata, "version", version)


GOOD = {"tensorflow": "2.21.0", "tf_keras": "2.21.0", "transformers": "4.57.6"}


def test_supported_versions_pass(monkeypatch):
    fake_versions(monkeypatch, **GOOD)
    assert envcheck.check_transformers_versions() == "4.57.6"


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"tensorflow": None}, "TensorFlow is not installed"),
        ({"tensorflow": "2.15.1"}, "TensorFlow 2.15.1 is not supported"),
        ({"transformers": "5.0.0"}, "transformers 5.0.0 is not supported (transformers 5 removed the TensorFlow classes"),
        ({"transformers": None}, "transformers is not installed"),
        ({"tf_keras": None}, "tf-keras is not installed"),
        ({"tf_keras": "2.19.0"}, "tf-keras 2.19.0 does not match TensorFlow 2.21.0"),
    ],
)
def test_wrong_versions_say_what_to_install(monkeypatch, change, fragment):
    fake_versions(monkeypatch, **{**GOOD, **change})
    with pytest.raises(ConfigError) as info:
        envcheck.check_transformers_versions()
    assert fragment in str(info.value)
    assert "pip install" in str(info.value) and info.value.exit_code == EXIT_USAGE


def test_tensorflow_import_skips_keras3_but_leaves_it_importable():
    """import_tensorflow() does not drag in Keras 3 (and its pandas/matplotlib imports), and a later
    `import keras` still works: the sys.modules block is removed again."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from dyembed.envcheck import import_tensorflow\n"
        "tf = import_tensorflow()\n"
        "print(sorted(m for m in ('keras', 'matplotlib') if m in sys.modules))\n"
        "print(float(tf.reduce_sum(tf.ones([3]))))\n"
        "import keras.src.optimizers\n"
        "print('keras ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:3] == ["[]", "3.0", "keras ok"]
