"""`dyembed train`: learn θ by replaying the training period, then store the users' states.

One epoch = the training rows replayed from fresh users (everyone at the prior u0) through the
dynamic rule, in blocks of t-batches (tbatch.py). Each event's loss is taken with its user's state
*before* the event (prequential); θ takes one Adam step per block. With `train.meta` (default) the
gradient flows through the users' own update steps inside the block — truncated backprop every
`train.truncation` user steps, the state carried across blocks as a constant — so θ learns how a
step should move a user (step size α, prior u0, projection P, residual E, bias b).

After each epoch, a frozen-θ replay of the train + validation rows ranks the validation events
(NDCG@val_k, seen items masked as evaluate would); the best epoch's θ and the state that replay
ends with are kept (early stopping with `train.patience`). A run whose loss turns NaN/inf stops
with DivergedError and saves nothing.

What is saved (one state version, installed atomically):
- `state/eval/`: the evaluation snapshot — the users at the split boundary (after each user's
  train + validation rows, replayed with the kept θ) and the role of every row; `dyembed
  evaluate` replays the test rows from there, so it never sees a test answer before scoring it;
- `state/`: the serving state — the same users carried on through the test rows (θ frozen), so
  it has consumed every row of the log. Each user's test rows come after its other rows under
  both protocols, so this equals one replay of the whole log.
- the lineage of both (dyembed/lineage.py): what they consumed, checked by every later reader.

`resume=True` replays only rows appended since the watermark (θ frozen unless `update_global`),
after checking that the work dir still holds what the state consumed; the evaluation snapshot is
carried over unchanged (dropped with `update_global`: θ then learns from rows a later split tests).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dyembed import lineage
from dyembed.config import Config, ModelConfig, check_values, to_toml
from dyembed.errors import ConfigError, DivergedError, InputDataError, StateError
from dyembed.lock import WorkdirLock
from dyembed.masking import decide as decide_masking
from dyembed.replay.io import Events, check_events, events_rows, iter_events, load_features, n_users_of, read_events
from dyembed.replay.seen import seen_before_events
from dyembed.replay.spec import RuleSpec
from dyembed.replay.state import EVAL_DIR, ROLES_FILE, StateWriter, UserState, load_state, state_dir
from dyembed.replay.theta import Theta
from dyembed.split import TEST, TRAIN, VALIDATION, loo_split, loo_skipped_users, temporal_split

log = logging.getLogger(__name__)
Progress = Callable[[dict[str, Any]], None]


def split_settings(cfg: Config) -> dict[str, Any]:
    """The split protocol training uses: train.protocol, or [evaluate]'s when it is "evaluate"."""
    protocol = cfg.train.protocol if cfg.train.protocol != "evaluate" else cfg.evaluate.protocol
    return {"protocol": protocol, "test_fraction": cfg.evaluate.test_fraction, "test_start": cfg.evaluate.test_start,
            "validation_fraction": cfg.train.validation_fraction if cfg.train.validation else 0.0}


def compute_roles(user_idx: np.ndarray, ts: np.ndarray, settings: dict[str, Any], *, validation: bool = True) -> np.ndarray:
    """Role per row (0 train, 1 validation, 2 test) under the given split settings."""
    protocol = settings["protocol"]
    if protocol == "none":
        return np.zeros(len(user_idx), np.int8)
    if protocol == "loo":
        roles = loo_split(user_idx)
        if not validation:
            roles[roles == VALIDATION] = TRAIN
        return roles
    if protocol == "temporal":
        return temporal_split(ts, test_fraction=settings["test_fraction"], test_start=settings["test_start"],
                              validation_fraction=settings["validation_fraction"] if validation else 0.0)
    raise ConfigError(f"unknown split protocol {protocol!r}")


def ndcg_at(ranks: np.ndarray, k: int) -> float:
    if len(ranks) == 0:
        return float("nan")
    gains = np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)
    return float(gains.mean())


def _check_train_config(cfg: Config) -> None:
    check_values(cfg)  # ranges and finiteness of every numeric key (dyembed.config.CONSTRAINTS)


