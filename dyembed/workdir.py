"""The Python API: one work directory, the pipeline's steps as methods (docs/api.md).

    wd = dyembed.Workdir("work", settings={"encode.encoder": "hashing"})
    wd.preprocess(events=events_df, items=items_df)   # paths, pandas DataFrames or Arrow tables
    wd.encode(); wd.train(protocol="loo")
    report = wd.evaluate()                            # Report: .metrics DataFrame, ["models"], .to_dict()
    recs = wd.recommend(["42", "7"], k=10)            # DataFrame: user_id, rank, item_id, score, text, …
    wd.update(new_events_df)                          # the nightly step

Every method calls the very library function its CLI command calls (the commands in cli/ are
shells over the same functions), with the configuration resolved by the same rule:
built-in defaults < `config` (a TOML file or built-in name; without one the work dir's own
config.toml) < `settings` given to Workdir < the method's keyword arguments. Errors are the
same DyembedError subclasses the CLI turns into exit codes (ConfigError 2, InputDataError 3,
StateError 4). Importing this module imports no TensorFlow; train/evaluate/encode do when they run.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dyembed.config import Config, resolve_workdir_config
from dyembed.errors import ConfigError

__all__ = ["Workdir", "Report"]


class Report(Mapping):
    """The evaluation report (schema: docs/metrics.md) as a read-only mapping, plus tables."""

    def __init__(self, data: dict[str, Any]):
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        primary = self._data["primary_metric"]
        scores = ", ".join(f"{m} {r['per_event'][primary]:.4f}" for m, r in self._data["models"].items()
                           if r["per_event"].get(primary) is not None)
        return f"<Report {self._data['protocol']} · {primary}: {scores}>"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe copy (what `dyembed evaluate --json` prints)."""
        from dyembed.evaluate.report import jsonable

        return jsonable(copy.deepcopy(self._data))

    @property
    def metrics(self):
        """pandas DataFrame: one row per model, the per-event metrics (recall@K, ndcg@K, mrr)."""
        import pandas as pd

        rows = {name: res["per_event"] for name, res in self._data["models"].items()}
        return pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")


def _is_table(value: Any) -> bool:
    """A pandas DataFrame or an Arrow table (anything else is taken as a path)."""
    module = type(value).__module__
    return (module.startswith("pandas") and hasattr(value, "columns")) or (module.startswith("pyarrow") and hasattr(value, "schema"))


