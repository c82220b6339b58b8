"""`dyembed update`: the nightly cron step — append a new log, encode new items, resume the state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from dyembed_cli.common import ConfigOpt, SetOpt, GLOBALS, guarded, note, out, progress_bar, resolve_config


def render_summary(summary: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"update {summary['workdir']} · {summary['status']}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    table.add_row("events added", f"{summary['events_added']:,}")
    table.add_row("events rejected", f"{summary['events_rejected']:,}")
    for reason, n in (summary.get("rejected") or {}).items():
        table.add_row(f"  {reason}", f"{n:,}")
    table.add_row("new users / items", f"{summary['new_users']:,} / {summary['new_items']:,}")
    table.add_row("items encoded", f"{summary['items_encoded']:,}")
    table.add_row("users updated", f"{summary['users_updated']:,}")
    metrics = summary.get("metrics")
    if metrics:
        for name, value in metrics["per_event"].items():
            if value is not None and (name.startswith(("recall@", "ndcg@")) or name == "mrr"):
                table.add_row(f"window {name}", f"{value:.4f}")
    table.add_row("state version", f"{summary['state_version_before']} → {summary['state_version']}")
    table.add_row("watermark", f"row {summary['watermark']['rows']:,}, ts {summary['watermark']['last_ts']}")
    table.add_row("seconds", f"{summary['durations']['total']:.1f}")
    out.print(table)


def register(app: typer.Typer) -> None:
    @app.command("update")
    @guarded
    def update_command(
        workdir: Annotated[Path, typer.Argument(help="A trained work directory (preprocess + encode + train done).")],
        new_log: Annotated[Path, typer.Option("--new-log", help="Events file with the new events (same format as the work dir's).")],
        new_items: Annotated[Path | None, typer.Option("--new-items", help="Items file with new or changed item texts.")] = None,
        json_out: Annotated[bool, typer.Option("--json", help="Print the summary as ONE line of JSON on stdout (nothing else).")] = False,
        wait: Annotated[float | None, typer.Option("--wait", help="Seconds to wait for another run's lock (default: fail at once, exit 4).")] = None,
        keep: Annotated[int | None, typer.Option("--keep", help="Previous state versions to keep (runtime.keep_states).")] = None,
        hash_user_ids: Annotated[str | None, typer.Option("--hash-user-ids", metavar="SALT", show_default=False, help="The salt the work dir was preprocessed with (--hash-user-ids); default: $DYEMBED_USER_ID_SALT, which keeps it out of the crontab line. Never stored.")] = None,
        config: ConfigOpt = None,
        set_: SetOpt = None,
    ) -> None:
        """Append a new log, encode new items, replay the new events into the state, score the new window.

        Exit codes: 0 done (also when the file was already applied), 2 usage/config, 3 bad input,
        4 locked / no state / corrupt state.
        """
        import os

        from dyembed.preprocess.pseudonym import salt_from
        from dyembed.update import update

        import math

        if wait is not None and (not math.isfinite(wait) or wait < 0):
            raise typer.BadParameter(f"must be a number of seconds >= 0; got {wait:g}", param_hint="--wait")
        if keep is not None and keep < 1:
            raise typer.BadParameter(f"must be >= 1 (the number of previous state versions kept); got {keep}", param_hint="--keep")
        flags: dict[str, Any] = {"runtime.lock_wait": wait}
        if keep is not None:
            flags["runtime.keep_states"] = keep
        cfg = resolve_config(config, set_, flags, workdir)
        salt = salt_from(hash_user_ids, os.environ)
        bars: dict[str, Any] = {"bar": None, "phase": None}

        def progress(record: dict[str, Any]) -> None:
            if json_out:
                return
            if bars["phase"] != record["phase"]:
                if bars["bar"] is not None:
                    bars["bar"].close()
                bars["bar"] = progress_bar(record.get("total"), record["phase"], unit="ev")
                bars["phase"] = record["phase"]
            bars["bar"].update(record["done"] - bars["bar"].n)

        try:
            summary = update(workdir, cfg, new_log=new_log, new_items=new_items, progress=progress, user_id_salt=salt)
        finally:
            if bars["bar"] is not None:
                bars["bar"].close()
        if json_out:
            # one line, for scripts: `dyembed update … --json | jq .status`
            typer.echo(json.dumps(summary, default=str, separators=(",", ":")))
            return
        if not GLOBALS.quiet:
            render_summary(summary)
        if summary["status"] == "already_applied":
            note(f"{new_log} was already applied ({summary.get('already_applied_at')}); nothing added")
