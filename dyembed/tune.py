"""`dyembed tune`: search the main settings on the validation split, within a time budget.

Every trial is `train`'s own fit with early stopping (dyembed.replay.train.fit_validation) on the
split's train rows, scored by validation NDCG@train.val_k — the rows `train` validates on, never
the test rows (they are not replayed; a test checks that poisoning them changes no score). Nothing
is written to state/. The search (Optuna's TPE sampler, seeded; a median pruner on the per-epoch
validation curve) lives in WORKDIR/tune/:

- `study.db`   — the Optuna study (SQLite): every finished trial survives a crash or a kill, and
                 `dyembed tune` again continues it (`--trials` counts all trials of the study);
- `best.toml`  — the best config so far, a complete config for `dyembed train --config`, with the
                 validation score and the trial table as comments; rewritten (atomically) after
                 every trial that improves it, so an interrupted search still leaves its best;
- `trials.json`— the trial table: parameters, validation score, best epoch, seconds, state.

The study is bound to what it scored: the base config's keys outside the search space and the
work dir's events/features. If either changed, `tune` refuses to mix the scores (exit 2) and says
to pass `--fresh` (the old study is kept as study.db.prev).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dyembed.artefacts import write_json, write_text
from dyembed.config import Config, apply_mapping, to_toml
from dyembed.errors import ConfigError, DivergedError, InputDataError

log = logging.getLogger(__name__)

TUNE_DIR = "tune"
STUDY_NAME = "dyembed-tune"
DYNAMICS = {"none": (False, False), "repeat": (True, False), "context": (False, True), "repeat+context": (True, True)}


@dataclass(frozen=True)
class Param:
    """One searched key: a float range (log scale), or a list of choices."""

    key: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.key, list(self.choices))
        return trial.suggest_float(self.key, self.low, self.high, log=True)


# the main settings (docs/model.md); "model.dynamics" expands to model.history / repeat / context
SPACE: tuple[Param, ...] = (
    Param("model.step_size", 0.01, 5.0),
    Param("train.lr", 1e-3, 0.1),
    Param("model.dim", choices=(32, 64, 128)),
    Param("model.rule", choices=("sgd", "adagrad", "adam")),
    Param("model.dynamics", choices=tuple(DYNAMICS)),
    Param("model.history", choices=(5, 20)),
    Param("train.weight_decay", choices=(0.0, 1e-5, 1e-4, 1e-3)),
    Param("model.cold_items", choices=("trained", "text")),
)


def require_optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("dyembed tune needs Optuna: pip install 'dyembed[tune]' (or pip install 'optuna>=3.6')") from None
    return optuna


def trial_settings(params: dict[str, Any]) -> dict[str, Any]:
    """Dotted config keys of one trial's parameters (model.dynamics → history / repeat / context)."""
    out = {k: v for k, v in params.items() if k not in ("model.dynamics", "model.history")}
    if "model.dynamics" in params:
        repeat, context = DYNAMICS[params["model.dynamics"]]
        out["model.repeat"], out["model.context"] = repeat, context
        out["model.history"] = int(params.get("model.history", 5)) if (repeat or context) else 0
    elif "model.history" in params:
        out["model.history"] = int(params["model.history"])
    return out


def searched_keys(space: tuple[Param, ...]) -> set[str]:
    keys = {p.key for p in space}
    if "model.dynamics" in keys:
        keys |= {"model.repeat", "model.context", "model.history"}
    return keys - {"model.dynamics"}


def apply_settings(cfg: Config, settings: dict[str, Any]) -> Config:
    trial_cfg = copy.deepcopy(cfg)
    nested: dict[str, dict[str, Any]] = {}
    for dotted, value in settings.items():
        section, key = dotted.split(".", 1)
        nested.setdefault(section, {})[key] = value
    return apply_mapping(trial_cfg, nested, "tune")


