"""Device and threading setup for TensorFlow (`[runtime]` config, `--device`)."""

from __future__ import annotations

import logging

from dyembed.config import RuntimeConfig
from dyembed.envcheck import import_tensorflow
from dyembed.errors import ConfigError

log = logging.getLogger(__name__)


def configure_runtime(runtime: RuntimeConfig) -> str:
    """Apply runtime.device / runtime.threads; returns the device replay will use ("cpu" or "gpu").

    gpu without a visible GPU is a ConfigError (exit 2). Settings that TF refuses because its
    context already exists (a second call in one process) are logged and left as they are.
    """
    tf = import_tensorflow()
    gpus = tf.config.list_physical_devices("GPU")
    if runtime.device == "gpu" and not gpus:
        raise ConfigError("--device gpu (runtime.device) but TensorFlow sees no GPU on this machine; "
                          "use --device cpu or auto, or install tensorflow[and-cuda] with a CUDA driver")
    try:
        if runtime.device == "cpu" and gpus:
            tf.config.set_visible_devices([], "GPU")
        if runtime.threads > 0:
            tf.config.threading.set_intra_op_parallelism_threads(runtime.threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, runtime.threads))
    except RuntimeError as exc:  # context already initialised in this process
        log.debug("runtime settings not applied: %s", exc)
    if runtime.device == "cpu" or not gpus:
        return "cpu"
    return "gpu"
