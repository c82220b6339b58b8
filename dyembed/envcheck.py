"""Check the heavy dependencies once, at the import that needs them, with a message that says what to install.

transformers' TensorFlow classes run on tf-keras (Keras 2) and were removed in transformers 5;
TensorFlow ≥ 2.16 ships Keras 3 as `tf.keras`. A mismatch fails deep inside a model call with an
obscure error, so it is caught here instead.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from importlib import metadata

from dyembed.errors import ConfigError

_INSTALL_HINT = "install the supported versions with: pip install 'tensorflow>=2.16,<2.22' 'tf-keras>=2.16,<2.22' 'transformers>=4.45,<5'"


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _installed(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def check_tensorflow_versions() -> str:
    """Return TensorFlow's version, or raise ConfigError naming the problem."""
    tf_version = _installed("tensorflow") or _installed("tensorflow-cpu")
    if tf_version is None:
        raise ConfigError(f"TensorFlow is not installed; {_INSTALL_HINT}")
    if not (2, 16) <= _version_tuple(tf_version)[:2] < (3, 0):
        raise ConfigError(f"TensorFlow {tf_version} is not supported (need 2.16 or newer 2.x); {_INSTALL_HINT}")
    return tf_version


def check_transformers_versions() -> str:
    """transformers 4.45..4.x with a tf-keras that matches TensorFlow's minor version."""
    tf_version = check_tensorflow_versions()
    tr_version = _installed("transformers")
    if tr_version is None:
        raise ConfigError(f"transformers is not installed; {_INSTALL_HINT}")
    if not (4, 45) <= _version_tuple(tr_version)[:2] < (5, 0):
        raise ConfigError(
            f"transformers {tr_version} is not supported (transformers 5 removed the TensorFlow classes; need >=4.45,<5); {_INSTALL_HINT}"
        )
    keras2 = _installed("tf-keras") or _installed("tf_keras")
    if keras2 is None:
        raise ConfigError(f"tf-keras is not installed (transformers' TensorFlow models need Keras 2); {_INSTALL_HINT}")
    if _version_tuple(keras2)[:2] != _version_tuple(tf_version)[:2]:
        raise ConfigError(f"tf-keras {keras2} does not match TensorFlow {tf_version} (their minor versions must agree); {_INSTALL_HINT}")
    return tr_version


@contextlib.contextmanager
def _native_stderr_silenced():
    """Hide what TensorFlow's C++ start-up writes straight to file descriptor 2.

    TF 2.21 prints oneDNN/CUDA-probe notes from static initialisers before absl logging is set up,
    so TF_CPP_MIN_LOG_LEVEL cannot silence them. They are kept in a temp file and replayed only if
    the import fails, or always with DYEMBED_TF_LOGS=1.
    """
    if os.environ.get("DYEMBED_TF_LOGS") == "1":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


_TF = None


@contextlib.contextmanager
def _keras3_eager_load_skipped():
    """Skip the Keras 3 import that `import tensorflow` does at start-up.

    TF ≥ 2.16 imports `keras.src.optimizers` eagerly (for SavedModel registrations dyembed never
    uses); that pulls in all of Keras 3, pandas' arrow layer and matplotlib: measured +110 MB RSS
    and ~1 s per command. A None entry in sys.modules makes that one import fail at once with
    ImportError, which TensorFlow catches; the entry is removed afterwards, so `import keras` still
    works for anyone who wants it. (transformers' TF models use tf-keras, which is unaffected.)
    """
    name = "keras.src.optimizers"
    if name in sys.modules or os.environ.get("TF_USE_LEGACY_KERAS", "") in ("1", "true", "True"):
        yield
        return
    sys.modules[name] = None
    try:
        yield
    finally:
        if sys.modules.get(name, 0) is None:
            del sys.modules[name]


def import_tensorflow():
    """Import TensorFlow once, version-checked and without its start-up chatter; the one way dyembed imports it."""
    global _TF
    if _TF is not None:
        return _TF
    check_tensorflow_versions()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _native_stderr_silenced(), _keras3_eager_load_skipped():
        import tensorflow as tf

        tf.config.list_physical_devices()  # the CUDA probe logs here on a machine without a GPU
    _TF = tf
    return tf
