"""`dyembed export`: the serving state as a TensorFlow SavedModel plus ANN tables (docs/serving.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dyembed_cli.common import DeviceOpt, JsonFileOpt, JsonOpt, check_output, emit_json, guarded, note, out


def register(app: typer.Typer) -> None:
    @app.command("export")
    @guarded
    def export_command(
        workdir: Annotated[Path, typer.Argument(help="A trained work directory.")],
        out_dir: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the export to (new or empty).")],
        force: Annotated[bool, typer.Option("--force", help="Replace an earlier export at --out.")] = False,
        faiss: Annotated[bool, typer.Option("--faiss/--no-faiss", help="Also write ann/items.faiss when faiss-cpu is installed.")] = True,
        hashed_ids: Annotated[bool, typer.Option("--hashed-ids", help="Export a work dir preprocessed with --hash-user-ids (requests must carry the pseudonyms).")] = False,
        json_out: JsonOpt = False,
        json_file: JsonFileOpt = None,
        device: DeviceOpt = None,
    ) -> None:
        """Write a TensorFlow SavedModel (recommend, update_and_recommend, update_from_states, embed_items) + ANN tables.

        The SavedModel runs without dyembed (tf.saved_model.load, TensorFlow Serving). Exit codes:
        0 written, 2 bad --out / hashed ids, 3 no work dir, 4 no state / corrupt / foreign state.
        """
        from dyembed.export.run import export

        check_output(json_file, "--json-file")
        if device is not None:
            from dyembed.replay.runtime import apply_device

            apply_device(device)  # where the export's check replay runs; the SavedModel itself places anywhere
        summary = export(workdir, out_dir, force=force, faiss=faiss, hashed_ids=hashed_ids)
        if emit_json(summary, json_out, json_file):
            return
        for line in summary.get("notes", []):
            note(f"note: {line}")
        mb = summary["saved_model_bytes"] / 2**20
        out.print(f"exported state version {summary['state_version']} ({summary['n_users']:,} users, "
                  f"{summary['n_items']:,} items) to {out_dir}: {summary['saved_model']} ({mb:,.1f} MB), "
                  f"ann/ tables; {summary['durations']['total']:.1f} s")
