"""Device and threading setup for TensorFlow (`[runtime]` config, `--device`), and the memory the
chosen device has for score blocks."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

from dyembed.config import RuntimeConfig
from dyembed.envcheck import import_tensorflow
from dyembed.errors import ConfigError

log = logging.getLogger(__name__)

BLOCK_SHARE = 0.25  # share of a GPU's free memory one score block (with its temporaries) may take


def configure_runtime(runtime: RuntimeConfig) -> str:
    """Apply runtime.device / runtime.threads; returns the device replay will use ("cpu" or "gpu").

    gpu without a visible GPU is a ConfigError (exit 2). GPUs get memory growth (TensorFlow takes
    device memory as it needs it, not all of it up front). Settings that TF refuses because its
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
        elif gpus:
            for gpu in gpus:
                tf.config.experimental.set_memory_growth(gpu, True)
        if runtime.threads > 0:
            tf.config.threading.set_intra_op_parallelism_threads(runtime.threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, runtime.threads))
    except RuntimeError as exc:  # context already initialised in this process
        log.debug("runtime settings not applied: %s", exc)
    if runtime.device == "cpu" or not gpus:
        return "cpu"
    return "gpu"


def apply_device(device: str, *, threads: int = 0) -> str:
    """The `--device auto|cpu|gpu` choice of any TensorFlow command, applied before TensorFlow
    builds its context; returns "cpu" or "gpu" (ConfigError, exit 2, for gpu without one)."""
    if device not in ("auto", "cpu", "gpu"):
        raise ConfigError(f"--device must be auto, cpu or gpu, got {device!r}")
    return configure_runtime(RuntimeConfig(device=device, threads=threads))


def gpu_free_mb() -> float | None:
    """Free memory of the first GPU in MiB (nvidia-smi), None without one or without the tool."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return None
    try:
        out = subprocess.run([tool, "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        return float(out.split()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def host_available_mb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def block_budget_mb(configured: float, device: str) -> float:
    """The cap on one [lanes, n_items] score block: on a GPU a share of its free memory (the
    configured runtime.max_block_mb is a CPU-sized default, far below what a GPU holds), on the
    CPU the configured value, lowered when the host has less than 4× that available."""
    if device == "gpu":
        free = gpu_free_mb()
        if free is not None:
            return max(float(configured), BLOCK_SHARE * free)
        return float(configured)
    avail = host_available_mb()
    return float(configured) if avail is None else max(16.0, min(float(configured), avail / 4))


def current_device() -> str:
    """"gpu" when TensorFlow places work on a visible GPU, else "cpu"."""
    tf = import_tensorflow()
    return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"
