"""`dyembed evaluate`: rank every test event with the dynamic model and the baselines, in one run.

Protocols (roles from dyembed.split; see docs/metrics.md):
- loo       each user's last event is the test target, the one before it validation; users with
            fewer than 3 events are counted and skipped. Seen items are masked by default.
- temporal  every event at or after a global cut is a test event, ranked with the user's state
            before it, then the state takes its dynamic step (θ frozen). No masking by default.

All models rank the same test events over the full catalogue with pessimistic ties; the
"history" of the test period is every non-test row (train + validation), so:
- the dynamic model (`dyembed`) starts from the state's evaluation snapshot (`state/eval/`: the
  users at the boundary of the split θ was fitted on; the serving state has also consumed the test
  rows and is never used here), first replays the history rows the snapshot has not consumed yet
  (rows of a later cut, or appended since `train`; with updates, unscored), then the test rows
  (scored, then updated);
- `frozen` does the same but with the updates switched off during the test rows;
- `static` is a free vector per user fitted offline on the history rows, never updated;
- the numpy baselines (pop, recent-pop, random, history-mean) are in baselines.py.
Seen-item masking (dyembed.masking decides whether; dyembed.replay.seen defines what), when on,
removes from each test event's ranking the items its user consumed before it — its history rows
and, in the prequential temporal protocol, its earlier test events; the target is never masked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dyembed.artefacts import require_file
from dyembed.config import Config, EvaluateConfig, check_values
from dyembed.errors import ConfigError, InputDataError, StateError
from dyembed.evaluate import baselines as bl
from dyembed.evaluate.breakdown import breakdown, slices_of_test_events
from dyembed.evaluate.metrics import RankAccumulator, TopKAccumulator, metric_names, popularity_percentile
from dyembed.evaluate.report import SCHEMA, validate_report, write_plot, write_rank_dump, write_report
from dyembed.lock import settle_interrupted_writes
from dyembed.masking import decide as decide_masking
from dyembed.replay.seen import seen_before_events, seen_items
from dyembed.tracking import log_report, state_record

log = logging.getLogger(__name__)

# progress(model name, test events done, test events total)
Progress = Callable[[str, int, int], None]

DESCRIPTIONS = {
    "dyembed": "dynamic user vectors, updated after every event (θ frozen)",
    "frozen": "dynamic model with test-time updates switched off (state frozen at the cut)",
    "static": "one free vector per user fitted offline on the history, never updated",
    "pop": "item popularity over the history rows",
    "recent-pop": "item popularity in a sliding time window before the event",
    "random": "uniform random scores",
    "history-mean": "decayed mean of the user's item vectors (no learning on the user side)",
}


# --------------------------------------------------------------------------- inputs


def load_event_log(workdir: Path) -> bl.EventLog:
    """events.parquet columns as numpy; catalogue and user counts from items/users.parquet."""
    import pyarrow.parquet as pq

    events_path = require_file(workdir / "events.parquet", "events file")
    items_path = require_file(workdir / "items.parquet", "items file")
    users_path = require_file(workdir / "users.parquet", "users file")
    try:
        table = pq.read_table(events_path, columns=["user_idx", "item_idx", "ts"])
        n_items = pq.ParquetFile(items_path).metadata.num_rows
        n_users = pq.ParquetFile(users_path).metadata.num_rows
    except Exception as exc:  # noqa: BLE001 - a missing column or a file that is not parquet
        raise InputDataError(f"cannot read the work dir's parquet files in {workdir}: {exc}") from None
    user_idx = table.column("user_idx").to_numpy().astype(np.int32, copy=False)
    item_idx = table.column("item_idx").to_numpy().astype(np.int32, copy=False)
    ts = table.column("ts").to_numpy().astype(np.int64, copy=False)
    if user_idx.size and (user_idx.max() >= n_users or item_idx.max() >= n_items):
        raise InputDataError(f"events file {events_path} refers to users/items beyond users.parquet/items.parquet")
    return bl.EventLog(user_idx, item_idx, ts, int(n_users), int(n_items))


def read_ids(path: Path, column: str) -> np.ndarray:
    import pyarrow.parquet as pq

    idx_col = "user_idx" if column == "user_id" else "item_idx"
    table = pq.read_table(path, columns=[idx_col, column]).sort_by(idx_col)
    return np.asarray(table.column(column).to_pylist(), dtype=object)


def check_config(ev: EvaluateConfig) -> list[str]:
    """Validate the [evaluate] keys; returns the baselines to run (in a fixed order)."""
    if not ev.ks or any(k < 1 for k in ev.ks):
        raise ConfigError(f"config key 'evaluate.ks' must be a non-empty list of positive integers, got {ev.ks!r}")
    unknown = [b for b in ev.baselines if b not in bl.ALL_BASELINES]
    if unknown:
        raise ConfigError(f"config key 'evaluate.baselines': unknown baseline '{unknown[0]}' "
                          f"(choices: {', '.join(bl.ALL_BASELINES)})")
    if ev.protocol == "temporal" and ev.test_start is None and not 0.0 < ev.test_fraction < 1.0:
        raise ConfigError(f"config key 'evaluate.test_fraction' must be between 0 and 1 (exclusive), got {ev.test_fraction!r}")
    for key in ("recent_window_days", "max_block_mb"):
        if getattr(ev, key) <= 0:
            raise ConfigError(f"config key 'evaluate.{key}' must be positive")
    if ev.history_half_life_events < 0 or ev.bootstrap < 0 or ev.static_epochs < 1 or ev.plot_buckets < 1:
        raise ConfigError("config keys evaluate.history_half_life_events and evaluate.bootstrap must be >= 0, "
                          "evaluate.static_epochs and evaluate.plot_buckets >= 1")
    return [b for b in bl.ALL_BASELINES if b in ev.baselines]


def make_roles(log_: bl.EventLog, ev: EvaluateConfig, validation_fraction: float = 0.0) -> tuple[np.ndarray, dict[str, Any]]:
    """Role per row (0 train, 1 validation, 2 test) and split facts; for temporal, the validation
    rows (the last `validation_fraction` of the rows before the cut, as `train` carves them) are
    history like the train rows and only change the counts."""
    from dyembed import split

    if len(log_) == 0:
        raise InputDataError("the work dir has no events: nothing to evaluate")
    if ev.protocol == "loo":
        roles = split.loo_split(log_.user_idx)
        return roles, {"skipped_users": split.loo_skipped_users(log_.user_idx)}
    roles = split.temporal_split(log_.ts, test_fraction=None if ev.test_start is not None else ev.test_fraction,
                                 test_start=ev.test_start, validation_fraction=validation_fraction)
    test = roles == 2
    cut = int(log_.ts[test].min()) if test.any() else (int(ev.test_start) if ev.test_start is not None else None)
    return roles, {"cut_ts": cut, "test_fraction": None if ev.test_start is not None else ev.test_fraction,
                   "test_start": ev.test_start, "skipped_users": 0}


# --------------------------------------------------------------------------- models


class _Ranked:
    """One model's output on the test rows."""

    def __init__(self, ranks: np.ndarray, top: np.ndarray | None, seconds: float):
        self.ranks, self.top, self.seconds = ranks, top, seconds


