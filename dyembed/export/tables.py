"""What an export serves, gathered from a trained work dir in numpy (no TensorFlow).

The same inputs `dyembed recommend` scores with (dyembed.replay.api.load_trained: the serving
state, θ, lineage checked) plus what the serving signatures need to move users on by
themselves: the rule's settings, the optimiser slots, the recent-item rings, the users' seen
items and the raw ids of users and items.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dyembed.replay.spec import RuleSpec
from dyembed.replay.state import UserState
from dyembed.replay.theta import Theta


@dataclass
class ServingTables:
    """Everything the SavedModel holds, as numpy arrays (rows indexed by item_idx / user_idx)."""

    theta: Theta  # P, b, τ, α, u0, W, β, decays, logq (E folded into V)
    V: np.ndarray  # [n_items, d] float32: X P + E, the item vectors recommend scores with
    item_ids: np.ndarray  # [n_items] str
    user_ids: np.ndarray  # [n_users] str: the state's users (users.parquet rows below the state's n_users)
    users: UserState  # the serving state
    seen_indptr: np.ndarray  # [n_users + 1] int64: CSR of each user's items in events.parquet
    seen_indices: np.ndarray  # [nnz] int32
    spec: RuleSpec
    uses_weights: bool  # the rule multiplies each event's gradient by its weight (model.use_weights + a weight column)
    num_negatives: int  # sampled loss: shared negatives per step
    seed: int  # sampled loss: base seed of the negatives drawn in update_and_recommend
    log_last_ts: int  # the exported log's latest time: `update` treats older new events as late
    allow_late: str  # data.allow_late: drop (the default) or clamp such events; keep merges them
    info: dict[str, Any] = field(default_factory=dict)  # state version, watermark, fingerprint… for export.json

    @property
    def n_items(self) -> int:
        return int(self.V.shape[0])

    @property
    def n_users(self) -> int:
        return int(self.users.n_users)

    @property
    def dim(self) -> int:
        return int(self.V.shape[1])

    @property
    def feature_dim(self) -> int:
        return int(self.theta.P.shape[0])

    @property
    def history(self) -> int:
        return self.users.history

    def cold(self) -> np.ndarray:
        """Users recommend serves the cold-start list (no replayed event yet: they sit at u0)."""
        return np.asarray(self.users.count) == 0

    def new_item_bias(self) -> float:
        """b of an item added after training (theta.PARAMS: the median of the trained rows)."""
        return float(np.median(self.theta.b))


def _ids(path: Path, idx_col: str, id_col: str, n: int) -> np.ndarray:
    import pyarrow.parquet as pq

    from dyembed.errors import InputDataError

    table = pq.read_table(path, columns=[idx_col, id_col]).sort_by(idx_col)
    idx = table.column(idx_col).to_numpy()
    if len(idx) < n or not np.array_equal(idx[:n], np.arange(n)):
        raise InputDataError(f"{path}: {idx_col} must be 0..{n - 1} in order for the {n:,} rows the state has")
    return np.asarray(table.column(id_col).to_pylist()[:n], dtype=object)


def load_tables(workdir: str | Path) -> ServingTables:
    """The serving tables of `workdir` (StateError, exit 4: no state, corrupt, foreign lineage)."""
    from dyembed.artefacts import require_file
    from dyembed.evaluate.run import load_event_log
    from dyembed.replay import api
    from dyembed.replay.seen import seen_items
    from dyembed.state_versions import version_of

    workdir = Path(workdir)
    trained = api.load_trained(workdir)
    V = np.asarray(trained.item_matrix(), np.float32)
    trained.release_features()
    users = trained.state
    n_users = users.n_users
    item_ids = _ids(require_file(workdir / "items.parquet", "items file"), "item_idx", "item_id", trained.n_items)
    user_ids = _ids(require_file(workdir / "users.parquet", "users file"), "user_idx", "user_id", n_users)
    # seen items: recommend's definition (every event of events.parquet), for the state's users
    log = load_event_log(workdir)
    mine = log.user_idx < n_users
    seen = seen_items(n_users, log.user_idx[mine], log.item_idx[mine])
    cfg = trained.config
    has_weight_column = _has_weight_column(workdir)
    manifest = trained.manifest
    encode_fp = _encoder_fingerprint(workdir)
    info = {
        "state_version": version_of(manifest),
        "watermark": manifest.get("watermark"),
        "log_rows": int(len(log)),
        "allow_late": cfg.data.allow_late,
        "encoder_fingerprint": encode_fp,
        "model": {"rule": cfg.model.rule, "loss": cfg.model.loss, "dim": cfg.model.dim, "history": cfg.model.history,
                  "context": cfg.model.context, "repeat": cfg.model.repeat, "user_init": cfg.model.user_init,
                  "decay_half_life_days": cfg.model.decay_half_life_days},
    }
    return ServingTables(theta=trained.theta, V=V, item_ids=item_ids, user_ids=user_ids, users=users,
                         seen_indptr=seen.indptr, seen_indices=seen.indices, spec=trained.spec,
                         uses_weights=bool(cfg.model.use_weights and has_weight_column),
                         num_negatives=int(cfg.model.num_negatives), seed=int(cfg.train.seed),
                         log_last_ts=int(log.ts.max()) if len(log) else 0, allow_late=cfg.data.allow_late, info=info)


def _has_weight_column(workdir: Path) -> bool:
    import pyarrow.parquet as pq

    return "weight" in pq.ParquetFile(workdir / "events.parquet").schema_arrow.names


def _encoder_fingerprint(workdir: Path) -> Any:
    from dyembed.artefacts import read_json

    path = workdir / "encode_manifest.json"
    if not path.is_file():
        return None
    manifest = read_json(path, "encode manifest")
    return {"id": manifest.get("fingerprint_id"), **(manifest.get("fingerprint") or {})}
