"""`dyembed encode`: item texts → item_embeddings.parquet (pretrained LM or hashing), cached and incremental."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dyembed_cli.common import GLOBALS, ConfigOpt, SetOpt, check_output, guarded, note, out, progress_bar, resolve_config


def register(app: typer.Typer) -> None:
    @app.command("encode")
    @guarded
    def encode(
        workdir: Annotated[Path, typer.Argument(help="Work directory with items.parquet (from `dyembed preprocess`).")],
        model: Annotated[str | None, typer.Option("--model", "-m", help="Local model directory or cached hub id, or 'hashing' (else $DYEMBED_MODEL, else encode.encoder).")] = None,
        batch_size: Annotated[int | None, typer.Option("--batch-size", help="Texts per forward pass (halved automatically on out-of-memory).")] = None,
        adapt_steps: Annotated[int | None, typer.Option("--adapt-steps", help="Masked-LM steps on the item texts before encoding (0: off).")] = None,
        json_path: Annotated[str | None, typer.Option("--json", help="Also write the summary as JSON to this file ('-' = stdout).")] = None,
        config: ConfigOpt = None,
        set_: SetOpt = None,
    ) -> None:
        """Encode every item's text into a feature vector; reruns encode only new or changed texts."""
        from rich.table import Table

        from dyembed.encode.run import encode as run_encode

        check_output(json_path, "--json")

        flags = {"encode.batch_size": batch_size, "encode.adapt_steps": adapt_steps}
        cfg = resolve_config(config, set_, flags, workdir)
        with progress_bar(None, "encode", unit="item") as bar:
            def report(done: int, total: int) -> None:
                if bar.total != total:
                    bar.total = total
                    bar.refresh()
                bar.update(done - bar.n)

            summary = run_encode(workdir, cfg, model=model, progress=report)
        if summary.get("fallback_reason"):
            note(f"note: fell back to the hashing encoder: {summary['fallback_reason']}")
        if json_path == "-":
            out.print_json(json.dumps(summary, default=str))
            return
        if json_path:
            from dyembed.artefacts import write_json

            write_json(json_path, summary)
        if GLOBALS.quiet:
            return
        table = Table(title=f"encode {workdir}", show_header=False)
        rows = [
            ("encoder", summary["encoder"]),
            ("weights", summary.get("weights_layout")),
            ("pooling", summary.get("pooling")),
            ("max length", summary.get("max_length")),
            ("dimension", f"{summary['dim']} ({summary['dtype']})"),
            ("items", f"{summary['items']:,} ({summary['unique_texts']:,} distinct texts)"),
            ("encoded now", f"{summary['items_encoded']:,}"),
            ("reused", f"{summary['items_reused']:,}"),
            ("resumed from checkpoint", f"{summary['resumed_from_checkpoint']:,}" if summary["resumed_from_checkpoint"] else None),
            ("items/s", f"{summary['items_per_second']:,}" if summary.get("items_per_second") else None),
            ("fingerprint", summary["fingerprint_id"]),
        ]
        adapt = summary.get("adapt")
        if adapt:
            rows.append(("MLM loss (held out)", f"{adapt['loss_before']:.4f} → {adapt['loss_after']:.4f} after {adapt['steps']} steps"))
            rows.append(("adapted model", adapt["model_dir"]))
        for key, value in rows:
            if value is not None:
                table.add_row(key, str(value))
        out.print(table)