def _unconsumed_history(trained: Any, log_: bl.EventLog, roles: np.ndarray, protocol: str) -> np.ndarray:
    """History rows (non-test) that the evaluation snapshot has not folded in yet, in row order.

    The snapshot holds the users after every train and validation row of the split `train` fitted
    θ on (roles != 2 in state/eval/roles.npy); rows beyond that array were appended after `train`
    (θ frozen since: `train --resume --update-global` drops the snapshot)."""
    split = np.asarray(trained.split)
    if split.size > len(log_):
        raise StateError(f"the state was trained on {split.size} event rows but events.parquet has {len(log_)}; "
                         "rerun `dyembed train`")
    consumed = np.zeros(len(log_), dtype=bool)
    consumed[: split.size] = split != 2
    leaked = consumed & (roles == 2)
    if leaked.any():
        trained_with = trained.manifest.get("split", {}).get("protocol", "?")
        raise StateError(f"the trained state has already replayed {int(leaked.sum())} test events of this "
                         f"'{protocol}' split (it was trained with protocol '{trained_with}' or another cut); "
                         f"rerun `dyembed train {trained.workdir} --protocol {protocol}` (same test settings) "
                         "before evaluating this protocol")
    return np.flatnonzero((roles != 2) & ~consumed)


def _with_fresh_users(trained: Any, n_users: int):
    """The snapshot with rows for users n_old..n_users-1 at their initial state (as resume adds them)."""
    from dyembed.replay.state import UserState

    mcfg = trained.config.model
    fresh = UserState.fresh(n_users, trained.state.dim, trained.spec.n_slots, init=mcfg.user_init, u0=trained.prior(),
                            init_scale=mcfg.init_scale, history=trained.state.history)
    return trained.state.grown(n_users, fresh)


