"""`dyembed demo`: run the whole pipeline on the built-in synthetic drifting-interest world."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dyembed_cli.common import ConfigOpt, SetOpt, check_output, guarded, note, resolve_config



def _step_line(name: str, summary: dict[str, Any]) -> str:
    seconds = summary.get("seconds", 0.0)
    detail = {
        "synth": lambda s: f"{s['events']:,} events (+{s['malformed_rows']} malformed rows), {s['users']:,} users, {s['items']:,} items",
        "preprocess": lambda s: f"{s['events_out']:,} events kept, {s['rejected_total']:,} rejected "
        f"({', '.join(f'{k} {v}' for k, v in s['rejected'].items()) or 'none'})",
        "encode": lambda s: f"{s['encoder']} encoder, {s['items_encoded']:,} items encoded, dim {s['dim']}",
        "train": lambda s: f"{s['epochs_run']} epochs (best {s['best_epoch']}), {s['train_events']:,} training events",
        "evaluate": lambda s: f"protocol {s['protocol']}, {s['counts']['test_events']:,} test events",
    }.get(name, lambda s: "")
    try:
        text = detail(summary)
    except (KeyError, TypeError, ValueError):
        text = ""
    return f"  {name:<10} {seconds:7.1f} s  {text}"


def register(app: typer.Typer) -> None:
    @app.command("demo")
    @guarded
    def demo(
        out_dir: Annotated[Path, typer.Option("--out", "-o", help="Directory for the demo's raw data, work dir and metrics.json.")] = Path("dyembed-demo"),
        model: Annotated[str | None, typer.Option("--model", help="Local model directory or hub id (else $DYEMBED_MODEL, else the config's encoder).")] = None,
        config: ConfigOpt = None,
        set_: SetOpt = None,
    ) -> None:
        """Generate a synthetic drifting-interest world and run preprocess → encode → train → evaluate on it."""
        from dyembed.pipeline import run_demo

        check_output(out_dir, "--out", kind="dir")
        from dyembed_cli.evaluate_cmd import render_report

        cfg = resolve_config(config or Path("demo"), set_)  # the built-in configs/demo.toml
        note(f"dyembed demo → {out_dir}")
        result = run_demo(out_dir, cfg, model=model, on_step=lambda name, s: note(_step_line(name, s)))
        render_report(result["report"])
        note(f"metrics written to {out_dir / 'metrics.json'}")
