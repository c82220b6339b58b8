"""`dyembed preprocess`: raw logs + item texts → validated, time-ordered work-directory artefacts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dyembed_cli.common import GLOBALS, ConfigOpt, JsonFileOpt, JsonOpt, SetOpt, emit_json, guarded, note, out, progress_bar, resolve_config

FORMATS = "generic, synth, movielens-100k, movielens-1m, movielens-latest, amazon-2018, mind, recbole"


def render_summary(summary: dict) -> None:
    from rich.table import Table

    table = Table(title=f"preprocess {summary['workdir']} ({summary['format']}, {summary['mode']})", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    table.add_row("events in", f"{summary['rows_in']:,}")
    table.add_row("events out", f"{summary['events_out']:,}")
    if summary["mode"] == "append":
        table.add_row("events in work dir", f"{summary['total_events']:,}")
    table.add_row("rejected", f"{summary['rejected_total']:,}")
    for reason, n in summary["rejected"].items():
        table.add_row(f"  {reason}", f"{n:,}")
    new_u = f" (+{summary['new_users']:,} new)" if summary["mode"] == "append" else ""
    new_i = f" (+{summary['new_items']:,} new)" if summary["mode"] == "append" else ""
    table.add_row("users", f"{summary['users']:,}{new_u}")
    table.add_row("items", f"{summary['items']:,}{new_i}")
    table.add_row("items without text", f"{summary['items_without_text']:,}")
    if summary.get("user_ids_hashed"):
        table.add_row("user ids", "hashed (HMAC-SHA256)")
    tr = summary["time_range"]
    table.add_row("time range", f"{tr['min']} .. {tr['max']}" if tr["min"] else "–")
    if summary.get("late_kept"):
        table.add_row("late events kept", f"{summary['late_kept']:,}")
    if summary.get("late_clamped"):
        table.add_row("late events clamped", f"{summary['late_clamped']:,}")
    table.add_row("seconds", f"{summary['seconds']:.1f}")
    out.print(table)


def register(app: typer.Typer) -> None:
    @app.command("preprocess")
    @guarded
    def preprocess(
        workdir: Annotated[Path, typer.Argument(help="Work directory for events/items/users/rejected parquet, manifest.json, config.toml.")],
        input_dir: Annotated[Path | None, typer.Option("--input", "-i", help="Directory with a built-in format's files (e.g. ml-100k/, a `dyembed synth` output).")] = None,
        events: Annotated[Path | None, typer.Option("--events", help="Events file (CSV/TSV/JSONL/Parquet, .gz ok); wins over --input.")] = None,
        items: Annotated[Path | None, typer.Option("--items", help="Items file with the item texts; wins over --input.")] = None,
        format_: Annotated[str | None, typer.Option("--format", "-f", help=f"Input format: {FORMATS}.")] = None,
        append: Annotated[bool, typer.Option("--append", help="Add a newer log to an existing work dir (stable ids).")] = False,
        allow_late: Annotated[str | None, typer.Option("--allow-late", help="With --append, events older than the watermark: drop (quarantine as out_of_order), keep (merge at their time), clamp (move to the watermark).")] = None,
        hash_user_ids: Annotated[str | None, typer.Option("--hash-user-ids", metavar="SALT", show_default=False, help="Replace every user id by a keyed hash (HMAC-SHA256 with this secret salt) in every artefact; --append needs the same salt. Default: $DYEMBED_USER_ID_SALT when set (keeps the salt off the command line). The salt is never stored.")] = None,
        json_out: JsonOpt = False,
        json_file: JsonFileOpt = None,
        config: ConfigOpt = None,
        set_: SetOpt = None,
    ) -> None:
        """Validate raw logs (bad rows → rejected.parquet with a reason), clean item texts, sort events by time."""
        import os

        from dyembed.preprocess.pseudonym import salt_from
        from dyembed.preprocess.run import preprocess as run_preprocess

        flags = {
            "data.input": str(input_dir) if input_dir else None,
            "data.events": str(events) if events else None,
            "data.items": str(items) if items else None,
            "data.format": format_,
        }
        cfg = resolve_config(config, set_, flags, workdir)
        salt = salt_from(hash_user_ids, os.environ)
        # a new --input replaces the events/items paths remembered in the work dir's config.toml
        if input_dir and not events:
            cfg.data.events = None
        if input_dir and not items:
            cfg.data.items = None
        with progress_bar(None, "preprocess", unit="row") as bar:
            summary = run_preprocess(workdir, cfg, append=append, allow_late=allow_late, progress=lambda n: bar.update(n - bar.n),
                                     user_id_salt=salt)
        if emit_json(summary, json_out, json_file):
            return
        if not GLOBALS.quiet:
            render_summary(summary)
        note(f"wrote {summary['total_events']:,} events, {summary['users']:,} users, {summary['items']:,} items to {workdir}")