class _EventSource:
    """Windows of events.parquet rows with their roles: kept in memory when the log fits in one
    window, otherwise streamed again from parquet every pass."""

    def __init__(self, workdir: Path, window: int, start_row: int = 0):
        self.workdir, self.window, self.start_row = workdir, window, start_row
        self.cached: list[Events] | None = None
        n = events_rows(workdir) - start_row
        if n <= window:
            self.cached = list(iter_events(workdir, start_row=start_row, chunk_rows=max(1, n)))

    def __iter__(self) -> Iterator[Events]:
        if self.cached is not None:
            return iter(self.cached)
        return iter_events(self.workdir, start_row=self.start_row, chunk_rows=self.window)


def _select(ev: Events, roles: np.ndarray, keep: tuple[int, ...]) -> tuple[Events, np.ndarray]:
    r = roles[ev.offset:ev.offset + len(ev)]
    mask = np.isin(r, keep)
    return ev.take(mask), r[mask]


def train(workdir: str | Path, cfg: Config, *, resume: bool = False, update_global: bool = False,
          progress: Progress | None = None) -> dict[str, Any]:
    """Train θ and write `WORKDIR/state/`; returns a JSON-able summary.

    progress(record) receives dicts: {"phase": "train"|"validate"|"final"|"resume", "epoch",
    "done", "total"} during replay and {"phase": "epoch", "epoch", "loss", "val", "seconds"} after
    each epoch.
    """
    from dyembed.replay.runtime import configure_runtime

    workdir = Path(workdir)
    if not workdir.is_dir():
        raise InputDataError(f"work directory not found: {workdir}")
    _check_train_config(cfg)
    if update_global and not resume:
        raise ConfigError("--update-global only applies with --resume")
    # the lock and the checks that need no TensorFlow first: a second writer, a missing, damaged
    # or foreign state learn it at once, not after TensorFlow's start-up
    with WorkdirLock(workdir, command="train --resume" if resume else "train", wait=cfg.runtime.lock_wait):
        if resume:
            _check_resumable(workdir)
        else:
            require_inputs(workdir)
        device = configure_runtime(cfg.runtime)
        if resume:
            summary, _ = _resume(workdir, cfg, update_global=update_global, progress=progress)
        else:
            summary = _fit(workdir, cfg, progress=progress)
    summary["device"] = device
    return summary


def resume_with_window_ranks(workdir: str | Path, cfg: Config, *,
                             progress: Progress | None = None) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """`train --resume` (θ frozen) that also ranks every replayed event: (summary, ranks, user_idx).

    Each event's rank (1 + items scoring at least the target, over the whole catalogue, nothing
    masked) is taken with its user's state before the event, inside the one replay that advances
    the state: the window's next-event metrics at no second pass (`dyembed update`)."""
    from dyembed.replay.runtime import configure_runtime

    workdir = Path(workdir)
    if not workdir.is_dir():
        raise InputDataError(f"work directory not found: {workdir}")
    _check_train_config(cfg)
    with WorkdirLock(workdir, command="train --resume", wait=cfg.runtime.lock_wait):
        _check_resumable(workdir)
        device = configure_runtime(cfg.runtime)
        summary, window = _resume(workdir, cfg, update_global=False, progress=progress, with_ranks=True)
    summary["device"] = device
    return summary, window[0], window[1]


def _check_resumable(workdir: Path) -> None:
    """Before TensorFlow starts: the state's files are whole and it belongs to the work dir's files
    (StateError, exit 4, naming what is wrong)."""
    from dyembed.state_versions import read_state_manifest, verify_dir

    directory = state_dir(workdir)
    check = verify_dir(directory)
    if not check["ok"]:
        raise StateError(f"{check['problem']}; see `dyembed state verify {workdir}` (and `dyembed state rollback`)")
    record = read_state_manifest(directory).get("lineage")
    # as _resume checks it again: re-encoded texts of known items are taken in, not refused
    lineage.require(workdir, directory, record, lineage.scan(workdir, **lineage.marks(record or {})), allow_reencoded=True)


