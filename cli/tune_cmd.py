"""`dyembed tune`: search the main settings on the validation split and write the chosen config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dyembed_cli.common import (ConfigOpt, DeviceOpt, JsonFileOpt, JsonOpt, SetOpt, cfg_default, check_output, emit_json, guarded, note, out,
                                resolve_config)


def _fmt_settings(settings: dict[str, Any]) -> str:
    return " ".join(f"{k.split('.', 1)[1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.', 1)[1]}={v}"
                    for k, v in sorted(settings.items()))


def render(summary: dict[str, Any]) -> None:
    from rich.table import Table

    rows = sorted(summary["trials"], key=lambda r: (r["value"] is None, -(r["value"] or 0.0)))
    table = Table(title=f"dyembed tune · {summary['protocol']} validation split · {len(rows)} trials, best first",
                  title_justify="left")
    for col, kw in (("trial", {"justify": "right"}), (f"val {summary['metric'].upper()}", {"justify": "right"}),
                    ("epoch", {"justify": "right"}), ("seconds", {"justify": "right"}), ("settings", {}), ("state", {})):
        table.add_column(col, **kw)
    for r in rows[:20]:
        table.add_row(str(r["number"]), "–" if r["value"] is None else f"{r['value']:.4f}",
                      f"{r['best_epoch'] or '–'}/{r['epochs_run'] or '–'}", f"{r['seconds'] or 0:.0f}",
                      _fmt_settings(r["settings"]), r["note"] or r["state"])
    out.print(table)
    best = summary["best"]
    note(f"best: trial {best['number']}, validation {summary['metric']} {best['value']:.4f}; "
         f"config → {summary['best_toml']} (train with: dyembed train {summary['workdir']} --config {summary['best_toml']}); "
         f"{summary['seconds']:.0f} s")


def register(app: typer.Typer) -> None:
    @app.command("tune")
    @guarded
    def tune_command(
        workdir: Annotated[Path, typer.Argument(help="Work directory (after `dyembed encode`).")],
        trials: Annotated[int, typer.Option("--trials", help="Trials in the study in all (a rerun continues it).")] = 30,
        budget_minutes: Annotated[float, typer.Option("--budget-minutes", help="Wall-time budget of this run.")] = 30.0,
        protocol: Annotated[str | None, typer.Option("--protocol", show_default=cfg_default("train.protocol"), help="Split to validate on: loo | temporal (default: train.protocol).")] = None,
        epochs: Annotated[int | None, typer.Option("--epochs", show_default=cfg_default("train.epochs"), help="Epoch cap of every trial (early stopping on validation).")] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the sampler.")] = 0,
        fresh: Annotated[bool, typer.Option("--fresh", help="Start a new study (the old one is kept as tune/study.db.prev).")] = False,
        json_out: JsonOpt = False,
        json_file: JsonFileOpt = None,
        device: DeviceOpt = None,
        config: ConfigOpt = None,
        set_: SetOpt = None,
    ) -> None:
        """Search step size, lr, dim, rule, history/context/repeat and regularisation on the validation split (never test)."""
        if protocol is not None and protocol not in ("loo", "temporal"):
            raise typer.BadParameter("must be loo or temporal", param_hint="--protocol")
        from dyembed.tune import require_optuna, tune

        require_optuna()  # the one-line error before any work
        check_output(json_file, "--json-file")
        cfg = resolve_config(config, set_, {"train.protocol": protocol, "train.epochs": epochs, "runtime.device": device}, workdir)

        def on_trial(row: dict[str, Any]) -> None:
            value = "–" if row["value"] is None else f"{row['value']:.4f}"
            note(f"trial {row['number']}: {value} ({row['note'] or row['state']}) {_fmt_settings(row['settings'])}")

        summary = tune(workdir, cfg, trials=trials, budget_minutes=budget_minutes, seed=seed, fresh=fresh, on_trial=on_trial)
        if not emit_json(summary, json_out, json_file):
            render(summary)
