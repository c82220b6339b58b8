"""`dyembed train`: learn θ by replay and write the users' states to WORKDIR/state/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from dyembed_cli.common import ConfigOpt, SetOpt, check_output, guarded, note, out, progress_bar, resolve_config


def render_summary(summary: dict[str, Any]) -> None:
    """Epoch table (loss curve, validation metric, time) and a one-line result."""
    from rich.table import Table

    if summary.get("resumed"):
        note(f"resumed: {summary['new_events']:,} new events replayed "
             f"({'θ updated' if summary['update_global'] else 'θ frozen'}), {summary['events_per_second']:,.0f} events/s, "
             f"{summary['users']:,} users; watermark → row {summary['watermark']['rows']:,}")
        return
    history = summary.get("history", [])
    metric = summary.get("val_metric")
    table = Table(title=f"dyembed train · {summary['protocol']} split · {summary['train_events']:,} training events, "
                        f"{summary['users']:,} users, {summary['items']:,} items · rule {summary['rule']}, loss {summary['loss']}",
                  title_justify="left")
    table.add_column("epoch", justify="right")
    table.add_column("train loss", justify="right")
    if metric:
        table.add_column(f"val {metric.upper().replace('NDCG', 'NDCG')}", justify="right")
    table.add_column("step size α", justify="right")
    table.add_column("seconds", justify="right")
    for rec in history:
        row = [str(rec["epoch"]), f"{rec['loss']:.4f}"]
        if metric:
            val = rec.get(f"val_{metric}")
            mark = " *" if rec["epoch"] == summary.get("best_epoch") else ""
            row.append("–" if val is None else f"{val:.4f}{mark}")
        row += [f"{rec['alpha']:.3g}", f"{rec['seconds']:.1f}"]
        table.add_row(*row)
    out.print(table)
    best = f", best epoch {summary['best_epoch']} (val {metric} {summary['best_val']:.4f})" if summary.get("best_val") is not None else ""
    note(f"{summary['epochs_run']} epochs ({summary['stopped']}){best}; training {summary['train_seconds']:.1f} s "
         f"({summary['train_events_per_second']:,.0f} events/s), total {summary['seconds']:.1f} s on {summary.get('device', 'cpu')}; "
         f"state → {summary['state_dir']}")


def register(app: typer.Typer) -> None:
    @app.command("train")
    @guarded
    def train_command(
        workdir: Annotated[Path, typer.Argument(help="Work directory (events.parquet, item_embeddings.parquet).")],
        epochs: Annotated[int | None, typer.Option("--epochs", help="Maximum number of epochs.")] = None,
        protocol: Annotated[str | None, typer.Option(
            "--protocol", help="Split to train and validate on: loo | temporal | none (none: every event is training; "
                               "default: train.protocol, whose 'evaluate' takes [evaluate] protocol).")] = None,
        resume: Annotated[bool, typer.Option("--resume", help="Replay only events newer than the state's watermark.")] = False,
        update_global: Annotated[bool, typer.Option("--update-global", help="With --resume: also update θ on the new events.")] = False,
        device: Annotated[str | None, typer.Option("--device", help="auto | cpu | gpu.")] = None,
        tensorboard: Annotated[Path | None, typer.Option("--tensorboard", help="Write loss / validation scalars for TensorBoard here.")] = None,
        json_path: Annotated[str | None, typer.Option("--json", help="Also write the summary as JSON to this file ('-' = stdout).")] = None,
        config: ConfigOpt = None,
        set_: SetOpt = None,
    ) -> None:
        """Learn the global parameters θ by replaying the training period, and store the users' states."""
        if protocol is not None and protocol not in ("loo", "temporal", "none"):
            raise typer.BadParameter("must be loo, temporal or none", param_hint="--protocol")
        if device is not None and device not in ("auto", "cpu", "gpu"):
            raise typer.BadParameter("must be auto, cpu or gpu", param_hint="--device")
        check_output(json_path, "--json")
        check_output(tensorboard, "--tensorboard", kind="dir")
        from dyembed.replay.train import train

        flags = {"train.epochs": epochs, "train.protocol": protocol, "runtime.device": device,
                 "train.tensorboard": str(tensorboard) if tensorboard else None}
        cfg = resolve_config(config, set_, flags, workdir)
        bar_state: dict[str, Any] = {"bar": None, "key": None}

        def progress(record: dict[str, Any]) -> None:
            if record["phase"] == "epoch":
                return
            key = (record["phase"], record["epoch"])
            if bar_state["key"] != key:
                if bar_state["bar"] is not None:
                    bar_state["bar"].close()
                label = record["phase"] if not record["epoch"] else f"{record['phase']} {record['epoch']}"
                bar_state["bar"] = progress_bar(record["total"], label, unit="ev")
                bar_state["key"] = key
            bar = bar_state["bar"]
            bar.update(record["done"] - bar.n)

        try:
            summary = train(workdir, cfg, resume=resume, update_global=update_global, progress=progress)
        finally:
            if bar_state["bar"] is not None:
                bar_state["bar"].close()
        if json_path == "-":
            out.print_json(json.dumps(summary, default=str))
        else:
            if json_path:
                from dyembed.artefacts import write_json

                write_json(json_path, summary)
            render_summary(summary)
