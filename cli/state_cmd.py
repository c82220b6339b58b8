"""`dyembed state list|verify|rollback`: the stored state versions, their watermarks and checksums."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from dyembed_cli.common import GLOBALS, guarded, note, out

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as ONE line of JSON on stdout.")]


def _table(rows: list[dict[str, Any]], title: str, checks: bool):
    from rich.table import Table

    table = Table(title=title)
    for name in ("dir", "version", "created", "watermark rows", "last ts", "users", "items"):
        table.add_column(name, justify="left" if name in ("dir", "created") else "right")
    if checks:
        table.add_column("check")
        table.add_column("lineage")
    for r in rows:
        mark = r.get("watermark") or {}
        cells = [r["dir"], str(r.get("version", "–")), str(r.get("created", "–")), f"{mark.get('rows', '–')}",
                 f"{mark.get('last_ts', '–')}", str(r.get("users", "–")), str(r.get("items", "–"))]
        if checks:
            lineage = r.get("lineage", "–")
            cells.append("ok" if r.get("files_ok", r.get("ok")) else r.get("problem", "?"))
            # a foreign current version fails (the error line says why); a previous one is only
            # marked here: rolling back to it is refused
            cells.append(lineage if lineage in ("ok", "–") else "does not belong to the work dir's files")
        table.add_row(*cells)
    return table


def register(app: typer.Typer) -> None:
    state_app = typer.Typer(help="Inspect, verify and roll back the work directory's user-state versions.",
                            no_args_is_help=True)
    app.add_typer(state_app, name="state")

    @state_app.command("list")
    @guarded
    def list_command(workdir: Annotated[Path, typer.Argument(help="Work directory.")], json_out: JsonOpt = False) -> None:
        """State versions (current first): version, creation time, watermark, sizes, file checksums."""
        from dyembed.state_versions import list_states

        rows = list_states(workdir)
        if json_out:
            typer.echo(json.dumps(rows, default=str, separators=(",", ":")))
        elif not GLOBALS.quiet:
            out.print(_table(rows, f"states in {workdir}", checks=False))
            for r in rows:
                for name, rec in r.get("files", {}).items():
                    out.print(f"  {r['dir']}/{name}  {rec.get('bytes')} B  sha256 {rec.get('sha256')}")

    @state_app.command("verify")
    @guarded
    def verify_command(workdir: Annotated[Path, typer.Argument(help="Work directory.")], json_out: JsonOpt = False,
                       all_versions: Annotated[bool, typer.Option("--all", help="Also verify the previous versions.")] = True) -> None:
        """Check every state file (size, sha256, no NaN/inf) and the current state's lineage against the work
        dir's files; exit 4 naming what is wrong."""
        from dyembed.errors import StateError
        from dyembed.state_versions import verify_states

        rows = verify_states(workdir, include_previous=all_versions)
        if json_out:
            typer.echo(json.dumps(rows, default=str, separators=(",", ":")))
        elif not GLOBALS.quiet:
            out.print(_table(rows, f"state verification in {workdir}", checks=True))
        bad = [r for r in rows if not r["ok"]]
        if bad:
            raise StateError("; ".join(r["problem"] for r in bad))
        note(f"{len(rows)} state version(s) verified")

    @state_app.command("rollback")
    @guarded
    def rollback_command(
        workdir: Annotated[Path, typer.Argument(help="Work directory.")],
        to: Annotated[int | None, typer.Option("--to", help="Version to restore (default: the newest previous one).")] = None,
        wait: Annotated[float, typer.Option("--wait", help="Seconds to wait for another run's lock.")] = 0.0,
    ) -> None:
        """Make a previous state version current (the current one becomes a previous version).

        The next `dyembed update` / `train --resume` replays every event after the restored
        state's watermark again, so the events are not lost — only the state moves back."""
        import math

        from dyembed.state_versions import rollback

        if not math.isfinite(wait) or wait < 0:
            raise typer.BadParameter(f"must be a number of seconds >= 0; got {wait:g}", param_hint="--wait")
        if to is not None and to < 1:
            raise typer.BadParameter(f"must be a state version (1 or more); got {to}", param_hint="--to")
        info = rollback(workdir, version=to, wait=wait)
        note(f"state version {info['restored']} is current again (was {info['replaced']}); "
             f"watermark row {info['watermark']['rows']:,}")