def _fingerprint(workdir: Path, cfg: Config, space: tuple[Param, ...]) -> str:
    """What the scores depend on besides the searched keys: the space, the other keys, the data."""
    searched = searched_keys(space)
    fixed: dict[str, Any] = {section: {k: v for k, v in values.items() if f"{section}.{k}" not in searched}
                             for section, values in cfg.to_dict().items() if section in ("model", "train", "evaluate")}
    fixed["space"] = [repr(p) for p in space]
    for section in ("train", "evaluate"):  # speed and reporting keys do not change a score
        for key in ("time_budget", "tensorboard", "baselines", "bootstrap", "plot_buckets", "max_block_mb"):
            fixed[section].pop(key, None)
    files = {}
    for name in ("events.parquet", "item_embeddings.parquet"):
        path = workdir / name
        if not path.is_file():
            raise InputDataError(f"{path} not found (run `dyembed preprocess` and `dyembed encode` first)")
        stat = path.stat()
        files[name] = [stat.st_size, stat.st_mtime_ns]
    text = json.dumps({"config": fixed, "files": files}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _trial_rows(study: Any) -> list[dict[str, Any]]:
    rows = []
    for t in study.trials:
        rows.append({"number": t.number, "state": t.state.name.lower(), "value": t.value,
                     "settings": t.user_attrs.get("settings") or trial_settings(t.params),
                     "best_epoch": t.user_attrs.get("best_epoch"), "epochs_run": t.user_attrs.get("epochs_run"),
                     "seconds": t.user_attrs.get("seconds"), "note": t.user_attrs.get("note")})
    return rows


def best_toml(cfg: Config, best: dict[str, Any], rows: list[dict[str, Any]], metric: str, protocol: str) -> str:
    """The chosen config as TOML, headed by the validation score and the trial table (comments)."""
    done = sorted((r for r in rows if r["value"] is not None), key=lambda r: -r["value"])
    head = [f"# dyembed tune: chosen on the validation split ({protocol}; validation {metric} "
            f"{best['value']:.4f}, trial {best['number']}, best epoch {best['best_epoch']})",
            "# train with: dyembed train WORKDIR --config THIS_FILE",
            f"# {len(rows)} trials ({len(done)} scored), best first:",
            "#   trial  val      epochs  settings"]
    for r in done[:30]:
        s = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(r["settings"].items()))
        head.append(f"#   {r['number']:>5}  {r['value']:.4f}  {r['best_epoch'] or '-'}/{r['epochs_run'] or '-'}  {s}")
    return "\n".join(head) + "\n\n" + to_toml(apply_settings(cfg, best["settings"]))