def _replay(trained: Any, log_: bl.EventLog, rows: np.ndarray, *, update: bool, exclude: Any, topk: int,
            state: Any = None, progress: Callable[[int], None] | None = None):
    from dyembed.replay import api

    return api.replay_ranks(trained, log_.user_idx[rows], log_.item_idx[rows], log_.ts[rows], update=update,
                            exclude=exclude, topk=topk, state=state, progress=progress)


def _rank_dynamic(trained, log_, warm_state, test_rows, *, update, exclude, topk, progress):
    out = _replay(trained, log_, test_rows, update=update, exclude=exclude, topk=topk, state=warm_state, progress=progress)
    return out.ranks, out.topk_items


def _rank_static(trained, log_, history_rows, test_rows, ev, *, exclude, topk, progress):
    from dyembed.replay import api
    from dyembed.replay.state import UserState

    vectors = api.fit_static_users(trained, log_.user_idx[history_rows], log_.item_idx[history_rows],
                                   epochs=ev.static_epochs, l2=ev.static_l2, seed=ev.seed)
    base = trained.state
    # a state holding the fitted vectors; with update=False the replay only scores with them
    # no recent items: the context and repeat terms stay silent, the score is the one fitted vector's
    recent = None if base.recent is None else np.full(np.shape(base.recent), -1, np.int32)
    state = UserState(U=np.asarray(vectors, np.float32), slots=base.slots, count=base.count, last_ts=base.last_ts,
                      recent=recent)
    out = _replay(trained, log_, test_rows, update=False, exclude=exclude, topk=topk, state=state, progress=progress)
    return out.ranks, out.topk_items


def _numpy_scorer(name: str, log_: bl.EventLog, history_rows: np.ndarray, ev: EvaluateConfig, trained: Any):
    if name == "pop":
        return bl.PopScorer(log_, history_rows)
    if name == "recent-pop":
        return bl.RecentPopScorer(log_, ev.recent_window_days * 86_400.0)
    if name == "random":
        return bl.RandomScorer(log_.n_items, ev.seed)
    if name == "history-mean":
        return bl.HistoryMeanScorer(log_, trained.item_matrix(), history_rows, ev.history_half_life_events)
    raise AssertionError(name)


# --------------------------------------------------------------------------- the run