def require_inputs(workdir: Path) -> None:
    """Before TensorFlow starts: what `train` reads is there (InputDataError, exit 3)."""
    from dyembed.artefacts import require_file

    require_file(workdir / "item_embeddings.parquet", "item embeddings (run `dyembed encode` first)")
    require_file(workdir / "events.parquet", "events (run `dyembed preprocess` first)")


def _make_engine(model, spec: RuleSpec, state: UserState | None, cfg: Config, n_users: int | None = None):
    from dyembed.replay.engine import Engine
    from dyembed.replay.runtime import block_budget_mb, current_device

    rt = cfg.runtime
    t = cfg.train
    return Engine(model, spec, state, n_users=n_users, lr=t.lr, scalar_lr=t.scalar_lr, meta=t.meta,
                  weight_decay=t.weight_decay, loss_normalizer=t.loss_normalizer,
                  num_negatives=cfg.model.num_negatives, mixed_precision=rt.mixed_precision, jit=rt.jit,
                  max_block_mb=block_budget_mb(rt.max_block_mb, current_device()))


EVAL_LANES = 1024  # frozen replay: lanes only change speed, never the numbers


def fit_validation(workdir: str | Path, cfg: Config, *, progress: Progress | None = None) -> dict[str, Any]:
    """`train`'s fit and early stopping on the split's train and validation rows only, nothing
    written (no state, no lock): the summary's best_val scores a config (`dyembed tune`). Test
    rows are never replayed, so no test answer reaches the score."""
    from dyembed.replay.runtime import configure_runtime

    workdir = Path(workdir)
    if not workdir.is_dir():
        raise InputDataError(f"work directory not found: {workdir}")
    _check_train_config(cfg)
    configure_runtime(cfg.runtime)
    return _fit(workdir, cfg, progress=progress, save=False)


