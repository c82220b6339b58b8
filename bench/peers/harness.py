"""The shared harness: dyembed's split, masking and rank/metric code around every peer.

One definition of each concept, all taken from dyembed:
- roles      `dyembed.evaluate.run.make_roles` (loo: last event test, the one before validation;
             temporal: global cut at `test_fraction`, validation = the last `validation_fraction`
             of the rows before the cut), the log from `load_event_log`;
- masking    `dyembed.masking.decide` on the stage's history rows; the excluded (seen) items of
             each ranked event from `dyembed.replay.seen.seen_before_events` (its user's history
             rows and earlier ranked rows: the one definition evaluate and train use);
- ranks      `dyembed.evaluate.baselines.rank_rows` (full ranking, pessimistic ties, the target
             never masked);
- metrics    `RankAccumulator` (per event / per user, user-bootstrap 95 % intervals).

Two stages, built the way `dyembed train` validates and `dyembed evaluate` tests:
- validation: history (= fit rows, and the rows masking is decided on) = train rows; the
  validation rows are ranked;
- test: history = train + validation rows; the test rows are ranked.
A sequential peer also sees, for each ranked row, the same user's earlier rows of the stage
(history rows and earlier ranked rows: prequential, as dyembed's own test replay), never a later
row and never a row of the other stage's targets (`UserHistories`).

`run_peer` tunes a peer on the validation stage (one score per grid point and masking setting,
NDCG@10 per event as `train` early-stops on), then reports the test stage once per masking setting.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dyembed.config import EvaluateConfig
from dyembed.errors import InputDataError
from dyembed.evaluate import baselines as bl
from dyembed.evaluate.metrics import RankAccumulator
from dyembed.evaluate.run import load_event_log, make_roles
from dyembed.masking import Masking, decide
from dyembed.replay.seen import EventSeen, seen_before_events, seen_items
from dyembed.split import TEST, TRAIN, VALIDATION

VALIDATION_METRIC = "ndcg@10"  # what train early-stops on (train.val_k = 10) and what every grid is scored by
SCORE_CACHE_BYTES = 1 << 30  # ranking one stage under two maskings keeps the scores when they fit in this


# --------------------------------------------------------------------------- per-event histories


class UserHistories:
    """For each row of a stage: the items of the same user's earlier rows among the stage's rows.

    Rows are in replay (time) order, so "earlier" is "lower row index". The stage's rows are its
    history rows and its ranked rows; a ranked row's own item is never part of its history.
    """

    def __init__(self, log: bl.EventLog, rows: np.ndarray):
        rows = np.unique(np.asarray(rows, dtype=np.int64))  # sorted = time order
        order = np.argsort(log.user_idx[rows], kind="stable")  # grouped by user, time order inside
        self.rows = rows[order]
        self.items = log.item_idx[self.rows].astype(np.int64)
        users = log.user_idx[self.rows]
        first = np.r_[True, users[1:] != users[:-1]] if users.size else np.zeros(0, bool)
        group_start = np.maximum.accumulate(np.where(first, np.arange(users.size), 0)) if users.size else first
        self._start = np.full(len(log), -1, dtype=np.int64)
        self._end = np.full(len(log), -1, dtype=np.int64)
        self._start[self.rows] = group_start
        self._end[self.rows] = np.arange(self.rows.size)  # history of a row = items[start:end]

    def bounds(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows, dtype=np.int64)
        start, end = self._start[rows], self._end[rows]
        if (start < 0).any():
            raise ValueError("rows outside the stage have no history here")
        return start, end

    def lengths(self, rows: np.ndarray) -> np.ndarray:
        start, end = self.bounds(rows)
        return end - start

    def _flat(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index of the ranked row, item) for every history event of the given rows."""
        start, end = self.bounds(rows)
        lengths = end - start
        which = np.repeat(np.arange(lengths.size), lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return which, self.items[np.repeat(start, lengths) + offsets]

    def csr(self, rows: np.ndarray, n_items: int, *, binary: bool, dtype=np.float32):
        """scipy CSR [len(rows), n_items]: 1 per distinct history item (binary) or event counts."""
        import scipy.sparse as sp

        which, items = self._flat(rows)
        mat = sp.csr_matrix((np.ones(items.size, dtype=dtype), (which, items)), shape=(len(rows), n_items))
        mat.sum_duplicates()
        if binary:
            mat.data[:] = 1
        return mat

    def padded(self, rows: np.ndarray, maxlen: int) -> np.ndarray:
        """int32 [len(rows), maxlen]: the last `maxlen` history items as item_idx + 1, oldest first,
        left-padded with 0 (no item)."""
        start, end = self.bounds(rows)
        out = np.zeros((len(start), maxlen), dtype=np.int32)
        lengths = np.minimum(end - start, maxlen)
        which = np.repeat(np.arange(lengths.size), lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        src = np.repeat(end - lengths, lengths) + offsets
        out[which, maxlen - np.repeat(lengths, lengths) + offsets] = self.items[src] + 1
        return out


def user_sequences(log: bl.EventLog, rows: np.ndarray) -> list[np.ndarray]:
    """Each user's items over `rows`, in time order (users without such rows left out)."""
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    users = log.user_idx[rows]
    order = np.argsort(users, kind="stable")
    items = log.item_idx[rows][order].astype(np.int64)
    cuts = np.flatnonzero(np.diff(users[order])) + 1
    return [s for s in np.split(items, cuts) if s.size]


# --------------------------------------------------------------------------- the stages


@dataclass
class Stage:
    name: str  # "validation" | "test"
    fit_rows: np.ndarray  # what a model may learn from; also the rows masking is decided on
    target_rows: np.ndarray  # the rows ranked, in row order
    histories: UserHistories


class World:
    """A work dir's event log with dyembed's roles, its two stages and the masking per setting."""

    def __init__(self, workdir: str | Path, ev: EvaluateConfig, validation_fraction: float):
        self.workdir = Path(workdir)
        self.ev = ev
        self.validation_fraction = float(validation_fraction)
        self.log = load_event_log(self.workdir)
        self.roles, self.split_info = make_roles(self.log, ev, validation_fraction)
        self.validation = self._stage("validation", self.roles == TRAIN, self.roles == VALIDATION)
        self.test = self._stage("test", self.roles != TEST, self.roles == TEST)

    def _stage(self, name: str, fit: np.ndarray, target: np.ndarray) -> Stage:
        fit_rows, target_rows = np.flatnonzero(fit), np.flatnonzero(target)
        if target_rows.size == 0:
            raise InputDataError(f"the {self.ev.protocol} split of {self.workdir} has no {name} events")
        return Stage(name, fit_rows, target_rows, UserHistories(self.log, np.r_[fit_rows, target_rows]))

    def masking(self, stage: Stage, setting: str) -> tuple[Masking, EventSeen | None]:
        """dyembed's one rule on the stage's history rows, and the seen items of every ranked row
        (the user's history rows and earlier ranked rows), as `evaluate` and `train` build them."""
        users, items = self.log.user_idx[stage.fit_rows], self.log.item_idx[stage.fit_rows]
        masking = decide(setting, users, items, self.ev.repeat_threshold)
        if not masking.masked:
            return masking, None
        rows = stage.target_rows
        return masking, seen_before_events(self.log.n_users, self.log.user_idx[rows], self.log.item_idx[rows],
                                           seen_items(self.log.n_users, users, items))

    def counts(self) -> dict[str, int]:
        test_rows = self.test.target_rows
        return {"events": len(self.log), "users": self.log.n_users, "items": self.log.n_items,
                "train_events": int((self.roles == TRAIN).sum()), "validation_events": int((self.roles == VALIDATION).sum()),
                "test_events": int(test_rows.size), "test_users": int(np.unique(self.log.user_idx[test_rows]).size)}


# --------------------------------------------------------------------------- ranks and metrics


class _Recorded:
    """A scorer that keeps every score block it hands out (record) or hands them out again (replay):
    ranking the same rows under two maskings then costs one scoring pass."""

    def __init__(self, scorer: bl.Scorer):
        self.scorer, self.blocks, self.replaying = scorer, [], False

    def scores(self, rows: np.ndarray) -> np.ndarray:
        if self.replaying:
            return self.blocks.pop(0)
        block = np.asarray(self.scorer.scores(rows))
        self.blocks.append(block)
        return block

    def observe(self, rows: np.ndarray) -> None:
        if not self.replaying:
            self.scorer.observe(rows)


def rank(world: World, stage: Stage, scorer: bl.Scorer, exclude: EventSeen | None) -> np.ndarray:
    """Ranks of the stage's target rows (in row order), by dyembed's rank_rows (the code of `evaluate`).

    Every peer's scorer is stateless: a row's scores depend on its own history (`UserHistories`),
    never on which rows were scored before, so the order rank_rows visits the rows in changes no
    rank. They are visited round-robin over users (every user's 1st ranked row, then every 2nd, …):
    rank_rows cuts blocks where a user repeats, and in row order a temporal test period (sessions
    of one user) would fall into blocks of one event. The seen items stay those of each row's own
    position in time (the EventSeen entries are permuted with the rows, not recomputed)."""
    rows = stage.target_rows
    users = world.log.user_idx[rows].astype(np.int64)
    order = np.argsort(users, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(users[order])) + 1]
    occurrence = np.empty(rows.size, dtype=np.int64)
    occurrence[order] = np.arange(rows.size) - np.repeat(starts, np.diff(np.r_[starts, rows.size]))
    visit = np.lexsort((rows, occurrence))
    if exclude is not None:
        exclude = EventSeen(users=exclude.users[visit], history=exclude.history, stream=exclude.stream,
                            new_before=exclude.new_before[visit])
    ranks, _ = bl.rank_rows(scorer, world.log, rows[visit], exclude=exclude, max_block_mb=world.ev.max_block_mb)
    out = np.empty(rows.size, dtype=np.int64)
    out[visit] = ranks
    return out


def rank_each(world: World, stage: Stage, make_scorer: Callable[[], bl.Scorer],
              maskings: dict[str, tuple[Masking, EventSeen | None]]) -> dict[str, np.ndarray]:
    """Ranks under every masking setting, one ranking per distinct decision (masked or not)."""
    by_decision: dict[bool, list[str]] = {}
    for setting, (masking, _) in maskings.items():
        by_decision.setdefault(masking.masked, []).append(setting)
    out: dict[str, np.ndarray] = {}
    fits = stage.target_rows.size * world.log.n_items * 8 <= SCORE_CACHE_BYTES
    recorded = None
    for masked, settings in by_decision.items():
        exclude = maskings[settings[0]][1]
        if recorded is not None:
            recorded.replaying = True
            scorer = recorded
        else:
            scorer = make_scorer()
            if fits and len(by_decision) > 1:
                scorer = recorded = _Recorded(scorer)
        ranks = rank(world, stage, scorer, exclude)
        for s in settings:
            out[s] = ranks
    return out


def score_of(ranks: np.ndarray, metric: str = VALIDATION_METRIC) -> float:
    """Per-event mean of one metric, by RankAccumulator (no bootstrap): the validation score."""
    k = int(metric.split("@")[1])
    acc = RankAccumulator([k])
    acc.update(ranks, np.zeros(ranks.size, dtype=np.int64))
    return float(acc.result(bootstrap=0)["per_event"][metric])


def test_metrics(world: World, stage: Stage, ranks: np.ndarray) -> dict[str, Any]:
    """Per-event and per-user metrics with 95 % user-bootstrap intervals (dyembed's RankAccumulator)."""
    ks = sorted(set(int(k) for k in world.ev.ks))
    acc = RankAccumulator(ks, world.log.n_users)
    acc.update(ranks, world.log.user_idx[stage.target_rows])
    res = acc.result(bootstrap=world.ev.bootstrap, seed=world.ev.seed)
    return {"events": res["events"], "users": res["users"], "per_event": res["per_event"],
            "ci95_per_event": res["ci_per_event"], "per_user": res["per_user"], "ci95_per_user": res["ci_per_user"]}


# --------------------------------------------------------------------------- peers and the driver


@dataclass
class Trial:
    """One grid point on the validation stage."""

    setting: dict[str, Any]
    scores: dict[str, float]  # masking setting → validation NDCG@10
    train_seconds: float
    info: dict[str, Any] = field(default_factory=dict)  # e.g. epochs run, best epoch per masking
    kept: dict[str, Any] = field(default_factory=dict)  # masking → model the test needs (early-stopped peers)


@dataclass
class Final:
    """The model that ranks the test stage."""

    scorer_factory: Callable[[], bl.Scorer]
    train_seconds: float
    info: dict[str, Any] = field(default_factory=dict)


class Peer(Protocol):
    name: str
    description: str
    test_model: str  # how the test model is obtained (refit on train + validation, or the validation-chosen one)

    def at_test_time(self, protocol: str) -> str: ...  # what the model does with each ranked event

    def grid(self, world: World) -> list[dict[str, Any]]: ...

    def grid_spec(self, world: World) -> dict[str, list]: ...

    def validate(self, world: World, setting: dict[str, Any],
                 maskings: dict[str, tuple[Masking, EventSeen | None]], time_budget: float) -> Trial: ...

    def final(self, world: World, setting: dict[str, Any], kept: Any, time_budget: float) -> Final: ...


def validate_by_ranking(world: World, make_scorer: Callable[[], bl.Scorer],
                        maskings: dict[str, tuple[Masking, EventSeen | None]]) -> dict[str, float]:
    """Validation NDCG@10 per masking setting of one fitted model."""
    ranks = rank_each(world, world.validation, make_scorer, maskings)
    return {s: score_of(r) for s, r in ranks.items()}


def run_peer(peer: Peer, world: World, mask_settings: Sequence[str], *, time_budget: float = 0.0,
             say: Callable[[str], None] = lambda _: None) -> dict[str, dict[str, Any]]:
    """Tune `peer` on validation (every grid point scored under every masking setting), then rank
    the test once per setting with the setting chosen for it. Returns masking setting → record."""
    val_maskings = {m: world.masking(world.validation, m) for m in mask_settings}
    test_maskings = {m: world.masking(world.test, m) for m in mask_settings}
    trials: list[Trial] = []
    best: dict[str, tuple[int, Any]] = {}  # masking → (trial index, kept model)
    for setting in peer.grid(world):
        trial = peer.validate(world, setting, val_maskings, time_budget)
        for m in mask_settings:
            if m not in best or trial.scores[m] > trials[best[m][0]].scores[m]:
                best[m] = (len(trials), trial.kept.get(m))
        trial.kept = {}
        trials.append(trial)
        say(f"  {peer.name} {setting}: " + ", ".join(f"{m} {trial.scores[m]:.4f}" for m in mask_settings)
            + f"  ({trial.train_seconds:.1f} s)")
    records: dict[str, dict[str, Any]] = {}
    finals: dict[tuple[int, int], tuple[Final, dict[str, np.ndarray], float]] = {}
    for m in mask_settings:
        index, kept = best[m]
        key = (index, id(kept))
        if key not in finals:
            final = peer.final(world, trials[index].setting, kept, time_budget)
            same = {mm: test_maskings[mm] for mm in mask_settings if (best[mm][0], id(best[mm][1])) == key}
            t0 = time.perf_counter()
            ranks = rank_each(world, world.test, final.scorer_factory, same)
            finals[key] = (final, ranks, time.perf_counter() - t0)
        final, ranks, rank_seconds = finals[key]
        chosen = trials[index]
        records[m] = {
            "description": peer.description,
            "at_test_time": peer.at_test_time(world.ev.protocol),
            "test_model": peer.test_model,
            "grid": peer.grid_spec(world),
            "validation": [{"setting": t.setting, VALIDATION_METRIC: round(t.scores[m], 6),
                            "train_seconds": round(t.train_seconds, 2), **_info_for(t.info, m)} for t in trials],
            "chosen": chosen.setting,
            f"validation_{VALIDATION_METRIC}": round(chosen.scores[m], 6),
            "masking": {"validation": val_maskings[m][0].to_dict(), "test": test_maskings[m][0].to_dict()},
            "tuning_seconds": round(sum(t.train_seconds for t in trials), 2),
            "train_seconds": round(final.train_seconds, 2),
            "rank_seconds": round(rank_seconds, 2),
            "final": final.info,
            "test": test_metrics(world, world.test, ranks[m]),
            # per test event, in row order (the rows `dyembed evaluate` ranks): what a paired
            # bootstrap against another model on the same events needs
            "test_ranks": {"rows": world.test.target_rows.tolist(), "ranks": np.asarray(ranks[m]).tolist()},
        }
    return records


def _info_for(info: dict[str, Any], masking: str) -> dict[str, Any]:
    """A trial's info with per-masking entries ({"by_masking": {m: …}}) reduced to this masking."""
    out = {k: v for k, v in info.items() if k != "by_masking"}
    out.update(info.get("by_masking", {}).get(masking, {}))
    return out


# --------------------------------------------------------------------------- the reference peer


class PopPeer:
    """dyembed's own PopScorer through the harness: the check that the harness ranks like evaluate."""

    name = "pop"
    description = "item popularity over the history rows (dyembed's PopScorer)"
    test_model = "counts over train + validation rows"

    def at_test_time(self, protocol: str) -> str:
        return "the same counts for every event"

    def grid(self, world: World) -> list[dict[str, Any]]:
        return [{}]

    def grid_spec(self, world: World) -> dict[str, list]:
        return {}

    def validate(self, world, setting, maskings, time_budget) -> Trial:
        t0 = time.perf_counter()
        scorer = bl.PopScorer(world.log, world.validation.fit_rows)
        seconds = time.perf_counter() - t0
        return Trial(setting, validate_by_ranking(world, lambda: scorer, maskings), seconds)

    def final(self, world, setting, kept, time_budget) -> Final:
        t0 = time.perf_counter()
        scorer = bl.PopScorer(world.log, world.test.fit_rows)
        return Final(lambda: scorer, time.perf_counter() - t0)


def machine_load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        return None


def finite(x: float) -> float | None:
    return x if x is not None and math.isfinite(x) else None