def tune(workdir: str | Path, cfg: Config, *, trials: int = 30, budget_minutes: float = 30.0, seed: int = 0,
         fresh: bool = False, space: tuple[Param, ...] = SPACE, fit: Callable[..., dict[str, Any]] | None = None,
         on_trial: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run (or continue) the study in WORKDIR/tune/ until it holds `trials` trials or the budget is
    spent; returns {"best": {...}, "trials": [...], "best_toml", ...}. `space` narrows or changes the
    search (any [model] / [train] key; "model.dynamics" expands as in trial_settings); `fit(workdir,
    cfg, progress=…)` defaults to
    dyembed.replay.train.fit_validation."""
    optuna = require_optuna()
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise InputDataError(f"work directory not found: {workdir}")
    if trials < 1 or not (budget_minutes > 0 and math.isfinite(budget_minutes)):
        raise ConfigError("--trials must be >= 1 and --budget-minutes a positive number")
    protocol = cfg.train.protocol if cfg.train.protocol != "evaluate" else cfg.evaluate.protocol
    if protocol == "none" or not cfg.train.validation:
        raise ConfigError("dyembed tune scores settings on the validation split: use --protocol loo or temporal "
                          "(train.protocol) with train.validation = true")
    if fit is None:
        from dyembed.replay.train import fit_validation as fit
    from dyembed.lock import WorkdirLock

    out_dir = workdir / TUNE_DIR
    out_dir.mkdir(exist_ok=True)
    db = out_dir / "study.db"
    fingerprint = _fingerprint(workdir, cfg, space)
    metric = f"ndcg@{cfg.train.val_k}"
    started = time.perf_counter()
    deadline = started + 60.0 * budget_minutes
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with WorkdirLock(workdir, command="tune", wait=cfg.runtime.lock_wait):
        if fresh and db.exists():
            db.replace(out_dir / "study.db.prev")
        storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
        study = optuna.create_study(study_name=STUDY_NAME, storage=storage, direction="maximize", load_if_exists=True,
                                    sampler=optuna.samplers.TPESampler(seed=seed),
                                    pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1))
        known = study.user_attrs.get("fingerprint")
        if known is None:
            study.set_user_attr("fingerprint", fingerprint)
            study.set_user_attr("protocol", protocol)
        elif known != fingerprint:
            raise ConfigError(f"{db} holds a search over another config or other data (fingerprint {known}, now "
                              f"{fingerprint}); rerun with --fresh to start a new one (the old study is kept)")
        # trials left behind by a killed run can never finish: mark them failed, they do not count
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)

        def objective(trial: Any) -> float:
            params = {p.key: p.suggest(trial) for p in space}
            settings = trial_settings(params)
            trial.set_user_attr("settings", settings)
            trial_cfg = apply_settings(cfg, settings)
            # no epoch starts after the search's deadline
            trial_cfg.train.time_budget = max(1.0, deadline - time.perf_counter())

            def progress(record: dict[str, Any]) -> None:
                if record.get("phase") == "epoch" and record.get("val") is not None:
                    trial.report(float(record["val"]), int(record["epoch"]))
                    if trial.should_prune():
                        trial.set_user_attr("note", f"pruned after epoch {record['epoch']}")
                        raise optuna.TrialPruned()

            t0 = time.perf_counter()
            try:
                summary = fit(workdir, trial_cfg, progress=progress)
            except DivergedError as exc:
                trial.set_user_attr("note", f"diverged: {str(exc).split(':')[0]}")
                trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
                raise optuna.TrialPruned() from None
            except optuna.TrialPruned:
                trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
                raise
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
            trial.set_user_attr("best_epoch", summary["best_epoch"])
            trial.set_user_attr("epochs_run", summary["epochs_run"])
            if summary.get("stopped") == "time_budget":
                trial.set_user_attr("note", "stopped by the search's time budget")
            if summary["best_val"] is None:
                raise InputDataError("the split has no validation rows: nothing to score a setting on")
            return float(summary["best_val"])

        def after_trial(study: Any, trial: Any) -> None:
            rows = _trial_rows(study)
            write_json(out_dir / "trials.json", {"metric": metric, "protocol": protocol, "trials": rows})
            if trial.state == optuna.trial.TrialState.COMPLETE and study.best_trial.number == trial.number:
                best = next(r for r in rows if r["number"] == trial.number)
                write_text(out_dir / "best.toml", best_toml(cfg, best, rows, metric, protocol))
            if on_trial:
                on_trial(next(r for r in rows if r["number"] == trial.number))

        remaining = trials - len(study.get_trials(deepcopy=False, states=counted))
        if remaining > 0:
            study.optimize(objective, n_trials=remaining, timeout=max(0.0, deadline - time.perf_counter()),
                           callbacks=[after_trial], catch=(), gc_after_trial=True)
        rows = _trial_rows(study)
        complete = [r for r in rows if r["state"] == "complete"]
        if not complete:
            raise DivergedError("no trial finished with a validation score (all pruned, diverged or out of time): "
                                "raise --budget-minutes or lower train.epochs")
        best = max(complete, key=lambda r: r["value"])
        # the chosen config is rewritten from the study itself, so it is right after a resume too
        write_text(out_dir / "best.toml", best_toml(cfg, best, rows, metric, protocol))
        write_json(out_dir / "trials.json", {"metric": metric, "protocol": protocol, "trials": rows})
    return {"workdir": str(workdir), "protocol": protocol, "metric": metric, "best": best, "trials": rows,
            "best_toml": str(out_dir / "best.toml"), "study": str(db),
            "seconds": round(time.perf_counter() - started, 1)}
