"""Reuse of earlier work: the previous artefact (incremental runs) and chunk checkpoints (resume).

Both are keyed by the sha256 of each item's encoder input text, never by item_idx, so a text that
moved, was duplicated or came back is not encoded again. A vector is only reused under the same
model fingerprint (fingerprint id = sha256 of the canonical JSON of the fingerprint dict without
its location keys: content hashes identify the model, not the path it was read from).

Checkpoints live in `<workdir>/.encode_checkpoints/<fingerprint id>/part-NNNNN.npz`, each written
atomically after a chunk of unique texts is encoded; a run killed mid-way loads them and encodes
only what is left. The directory is removed once item_embeddings.parquet is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from dyembed.artefacts import atomic_path

log = logging.getLogger(__name__)

EMBEDDINGS_FILE = "item_embeddings.parquet"
MANIFEST_FILE = "encode_manifest.json"
CHECKPOINT_DIR = ".encode_checkpoints"


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# where the model was found is recorded but is not identity: the same files under another path
# (a moved work dir, a hub id vs its local snapshot) give the same vectors
LOCATION_KEYS = ("model", "model_dir")


def fingerprint_id(fingerprint: dict[str, Any]) -> str:
    content = {k: v for k, v in fingerprint.items() if k not in LOCATION_KEYS}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def load_previous(workdir: Path, fp_id: str) -> dict[str, np.ndarray]:
    """text_hash -> vector from the existing artefact, if it was made under the same fingerprint."""
    manifest_path, table_path = workdir / MANIFEST_FILE, workdir / EMBEDDINGS_FILE
    if not (manifest_path.is_file() and table_path.is_file()):
        return {}
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        log.warning("%s is unreadable; re-encoding everything", manifest_path)
        return {}
    if manifest.get("fingerprint_id") != fp_id:
        log.info("model fingerprint changed (%s -> %s): re-encoding every item", manifest.get("fingerprint_id"), fp_id)
        return {}
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(table_path, columns=["text_hash", "embedding"])
        vectors = embedding_matrix(table.column("embedding"))
    except Exception as exc:  # noqa: BLE001 - a damaged cache only costs a re-encode
        log.warning("%s is unreadable (%s); re-encoding everything", table_path, exc)
        return {}
    return dict(zip(table.column("text_hash").to_pylist(), vectors))


def embedding_matrix(column) -> np.ndarray:
    """A fixed_size_list column as a dense [n, D] numpy array (no copy per row)."""
    import pyarrow as pa

    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    dim = array.type.list_size
    return array.values.to_numpy(zero_copy_only=False).reshape(len(array), dim)


class Checkpoints:
    """Encoded chunks of one fingerprint, so an interrupted run resumes where it stopped."""

    def __init__(self, workdir: Path, fp_id: str):
        self.root = workdir / CHECKPOINT_DIR
        self.dir = self.root / fp_id

    def load(self) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        if not self.dir.is_dir():
            return found
        for part in sorted(self.dir.glob("part-*.npz")):
            try:
                with np.load(part, allow_pickle=False) as data:
                    found.update(zip(data["hashes"].tolist(), data["vectors"]))
            except Exception as exc:  # noqa: BLE001 - a torn file is only lost work
                log.warning("ignoring unreadable checkpoint %s (%s)", part, exc)
        return found

    def save(self, hashes: list[str], vectors: np.ndarray) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        number = len(list(self.dir.glob("part-*.npz")))
        target = self.dir / f"part-{number:05d}.npz"
        with atomic_path(target) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, hashes=np.asarray(hashes, dtype="U64"), vectors=vectors)
        return target

    def clear_stale(self) -> None:
        """Checkpoints of other fingerprints can never be used again."""
        if self.root.is_dir():
            for other in self.root.iterdir():
                if other.is_dir() and other != self.dir:
                    shutil.rmtree(other, ignore_errors=True)

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
