"""dyembed: dynamic user interest embeddings for recommender systems.

The Python API is `dyembed.Workdir` (docs/api.md). Importing this package is cheap: TensorFlow and transformers are imported only by the modules
that need them (`dyembed.replay`, `dyembed.encode.hf`), so `dyembed --help` stays fast.
"""

__version__ = "0.1.0"

from dyembed.errors import ConfigError, DyembedError, InputDataError, StateError  # noqa: E402

__all__ = ["__version__", "Workdir", "Report", "DyembedError", "ConfigError", "InputDataError", "StateError"]


def __getattr__(name: str):
    # dyembed.Workdir / dyembed.Report (the Python API, docs/api.md), imported on first use
    if name in ("Workdir", "Report"):
        from dyembed import workdir

        return getattr(workdir, name)
    raise AttributeError(f"module 'dyembed' has no attribute {name!r}")
