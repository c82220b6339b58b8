"""dyembed: dynamic user interest embeddings for recommender systems.

Importing this package is cheap: TensorFlow and transformers are imported only by the modules
that need them (`dyembed.replay`, `dyembed.encode.hf`), so `dyembed --help` stays fast.
"""

__version__ = "0.1.0"

from dyembed.errors import ConfigError, DyembedError, InputDataError, StateError  # noqa: E402

__all__ = ["__version__", "DyembedError", "ConfigError", "InputDataError", "StateError"]