@contextmanager
def _as_paths(**inputs: Any) -> Iterator[dict[str, str | None]]:
    """Paths for the inputs: tables are written to a temporary Parquet file (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="dyembed-api-") as tmp:
        paths: dict[str, str | None] = {}
        for name, value in inputs.items():
            if value is None:
                paths[name] = None
            elif _is_table(value):
                import pyarrow as pa
                import pyarrow.parquet as pq

                table = value if isinstance(value, pa.Table) else pa.Table.from_pandas(value, preserve_index=False)
                path = Path(tmp) / f"{name}.parquet"
                pq.write_table(table, path)
                paths[name] = str(path)
            else:
                paths[name] = str(Path(value))
        yield paths


class Workdir:
    """A dyembed work directory (created by `preprocess`).

    `config`: a TOML file or built-in config name (default: the work dir's config.toml when it
    exists). `settings`: {"section.key": value} applied over it for every call (like `--set`).
    `user_id_salt`: for work dirs preprocessed with hashed user ids (default
    $DYEMBED_USER_ID_SALT)."""

    def __init__(self, path: str | Path, *, config: str | Path | None = None,
                 settings: Mapping[str, Any] | None = None, user_id_salt: str | None = None):
        from dyembed.preprocess.pseudonym import salt_from

        self.path = Path(path)
        self._config_file = config
        self._settings = dict(settings or {})
        self._salt = salt_from(user_id_salt, os.environ)

    def __repr__(self) -> str:
        return f"Workdir({str(self.path)!r})"

    def config(self, **flags: Any) -> Config:
        """The resolved Config a call would use; `flags` are {"section.key": value} on top."""
        return resolve_workdir_config(self._config_file, None, {**self._settings, **flags}, self.path)

    # ------------------------------------------------------------------ the steps

    def preprocess(self, events: Any = None, items: Any = None, *, input: str | Path | None = None,
                   format: str | None = None, append: bool = False, allow_late: str | None = None) -> dict[str, Any]:
        """Validate and index raw logs: `events` / `items` are paths, DataFrames or Arrow tables
        (columns as data.user_col / item_col / time_col …), or `input` a built-in format's directory."""
        from dyembed.preprocess.run import preprocess

        with _as_paths(events=events, items=items) as paths:
            flags = {"data.input": str(input) if input is not None else None, "data.events": paths["events"],
                     "data.items": paths["items"], "data.format": format}
            cfg = self.config(**{k: v for k, v in flags.items() if v is not None})
            if input is not None:  # a new input directory replaces the files remembered in config.toml
                cfg.data.events, cfg.data.items = paths["events"], paths["items"]
            summary = preprocess(self.path, cfg, append=append, allow_late=allow_late, user_id_salt=self._salt)
        self._forget_tables(events=events, items=items)
        return summary

    def _forget_tables(self, **inputs: Any) -> None:
        """config.toml remembers the input files; a table's temporary file is gone, so remember none."""
        keys = [f"data.{name}" for name, value in inputs.items() if value is not None and _is_table(value)]
        path = self.path / "config.toml"
        if not keys or not path.is_file():
            return
        from dyembed.artefacts import write_text
        from dyembed.config import load_config, to_toml

        saved = load_config(path)
        for key in keys:
            setattr(saved.data, key.split(".")[1], None)
        write_text(path, to_toml(saved))

    def encode(self, model: str | None = None) -> dict[str, Any]:
        """Item texts → item_embeddings.parquet (`model`: a local model dir, a cached hub id or 'hashing')."""
        from dyembed.encode.run import encode

        return encode(self.path, self.config(), model=model)

    def train(self, *, protocol: str | None = None, epochs: int | None = None, resume: bool = False,
              update_global: bool = False, device: str | None = None) -> dict[str, Any]:
        """Fit θ and write the state (`resume`: only the events after the state's watermark)."""
        from dyembed.replay.train import train

        cfg = self.config(**_given({"train.protocol": protocol, "train.epochs": epochs, "runtime.device": device}))
        return train(self.path, cfg, resume=resume, update_global=update_global)

    def evaluate(self, *, protocol: str | None = None, ks: Sequence[int] | None = None, mask_seen: str | None = None,
                 baselines: Sequence[str] | None = None, json_path: str | Path | None = None,
                 device: str | None = None) -> Report:
        """Offline metrics of the trained state and the baselines (writes `json_path` when given)."""
        from dyembed.evaluate.run import evaluate

        cfg = self.config(**_given({"evaluate.protocol": protocol, "evaluate.ks": list(ks) if ks else None,
                                    "evaluate.mask_seen": mask_seen, "runtime.device": device,
                                    "evaluate.baselines": list(baselines) if baselines is not None else None}))
        return Report(evaluate(self.path, cfg, json_path=json_path))

    def recommend(self, users: str | Sequence[str] | None = None, k: int = 10, *, mask_seen: str | bool | None = None,
                  allow_unknown: bool = False, arrow: bool = False):
        """Top-k items per user as a pandas DataFrame (an Arrow table with `arrow=True`): columns
        user_id, rank, item_id, score, text, cold_start, unknown. `users=None`: every user.
        `mask_seen`: auto | on | off (True / False for on / off; None: evaluate.mask_seen)."""
        import pyarrow as pa

        from dyembed.evaluate.recommend import recommend

        setting = {True: "on", False: "off"}.get(mask_seen, mask_seen) if isinstance(mask_seen, bool) else mask_seen
        if isinstance(users, str):
            users = [users]
        cfg = self.config()
        if users is None:  # every user: streamed to a file in blocks, read back
            with tempfile.TemporaryDirectory(prefix="dyembed-api-") as tmp:
                import pyarrow.parquet as pq

                out = Path(tmp) / "recommendations.parquet"
                recommend(self.path, cfg, k=k, mask_seen=setting, out=out, user_id_salt=self._salt)
                table = pq.read_table(out)
        else:
            if not users:
                raise ConfigError("recommend: no user ids given (users=None recommends for every user)")
            summary = recommend(self.path, cfg, user_ids=list(users), k=k, mask_seen=setting,
                                allow_unknown=allow_unknown, user_id_salt=self._salt)
            from dyembed.evaluate.recommend import output_schema

            table = pa.Table.from_pylist(summary["rows"], schema=output_schema())
        return table if arrow else table.to_pandas()

    def update(self, events: Any, items: Any = None, *, device: str | None = None) -> dict[str, Any]:
        """The nightly step: append `events` (path, DataFrame or Arrow table), encode new `items`,
        replay the new events into the state (θ frozen), score the new window."""
        from dyembed.update import update

        cfg = self.config(**_given({"runtime.device": device}))
        with _as_paths(events=events, items=items) as paths:
            summary = update(self.path, cfg, new_log=paths["events"], new_items=paths["items"], user_id_salt=self._salt)
        self._forget_tables(events=events, items=items)
        return summary


def _given(flags: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in flags.items() if v is not None}