def _fit(workdir: Path, cfg: Config, *, progress: Progress | None, save: bool = True) -> dict[str, Any]:
    from dyembed.replay.model import Model, init_theta

    started = time.perf_counter()
    tcfg, mcfg = cfg.train, cfg.model
    spec = RuleSpec.from_config(mcfg)
    vectors = lineage.vector_digest()
    features = load_features(workdir, digest=vectors)
    n_items = features.shape[0]
    source = _EventSource(workdir, tcfg.window)

    # one streaming pass for the split and the training-item counts
    users_all, ts_all = [], []
    for ev in source:
        check_events(ev, n_items, "events.parquet")
        users_all.append(ev.user_idx)
        ts_all.append(ev.ts)
    if not users_all or sum(len(u) for u in users_all) == 0:
        raise InputDataError(f"{workdir / 'events.parquet'} has no events")
    users_cat, ts_cat = np.concatenate(users_all), np.concatenate(ts_all)
    del users_all, ts_all
    n_rows = len(users_cat)
    n_users = n_users_of(workdir, users_cat.max())
    settings = split_settings(cfg)
    roles = compute_roles(users_cat, ts_cat, settings, validation=tcfg.validation)
    last_ts = int(ts_cat[-1])
    skipped = loo_skipped_users(users_cat) if settings["protocol"] == "loo" else 0
    del users_cat, ts_cat
    n_train = int((roles == TRAIN).sum())
    n_val = int((roles == VALIDATION).sum())
    if n_train == 0:
        raise InputDataError("no training events under the split (check evaluate.protocol / test_fraction)")
    stream_u, stream_i, is_train = [], [], []  # the train + validation rows, as the validation replay sees them
    for ev in source:
        part, part_roles = _select(ev, roles, (TRAIN, VALIDATION))
        stream_u.append(part.user_idx)
        stream_i.append(part.item_idx)
        is_train.append(part_roles == TRAIN)
    stream_users, stream_items, is_train_cat = np.concatenate(stream_u), np.concatenate(stream_i), np.concatenate(is_train)
    train_items_cat = stream_items[is_train_cat]
    # items θ never trains on (no train row; none in train + validation for the refit), for model.cold_items
    untrained = np.bincount(train_items_cat, minlength=n_items)[:n_items] == 0
    untrained_refit = np.bincount(stream_items, minlength=n_items)[:n_items] == 0
    seen = None
    # validation ranks are masked as evaluate will mask the test ranks: one rule (dyembed.masking),
    # decided on the rows that are history for the validation events; seen = the user's items
    # before each replayed event (dyembed.replay.seen)
    if n_val and decide_masking(cfg.evaluate.mask_seen, stream_users[is_train_cat], train_items_cat,
                                cfg.evaluate.repeat_threshold).masked:
        seen = seen_before_events(n_users, stream_users, stream_items)
    del stream_u, stream_i, is_train, stream_users, stream_items, is_train_cat

    theta0 = init_theta(features, mcfg, seed=tcfg.seed, train_items=train_items_cat)
    del train_items_cat
    model = Model(features, theta0, mcfg)
    theta_start = model.to_theta() if tcfg.refit and n_val else None  # the refit starts where training did
    feature_dim = int(features.shape[1])
    del features, theta0  # the model holds its own copies (X on the device: 1.5 GB at 1M items × D 384)
    engine = _make_engine(model, spec, None, cfg, n_users=n_users)
    reset = lambda: engine.reset_users(seed=tcfg.seed, init_scale=mcfg.init_scale)  # noqa: E731
    rng = np.random.default_rng(tcfg.seed)
    from dyembed.tracking import Run, flat_hparams

    scalars = Run(tcfg.tensorboard, "train")  # DIR/train (evaluate and update log beside it)
    scalars.hparams(0, flat_hparams(cfg.to_dict()), to_toml(cfg))
    use_w = mcfg.use_weights

    role_counts = np.bincount(roles, minlength=3)

    def replay_pass(phase: str, epoch: int, keep: tuple[int, ...], *, train_mode: bool, ranks: bool):
        total = int(role_counts[list(keep)].sum())
        loss, wsum, done = 0.0, 0.0, 0
        val_ranks = []
        for ev in source:
            part, part_roles = _select(ev, roles, keep)
            if len(part) == 0:
                continue
            base = done

            def tick(n_done: int) -> None:
                if progress:
                    progress({"phase": phase, "epoch": epoch, "done": base + n_done, "total": total})

            res = engine.replay(part.user_idx, part.item_idx, part.ts, part.weight if use_w else None,
                                update=True, train=train_mode, ranks=ranks,
                                exclude=seen.part(done, done + len(part)) if ranks and seen is not None else None,
                                lanes=tcfg.batch_size if train_mode else EVAL_LANES, steps=tcfg.truncation,
                                window=tcfg.window, rng=rng, shuffle=train_mode, progress=tick)
            loss += res.loss_sum
            wsum += res.weight_sum
            done += len(part)
            if ranks:
                val_ranks.append(res.ranks[part_roles == VALIDATION])
        return loss / max(wsum, 1e-12), (np.concatenate(val_ranks) if val_ranks else np.zeros(0, np.int64))

    history: list[dict[str, Any]] = []
    best = {"val": -np.inf, "epoch": 0, "theta": None}
    stopped = "epochs"
    bad_epochs = 0
    train_seconds = 0.0
    for epoch in range(1, tcfg.epochs + 1):
        if tcfg.time_budget > 0 and time.perf_counter() - started > tcfg.time_budget:
            stopped = "time_budget"
            break
        t0 = time.perf_counter()
        reset()
        train_loss, _ = replay_pass("train", epoch, (TRAIN,), train_mode=tcfg.lr > 0, ranks=False)
        train_seconds += time.perf_counter() - t0
        if not np.isfinite(train_loss):
            scalars.close()
            raise DivergedError(f"training diverged in epoch {epoch} (train loss {train_loss}): nothing was saved, the "
                                "previous state is kept; lower train.lr or model.step_size (or check the events' weights)")
        record: dict[str, Any] = {"epoch": epoch, "loss": round(train_loss, 5),
                                  "alpha": float(np.mean(model.alpha())), "tau": model.temperature}
        if n_val:
            reset()
            trained = model.to_theta()
            scored = scoring_theta(trained, mcfg, untrained)
            if scored is not trained:
                model.assign(scored)  # validation scores what serving will hold; training goes on from `trained`
            _, val_ranks = replay_pass("validate", epoch, (TRAIN, VALIDATION), train_mode=False, ranks=True)
            if scored is not trained:
                model.assign(trained)
            val = ndcg_at(val_ranks, tcfg.val_k)
            record[f"val_ndcg@{tcfg.val_k}"] = round(val, 5)
            if val > best["val"]:
                best.update(val=val, epoch=epoch, theta=scored)
                bad_epochs = 0
            else:
                bad_epochs += 1
        record["seconds"] = round(time.perf_counter() - t0, 3)
        history.append(record)
        scalars.scalars(epoch, {"train_loss": train_loss, "val_ndcg": record.get(f"val_ndcg@{tcfg.val_k}"),
                                "alpha": record["alpha"], "tau": record["tau"]})
        log.debug("epoch %d: %s", epoch, record)
        if progress:
            progress({"phase": "epoch", **record, "val": record.get(f"val_ndcg@{tcfg.val_k}")})
        if n_val and tcfg.patience and bad_epochs >= tcfg.patience:
            stopped = "early_stopping"
            break

    if not save:
        scalars.close()
        return {"protocol": settings["protocol"], "train_events": n_train, "validation_events": n_val,
                "epochs_run": len(history), "best_epoch": best["epoch"] or len(history), "stopped": stopped,
                "history": history, "best_val": None if best["theta"] is None else float(best["val"]),
                "train_seconds": round(train_seconds, 3),
                "seconds": round(time.perf_counter() - started, 3)}

    refit = None
    if theta_start is not None and best["theta"] is not None:
        # the chosen epoch count, now on train + validation rows, from the same start and with a
        # fresh θ optimiser; no validation is left to stop on, so the count is the one chosen above
        t0 = time.perf_counter()
        model.assign(theta_start)
        engine = _make_engine(model, spec, None, cfg, n_users=n_users)
        refit_losses = []
        for epoch in range(1, best["epoch"] + 1):
            reset()
            loss_value, _ = replay_pass("refit", epoch, (TRAIN, VALIDATION), train_mode=True, ranks=False)
            if not np.isfinite(loss_value):
                scalars.close()
                raise DivergedError(f"the refit on train + validation rows diverged in epoch {epoch}: nothing was "
                                    "saved, the previous state is kept; lower train.lr or turn train.refit off")
            refit_losses.append(round(loss_value, 5))
        best["theta"] = scoring_theta(model.to_theta(), mcfg, untrained_refit)
        train_seconds += time.perf_counter() - t0
        refit = {"epochs": best["epoch"], "events": n_train + n_val, "losses": refit_losses}

    # the users after every train + validation row, replayed with the kept θ (the split boundary).
    # The last validation replay already is that when the best epoch is the last one.
    validated = best["theta"] is not None
    if not validated:  # no validation rows: the last epoch's θ
        best["theta"] = scoring_theta(model.to_theta(), mcfg, untrained)
    model.assign(best["theta"])
    if not validated or best["epoch"] != len(history) or refit is not None:
        reset()
        replay_pass("final", len(history), (TRAIN, VALIDATION), train_mode=False, ranks=False)
    scalars.close()
    snapshot = settings["protocol"] != "none"
    n_test = int(role_counts[TEST])
    sc = lineage.scan(workdir, history_roles=roles if snapshot else None, user_marks=[n_users], item_marks=[n_items],
                      vectors=vectors)

    summary = {
        "workdir": str(workdir),
        "protocol": settings["protocol"],
        "events": n_rows,
        "train_events": n_train,
        "validation_events": n_val,
        "test_events": int((roles == TEST).sum()),
        "loo_skipped_users": skipped,
        "users": n_users,
        "items": n_items,
        "dim": mcfg.dim,
        "rule": mcfg.rule,
        "loss": mcfg.loss,
        "epochs": tcfg.epochs,
        "epochs_run": len(history),
        "best_epoch": best["epoch"] or len(history),
        "stopped": stopped,
        "history": history,
        "val_metric": f"ndcg@{tcfg.val_k}" if n_val else None,
        "best_val": round(float(best["val"]), 5) if validated else None,
        "refit": refit,  # θ retrained on train + validation rows (train.refit); best_val is the pre-refit score
        "alpha": [float(a) for a in np.atleast_1d(model.alpha())],
        "temperature": model.temperature,
        "train_seconds": round(train_seconds, 3),
        "train_events_per_second": round(n_train * len(history) / max(train_seconds, 1e-9), 1),
        "serving_events": n_rows,  # the serving state consumed every row; evaluate starts from the snapshot
        "eval_snapshot": snapshot,
    }
    watermark = {"rows": n_rows, "last_ts": last_ts}
    manifest = {"watermark": watermark, "n_users": n_users, "n_items": n_items, "dim": mcfg.dim,
                "feature_dim": feature_dim, "rule": mcfg.rule, "loss": mcfg.loss, "user_init": mcfg.user_init,
                "split": settings, "train": summary,
                "lineage": lineage.record(sc, rows=n_rows, n_users=n_users, n_items=n_items), "eval": None}
    with StateWriter(workdir, keep=cfg.runtime.keep_states) as writer:
        if snapshot:
            # the evaluation snapshot first, then the same users carried on through the test rows
            shapes = writer.users(engine.streamed_state(), EVAL_DIR)
            writer.array(f"{EVAL_DIR}/{ROLES_FILE}", roles)
            manifest["eval"] = {"protocol": settings["protocol"], "rows": n_rows, "n_users": n_users,
                                "test_events": n_test, "lineage": lineage.eval_record(sc, n_users=n_users), **shapes}
            if n_test:
                replay_pass("serve", len(history), (TEST,), train_mode=False, ranks=False)
        manifest.update(writer.users(engine.streamed_state()))
        writer.commit(theta=model.to_theta().arrays(), manifest=manifest, config_toml=to_toml(cfg))
    summary["seconds"] = round(time.perf_counter() - started, 3)
    summary["state_dir"] = str(workdir / "state")
    summary["watermark"] = watermark
    return summary


