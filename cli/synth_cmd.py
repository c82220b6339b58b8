"""`dyembed synth`: write the raw files of the synthetic drifting-interest world."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dyembed_cli.common import ConfigOpt, SetOpt, check_output, guarded, note, progress_bar, resolve_config


def register(app: typer.Typer) -> None:
    @app.command("synth")
    @guarded
    def synth(
        out: Annotated[Path, typer.Option("--out", "-o", help="Directory for events.csv, items.jsonl, world.json.")],
        users: Annotated[int | None, typer.Option(help="Number of users.")] = None,
        items: Annotated[int | None, typer.Option(help="Number of items.")] = None,
        events: Annotated[int | None, typer.Option(help="Number of events.")] = None,
        topics: Annotated[int | None, typer.Option(help="Number of interest topics (at most 16).")] = None,
        drift_rate: Annotated[float | None, typer.Option(help="Expected interest changes per user.")] = None,
        seed: Annotated[int | None, typer.Option(help="Random seed (same seed ⇒ byte-identical files).")] = None,
        config: ConfigOpt = None,
        set_: SetOpt = None,
    ) -> None:
        """Generate a synthetic drifting-interest world (raw CSV/JSONL, streamed: 10M events fit in memory)."""
        from dyembed.synth import generate

        check_output(out, "--out", kind="dir")

        flags = {"synth.users": users, "synth.items": items, "synth.events": events, "synth.topics": topics,
                 "synth.drift_rate": drift_rate, "synth.seed": seed}
        cfg = resolve_config(config, set_, flags)
        with progress_bar(cfg.synth.events, "synth", unit="ev") as bar:
            summary = generate(cfg.synth, out, progress=lambda n: bar.update(n - bar.n))
        note(f"wrote {summary['events']:,} events (+{summary['malformed_rows']} malformed rows), "
             f"{summary['users']:,} users, {summary['items']:,} items to {out}")
