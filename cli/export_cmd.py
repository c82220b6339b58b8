"""`dyembed export`: the serving state as a TensorFlow SavedModel plus ANN tables (docs/serving.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dyembed_cli.common import guarded, note, out


def register(app: typer.Typer) -> None:
    @app.command("export")
    @guarded
    def export_command(
        workdir: Annotated[Path, typer.Argument(help="A trained work directory.")],
        out_dir: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the export to (new or empty).")],
        force: Annotated[bool, typer.Option("--force", help="Replace an earlier export at --out.")] = False,
        faiss: Annotated[bool, typer.Option("--faiss/--no-faiss", help="Also write ann/items.faiss when faiss-cpu is installed.")] = True,
        hashed_ids: Annotated[bool, typer.Option("--hashed-ids", help="Export a work dir preprocessed with --hash-user-ids (requests must carry the pseudonyms).")] = False,
        json_out: Annotated[bool, typer.Option("--json", help="Print the summary as ONE line of JSON on stdout (nothing else).")] = False,
    ) -> None:
        """Write a TensorFlow SavedModel (recommend, update_and_recommend, embed_items) and ANN tables.

        The SavedModel runs without dyembed (tf.saved_model.load, TensorFlow Serving). Exit codes:
        0 written, 2 bad --out / hashed ids, 3 no work dir, 4 no state / corrupt / foreign state.
        """
        from dyembed.export.run import export

        summary = export(workdir, out_dir, force=force, faiss=faiss, hashed_ids=hashed_ids)
        if json_out:
            typer.echo(json.dumps(summary))
            return
        for line in summary.get("notes", []):
            note(f"note: {line}")
        mb = summary["saved_model_bytes"] / 2**20
        out.print(f"exported state version {summary['state_version']} ({summary['n_users']:,} users, "
                  f"{summary['n_items']:,} items) to {out_dir}: {summary['saved_model']} ({mb:,.1f} MB), "
                  f"ann/ tables; {summary['durations']['total']:.1f} s")
