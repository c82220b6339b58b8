"""`preprocess --append`: the work dir and the new run must belong together (called first).

An append adds rows to one dataset's log. It is refused when
- the run would read the log differently from the runs before it: another `data.format` (two
  datasets merged into one log), another item text template or language (old and new items'
  texts, hence their vectors, of another kind) — ConfigError, exit 2, like a different salt;
- the work dir's artefacts no longer are what its manifest.json describes (a file deleted,
  truncated or replaced: e.g. rejected.parquet removed, whose rows the manifest still counts, or
  counts that do not add up) — StateError, exit 4: appending would carry the damage forward.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dyembed.artefacts import sha256_file
from dyembed.errors import ConfigError, StateError

# settings every run of a work dir must share: (manifest key, config key, why)
SHARED = (
    ("format", "data.format", "would merge two datasets into one log"),
    ("text_template", "data.text_template", "would give old and new items texts (and vectors) of another kind"),
    ("language", "data.language", "would tokenise old and new item texts differently"),
)


def check_append(workdir: Path, manifest: dict[str, Any], run: dict[str, Any]) -> None:
    """`run`: this run's values of the SHARED manifest keys (format, text_template, language)."""
    for key, config_key, why in SHARED:
        before = manifest.get(key)
        if before is not None and run.get(key) != before:
            raise ConfigError(f"{workdir} was preprocessed with {config_key}={before!r}; --append with "
                              f"{run.get(key)!r} {why}: append with the work dir's settings, or preprocess the other data "
                              "into its own work dir")
    _check_outputs(workdir, manifest)


def _check_outputs(workdir: Path, manifest: dict[str, Any]) -> None:
    outputs = manifest.get("outputs")
    if not isinstance(outputs, dict):
        return  # a manifest from before outputs were recorded
    again = "restore it from a backup, or preprocess again from the raw logs (without --append)"
    for name, record in outputs.items():
        if not isinstance(record, dict):
            continue
        path = workdir / name
        if not path.is_file():
            rows = record.get("rows")
            raise StateError(f"{path} is missing but {workdir / 'manifest.json'} records it"
                             + (f" ({rows:,} rows)" if isinstance(rows, int) else "") + f"; {again}")
        size = path.stat().st_size
        if size != record.get("bytes") or sha256_file(path) != record.get("sha256"):
            raise StateError(f"{path} is not the file {workdir / 'manifest.json'} records ({size:,} bytes, manifest says "
                             f"{record.get('bytes')}, or other content): an edited or foreign file; {again}")
    counts = manifest.get("counts") or {}
    rows_in, events, rejected = counts.get("rows_in"), counts.get("events_out"), counts.get("rejected_total")
    recorded = {name: (outputs.get(name) or {}).get("rows") for name in ("events.parquet", "rejected.parquet")}
    if all(isinstance(v, int) for v in (rows_in, events, rejected)) and (
            rows_in != events + rejected or recorded["events.parquet"] not in (None, events)
            or recorded["rejected.parquet"] not in (None, rejected)):
        raise StateError(f"{workdir / 'manifest.json'} does not add up (rows in {rows_in:,} vs events {events:,} + "
                         f"rejected {rejected:,}; files: {recorded}): {again}")