def _lift(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return (value - base) / base


def evaluate(workdir: str | Path, cfg: Config, *, json_path: str | Path | None = None,
             dump_ranks: str | Path | None = None, plot: str | Path | None = None,
             progress: Progress | None = None, models: list[str] | None = None) -> dict[str, Any]:
    """Evaluate the trained model in `workdir` and the configured baselines; returns the report
    (schema in report.py / docs/metrics.md), also written to `json_path` when given."""
    started = time.perf_counter()
    workdir = Path(workdir)
    settle_interrupted_writes(workdir)  # a writer killed mid-rename: finish it first
    check_values(cfg)
    ev = cfg.evaluate
    baselines = check_config(ev)
    ks = sorted(set(int(k) for k in ev.ks))
    log_ = load_event_log(workdir)
    roles, split_info = make_roles(log_, ev, cfg.train.validation_fraction if cfg.train.validation else 0.0)
    test_rows = np.flatnonzero(roles == 2)
    if test_rows.size == 0:
        where = (f"no user has 3 or more events ({split_info['skipped_users']} users skipped)" if ev.protocol == "loo"
                 else f"no event at or after the cut ts {split_info['cut_ts']}")
        raise InputDataError(f"empty test split for protocol '{ev.protocol}' in {workdir}: {where}")
    history_rows = np.flatnonzero(roles != 2)
    masking = decide_masking(ev.mask_seen, log_.user_idx[history_rows], log_.item_idx[history_rows],
                             ev.repeat_threshold)
    masked = masking.masked
    notes: list[str] = []

    from dyembed.replay import api

    names = ["dyembed"] + baselines
    if ev.protocol == "loo" and "frozen" in names:
        names.remove("frozen")
        notes.append("frozen is only defined for the temporal protocol (one test event per user in loo)")
    if models is not None:
        names = [n for n in names if n in models]

    trained = api.load_trained(workdir, view="eval", runtime=cfg.runtime)  # the snapshot at the split boundary, lineage checked
    if log_.n_users > trained.n_users:  # users appended since `train` start where new users start
        trained.state = _with_fresh_users(trained, log_.n_users)
    # build what needs the [n_items, D] item features, then free them (1.5 GB at 1M items × D 384):
    # the replay engine keeps V = X P + E, history-mean and static the numpy V
    if {"dyembed", "frozen", "static"} & set(names):
        trained.engine()
    if {"history-mean", "static"} & set(names):
        trained.item_matrix()
    trained.release_features()
    warmup = _unconsumed_history(trained, log_, roles, ev.protocol)
    appended = len(log_) - int(np.asarray(trained.split).size)
    if appended > 0:
        notes.append(f"{appended:,} event rows were appended after `train` (θ unchanged since): this split's history rows "
                     "among them were replayed into the evaluation snapshot before the test rows")
    # seen = the user's items before each test event: its history rows and its earlier test events
    exclude = None
    if masked:
        history_seen = seen_items(log_.n_users, log_.user_idx[history_rows], log_.item_idx[history_rows])
        exclude = seen_before_events(log_.n_users, log_.user_idx[test_rows], log_.item_idx[test_rows], history_seen)
    topk = max(ks)
    item_pct = popularity_percentile(np.bincount(log_.item_idx[history_rows], minlength=log_.n_items))

    results: dict[str, dict[str, Any]] = {}
    all_ranks: dict[str, np.ndarray] = {}
    warm_state = None
    for name in names:
        t0 = time.perf_counter()
        tick = (lambda done, _n=name: progress(_n, done, test_rows.size)) if progress else None
        if name in ("dyembed", "frozen"):
            if warm_state is None and warmup.size:  # fold in the history the state has not seen, once
                warm_state = _replay(trained, log_, warmup, update=True, exclude=None, topk=0).state
            ranks, top = _rank_dynamic(trained, log_, warm_state, test_rows, update=name == "dyembed",
                                       exclude=exclude, topk=topk, progress=tick)
        elif name == "static":
            ranks, top = _rank_static(trained, log_, history_rows, test_rows, ev, exclude=exclude, topk=topk,
                                      progress=tick)
        else:
            scorer = _numpy_scorer(name, log_, history_rows, ev, trained)
            ranks, top = bl.rank_rows(scorer, log_, test_rows, exclude=exclude, topk=topk,
                                      max_block_mb=ev.max_block_mb, progress=tick)
        ranks = np.asarray(ranks, dtype=np.int64)
        acc = RankAccumulator(ks, log_.n_users)
        acc.update(ranks, log_.user_idx[test_rows])
        res = acc.result(bootstrap=ev.bootstrap, seed=ev.seed)
        tk = TopKAccumulator(log_.n_items, ks, item_pct)
        if top is not None:
            tk.update(top)
        tk_res = tk.result()
        results[name] = {
            "kind": "dynamic" if name == "dyembed" else "baseline",
            "description": DESCRIPTIONS[name],
            "events": res["events"], "users": res["users"],
            "per_event": res["per_event"], "per_user": res["per_user"],
            "ci95_per_event": res["ci_per_event"], "ci95_per_user": res["ci_per_user"],
            "coverage": {f"@{k}": tk_res[f"coverage@{k}"] for k in ks},
            "pop_percentile": {f"@{k}": tk_res[f"pop_percentile@{k}"] for k in ks},
            "seconds": round(time.perf_counter() - t0, 3),
        }
        all_ranks[name] = ranks
        log.debug("%s: ndcg@%d %.4f", name, ks[0], res["per_event"][f"ndcg@{ks[0]}"] or 0.0)

    for name, res in results.items():
        res["lift"] = {base: {m: _lift(res["per_event"][m], results[base]["per_event"][m]) if base in results else None
                              for m in metric_names(ks)} for base in ("static", "pop")}

    # the same ranks per target-item warmness (0 = cold-item events) and per user history length
    slices = slices_of_test_events(log_.user_idx, log_.item_idx, roles, log_.n_items)
    by_slice = breakdown(all_ranks, log_.user_idx[test_rows], slices, ks, bootstrap=ev.bootstrap, seed=ev.seed)

    primary = f"ndcg@{10 if 10 in ks else ks[0]}"
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "workdir": str(workdir),
        "protocol": ev.protocol,
        "split": split_info,
        "masking": {**masking.to_dict(),
                    "seen_items": "items of the user's earlier events (history and earlier test events)"
                    if masked else "none"},
        "ks": ks,
        "counts": {
            "events": len(log_), "users": log_.n_users, "items": log_.n_items,
            "train_events": int((roles == 0).sum()), "validation_events": int((roles == 1).sum()),
            "test_events": int(test_rows.size), "test_users": int(np.unique(log_.user_idx[test_rows]).size),
            "skipped_users": int(split_info.get("skipped_users", 0)),
        },
        "bootstrap": {"rounds": ev.bootstrap, "level": 0.95, "unit": "user", "seed": ev.seed},
        "primary_metric": primary,
        "models": results,
        "breakdown": by_slice,
        "notes": notes,
        "config": {"evaluate": dict(vars(ev))},
        "state": state_record(trained.manifest),  # which state version and encoder these numbers score
        "seconds": 0.0,
    }
    if dump_ranks is not None:
        write_rank_dump(dump_ranks, [(n, test_rows, r) for n, r in all_ranks.items()],
                        user_idx=log_.user_idx, item_idx=log_.item_idx, ts=log_.ts,
                        user_ids=read_ids(workdir / "users.parquet", "user_id"),
                        item_ids=read_ids(workdir / "items.parquet", "item_id"), slices=slices)
        report["dump_ranks"] = str(dump_ranks)
    if plot is not None:
        k_time = 10 if 10 in ks else ks[0]
        write_plot(plot, all_ranks, log_.ts[test_rows], ks=ks, k_time=k_time, n_buckets=ev.plot_buckets,
                   title=f"{workdir.name} · {ev.protocol} · seen masked: {'yes' if masked else 'no'}")
        report["plot"] = str(plot)
    report["seconds"] = round(time.perf_counter() - started, 3)
    validate_report(report)
    if json_path is not None:
        write_report(json_path, report)
    log_report(cfg.train.tensorboard, report, trained.config)
    return report