def scoring_theta(theta: Theta, mcfg: ModelConfig, untrained: np.ndarray) -> Theta:
    """The θ that scores and serves: with model.cold_items = "text", the items θ never trained on
    (`untrained`) take the new-item values (Theta.as_new_items), else θ as trained."""
    return theta.as_new_items(untrained) if mcfg.cold_items == "text" else theta


def _extend_theta(theta: Theta, features: np.ndarray) -> Theta:
    """θ for items appended since training (text features only: theta.PARAMS' new-item values)."""
    grown = theta.extend_items(features.shape[0])
    if grown.n_items > theta.n_items:
        log.info("θ extended to %d new items (text features only)", grown.n_items - theta.n_items)
    return grown


def _resume(workdir: Path, cfg: Config, *, update_global: bool, progress: Progress | None,
            with_ranks: bool = False) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray] | None]:
    """Replay rows appended since the watermark; θ frozen unless update_global.

    Returns the summary and, with_ranks, (rank, user_idx) of every replayed row."""
    import tomllib

    from dyembed.config import apply_mapping
    from dyembed.replay.model import Model

    started = time.perf_counter()
    manifest, theta, users, _ = load_state(workdir, streamed=True)
    directory = state_dir(workdir)
    saved = Config()
    apply_mapping(saved, tomllib.loads((directory / "config.toml").read_text(encoding="utf-8")), "state/config.toml")
    if saved.model != cfg.model:
        log.warning("[model] differs from the state's; --resume keeps the state's model settings")
    cfg.model = saved.model
    mcfg = cfg.model
    spec = RuleSpec.from_config(mcfg)
    watermark = manifest["watermark"]
    # the work dir must still hold what the state consumed (one streaming pass, which also digests
    # the whole log for the new version's lineage); re-encoded texts of known items are taken in
    theta = Theta.from_arrays(theta)
    n_known_items = theta.n_items
    vectors = lineage.vector_digest(marks=[n_known_items])
    features = load_features(workdir, digest=vectors)
    marks = lineage.marks(manifest.get("lineage") or {})
    marks["item_marks"] = marks["item_marks"] + [int(features.shape[0])]
    sc = lineage.scan(workdir, vectors=vectors, **{k: v for k, v in marks.items() if k != "vector_marks"})
    lineage.require(workdir, directory, manifest.get("lineage"), sc, allow_reencoded=True)
    n_rows = sc.events.rows
    theta = _extend_theta(theta, features)
    new = read_events(workdir, start_row=watermark["rows"])
    check_events(new, features.shape[0], "events.parquet (new rows)")
    if len(new) and new.ts[0] < watermark["last_ts"]:
        log.warning("%d new rows start before the watermark time %d (late events are replayed in row order)",
                    len(new), watermark["last_ts"])
    n_users = n_users_of(workdir, max(int(new.user_idx.max()) if len(new) else 0, users.n_users - 1))
    model = Model(features, theta, mcfg)
    n_items, feature_dim = (int(x) for x in features.shape)
    del features, theta  # the model holds its own copies
    engine = _make_engine(model, spec, users, cfg, n_users=n_users)  # new users start fresh
    del users
    loss = float("nan")
    window = (np.zeros(0, np.int64), new.user_idx) if with_ranks else None
    if len(new):
        res = engine.replay(new.user_idx, new.item_idx, new.ts, new.weight if mcfg.use_weights else None,
                            update=True, train=update_global and cfg.train.lr > 0, ranks=with_ranks,
                            lanes=cfg.train.batch_size if update_global else EVAL_LANES, steps=cfg.train.truncation,
                            window=cfg.train.window, rng=np.random.default_rng(cfg.train.seed), shuffle=update_global,
                            progress=(lambda d: progress({"phase": "resume", "epoch": 0, "done": d, "total": len(new)}))
                            if progress else None)
        loss = res.loss_sum / max(res.weight_sum, 1e-12)
        if with_ranks:
            window = (res.ranks, new.user_idx)
    new_mark = {"rows": n_rows, "last_ts": int(new.ts[-1]) if len(new) else watermark["last_ts"]}
    seconds = time.perf_counter() - started
    summary = {
        "workdir": str(workdir),
        "resumed": True,
        "update_global": update_global,
        "new_events": len(new),
        "users": n_users,
        "items": n_items,
        "loss": None if not math.isfinite(loss) else round(loss, 5),
        "events_per_second": round(len(new) / max(seconds, 1e-9), 1),
        "previous_watermark": watermark,
        "watermark": new_mark,
    }
    train_info = dict(manifest.get("train", {}))
    train_info["resumes"] = train_info.get("resumes", []) + [
        {k: summary[k] for k in ("new_events", "update_global", "loss", "watermark")}]
    out = {"watermark": new_mark, "n_users": n_users, "n_items": n_items, "dim": mcfg.dim, "feature_dim": feature_dim,
           "rule": mcfg.rule, "loss": mcfg.loss, "user_init": mcfg.user_init, "split": manifest.get("split"),
           "train": train_info, "lineage": lineage.record(sc, rows=n_rows, n_users=n_users, n_items=n_items),
           "eval": manifest.get("eval"), "eval_dropped": manifest.get("eval_dropped")}
    with StateWriter(workdir, keep=cfg.runtime.keep_states) as writer:
        if out["eval"] is not None and update_global and len(new):
            # θ learns from the appended rows: a split of the longer log could test on them
            out["eval"] = None
            out["eval_dropped"] = ("θ was updated on appended rows by `train --resume --update-global` after the "
                                   "evaluation snapshot was taken")
        elif out["eval"] is not None:  # θ frozen: the snapshot stays valid, carried over unchanged
            writer.link(directory, {name: rec for name, rec in manifest["files"].items()
                                    if name.startswith(EVAL_DIR + "/")})
        out.update(writer.users(engine.streamed_state()))
        writer.commit(theta=model.to_theta().arrays(), manifest=out, config_toml=to_toml(cfg))
    summary["eval_snapshot"] = "kept" if out["eval"] is not None else ("dropped" if out["eval_dropped"] else None)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    summary["state_dir"] = str(workdir / "state")
    return summary, window
