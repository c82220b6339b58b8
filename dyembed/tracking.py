"""What a run records for the humans who look at it later: TensorBoard event files (train, evaluate,
update), the library versions in every manifest, and which state a metrics file scored.

TensorBoard: `train.tensorboard` (`--tensorboard DIR` on train, evaluate and update) is one log
directory per work dir; each command writes its own run under it (DIR/train, DIR/evaluate,
DIR/update), so one `tensorboard --logdir DIR` shows them side by side. Scalars go through
tf.summary.write (no tensorboard package needed to write); the hyper-parameters through the
tensorboard package's hparams plugin when the `tracking` extra is installed
(`pip install 'dyembed[tracking]'`, which also gives the `tensorboard` command to open them), and
always as a text summary of the resolved config.
"""

from __future__ import annotations

import math
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

LIBRARIES = ("numpy", "pyarrow", "pandas", "tensorflow", "tf-keras", "transformers", "tokenizers")


def library_versions() -> dict[str, str | None]:
    """dyembed, Python and the numerical libraries as installed (null: not installed). Read from the
    package metadata: nothing is imported, so recording them costs no TensorFlow start-up."""
    from dyembed import __version__

    versions: dict[str, str | None] = {"dyembed": __version__, "python": platform.python_version()}
    for dist in LIBRARIES:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def state_record(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Which state a report scored: version, creation time, watermark, the encoder's fingerprint
    (dyembed/lineage.py: vectors.encoder) and the versions that state was written with."""
    lineage = manifest.get("lineage") or {}
    return {"version": manifest.get("version"), "created": manifest.get("created"),
            "watermark_rows": (manifest.get("watermark") or {}).get("rows"),
            "encoder_fingerprint": (lineage.get("vectors") or {}).get("encoder"),
            "dyembed_version": manifest.get("dyembed_version"), "libraries": manifest.get("libraries")}


def flat_hparams(cfg_dict: Mapping[str, Mapping[str, Any]], sections: tuple[str, ...] = ("model", "train")) -> dict[str, Any]:
    """{"model.dim": 64, …}: the hyper-parameters TensorBoard's hparams plugin can show (scalars,
    strings, bools; lists as text)."""
    out: dict[str, Any] = {}
    for section in sections:
        for key, value in (cfg_dict.get(section) or {}).items():
            if value is None:
                continue
            out[f"{section}.{key}"] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return out


class Run:
    """One command's TensorBoard run (DIR/<name>); a no-op when `logdir` is None."""

    def __init__(self, logdir: str | Path | None, name: str):
        self.writer = None
        if not logdir:
            return
        from dyembed.envcheck import import_tensorflow

        tf = import_tensorflow()
        from tensorflow.core.framework import summary_pb2

        self.tf = tf
        self._meta = {kind: summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name=kind)).SerializeToString() for kind in ("scalars", "text")}
        self.path = Path(logdir) / name
        self.path.mkdir(parents=True, exist_ok=True)
        self.writer = tf.summary.create_file_writer(str(self.path))

    def scalars(self, step: int, values: Mapping[str, float | None]) -> None:
        if self.writer is None:
            return
        tf = self.tf
        with self.writer.as_default():
            for name, value in values.items():
                if value is not None and math.isfinite(float(value)):
                    tf.summary.write(name, tf.constant(float(value), tf.float32), step=step, metadata=self._meta["scalars"])
        self.writer.flush()

    def text(self, step: int, name: str, value: str) -> None:
        if self.writer is None:
            return
        tf = self.tf
        with self.writer.as_default():
            tf.summary.write(name, tf.constant(value), step=step, metadata=self._meta["text"])
        self.writer.flush()

    def hparams(self, step: int, values: Mapping[str, Any], config_toml: str | None = None) -> bool:
        """The hyper-parameters: hparams plugin (with the tracking extra) and the config as text.
        Returns whether the hparams plugin wrote them."""
        if self.writer is None:
            return False
        if config_toml:
            self.text(step, "config", "```\n" + config_toml + "\n```")
        try:
            from tensorboard.plugins.hparams import api as hp
        except ImportError:  # the tracking extra is not installed: the text summary above only
            return False
        with self.writer.as_default():
            hp.hparams(dict(values), trial_id=str(self.path))
        self.writer.flush()
        return True

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def log_report(logdir: str | Path | None, report: Mapping[str, Any], state_config: Any) -> None:
    """evaluate → DIR/evaluate: every model's per-event metrics at step = the state version scored,
    the state facts as text, and the state's hyper-parameters (what was trained is what is scored)."""
    if not logdir:
        return
    import json

    from dyembed.config import to_toml

    run = Run(logdir, "evaluate")
    step = int(report["state"].get("version") or 0)
    try:
        run.scalars(step, {f"{report['protocol']}/{model}/{metric}": value
                           for model, res in report["models"].items() for metric, value in res["per_event"].items()})
        run.text(step, "state", json.dumps(report["state"], default=str))
        run.hparams(step, {**flat_hparams(state_config.to_dict()), "evaluate.protocol": report["protocol"],
                           "state.version": step}, to_toml(state_config))
    finally:
        run.close()


def log_update(logdir: str | Path | None, summary: Mapping[str, Any], cfg: Any) -> None:
    """update → DIR/update: the new window's metrics, counts and durations at step = the new state version."""
    if not logdir:
        return
    import json

    from dyembed.config import to_toml

    run = Run(logdir, "update")
    step = int(summary.get("state_version") or 0)
    metrics = (summary.get("metrics") or {}).get("per_event") or {}
    try:
        run.scalars(step, {**{f"window/{m}": v for m, v in metrics.items()},
                           **{f"counts/{k}": summary.get(k) for k in ("events_added", "events_rejected", "events_replayed",
                                                                      "users_updated", "new_users", "new_items")},
                           **{f"seconds/{k}": v for k, v in (summary.get("durations") or {}).items()}})
        run.text(step, "update", json.dumps({k: summary.get(k) for k in ("status", "new_log", "new_log_sha256",
                                                                         "state_version_before", "state_version",
                                                                         "watermark")}, default=str))
        run.hparams(step, {**flat_hparams(cfg.to_dict()), "state.version": step}, to_toml(cfg))
    finally:
        run.close()
