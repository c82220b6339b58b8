"""`dyembed encode`: items.parquet → item_embeddings.parquet + encode_manifest.json.

Steps: pick the encoder (`--model` > $DYEMBED_MODEL > `encode.encoder`), optionally adapt it to the
item texts (masked-LM, `encode.adapt_steps`), fingerprint it, hash every item's input text, reuse
vectors from the previous artefact (same fingerprint) and from checkpoints of an interrupted run,
encode the remaining unique texts in checkpointed chunks, and write both artefacts atomically.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dyembed.artefacts import SCHEMA_VERSION, atomic_group, file_record, require_file, write_json_to, write_table
from dyembed.config import Config
from dyembed.encode.cache import EMBEDDINGS_FILE, MANIFEST_FILE, Checkpoints, fingerprint_id, load_previous, text_hash
from dyembed.encode.hashing import HashingEncoder, hashing_input
from dyembed.errors import ConfigError, DyembedError, InputDataError
from dyembed.lock import WorkdirLock

log = logging.getLogger(__name__)

ITEMS_FILE = "items.parquet"
MODEL_ENV = "DYEMBED_MODEL"
Progress = Callable[[int, int], None]


def resolve_encoder_spec(configured: str, model: str | None = None) -> str:
    """`--model` > $DYEMBED_MODEL > encode.encoder; a bare dir or hub id means `hf:<it>`."""
    source = "--model" if model else f"${MODEL_ENV}" if os.environ.get(MODEL_ENV) else "config key 'encode.encoder'"
    chosen = (model or os.environ.get(MODEL_ENV) or configured).strip()
    if chosen == "hashing" or chosen.startswith("hf:"):
        return chosen
    if not chosen or (":" in chosen.split("/")[0] and not Path(chosen).exists()):
        raise ConfigError(f"{source} must be 'hashing', a model directory or 'hf:<model dir or hub id>', got '{chosen}'")
    return f"hf:{chosen}"


def read_items(workdir: Path, column: str):
    """item_idx (sorted, dense) and the input column of items.parquet, as a pyarrow table."""
    import pyarrow.parquet as pq

    path = require_file(workdir / ITEMS_FILE, "items file")
    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # noqa: BLE001 - not a parquet file
        raise InputDataError(f"items file {path} is not a readable parquet file: {exc}") from None
    for name in ("item_idx", column):
        if name not in schema.names:
            raise InputDataError(f"items file {path} has no '{name}' column (columns: {', '.join(schema.names)})")
    import pyarrow as pa

    kind = schema.field(column).type
    is_text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
    is_tokens = (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and pa.types.is_string(kind.value_type)
    if not (is_tokens if column == "tokens" else is_text):
        want = "list<string>" if column == "tokens" else "string"
        raise InputDataError(f"items file {path}: column '{column}' is {kind}, expected {want}")
    table = pq.read_table(path, columns=["item_idx", column]).sort_by("item_idx")
    idx = table.column("item_idx").to_numpy()
    if len(idx) and not np.array_equal(idx, np.arange(len(idx))):
        raise InputDataError(f"items file {path}: item_idx must be dense 0..{len(idx) - 1} without duplicates")
    return table


def check_settings(cfg: Config) -> None:
    """Reject out-of-range [encode] values up front (so a fallback never hides a config mistake)."""
    from dyembed.encode.adapt import check_adapt_settings

    ecfg = cfg.encode
    for key, value, minimum in (("checkpoint_every", ecfg.checkpoint_every, 1), ("batch_size", ecfg.batch_size, 1),
                                ("max_length", ecfg.max_length, 2), ("hashing_dim", ecfg.hashing_dim, 1),
                                ("adapt_steps", ecfg.adapt_steps, 0), ("compile_min_texts", ecfg.compile_min_texts, 0)):
        if value < minimum:
            raise ConfigError(f"config key 'encode.{key}' must be at least {minimum}, got {value}")
    if ecfg.adapt_steps > 0:
        check_adapt_settings(ecfg)


def _inputs(table, column: str, prefix: str, hashing: bool) -> list[str]:
    values = table.column(column).to_pylist()
    if hashing:
        return [hashing_input(v or []) for v in values]
    return [prefix + (v or "") for v in values]


def _make_encoder(spec: str, cfg: Config):
    ecfg = cfg.encode
    if spec == "hashing":
        return HashingEncoder(ecfg.hashing_dim, ecfg.seed, ecfg.normalize)
    from dyembed.encode.hf import HFEncoder

    return HFEncoder(spec[3:], pooling=ecfg.pooling, max_length=ecfg.max_length, batch_size=ecfg.batch_size,
                     normalize=ecfg.normalize, jit_compile=ecfg.jit_compile, threads=cfg.runtime.threads,
                     compile_min_texts=ecfg.compile_min_texts)


def _embedding_table(vectors: np.ndarray, hashes: list[str], dtype: str):
    import pyarrow as pa

    n, dim = vectors.shape
    flat = pa.array(vectors.astype(np.float16 if dtype == "float16" else np.float32).reshape(-1))
    return pa.table({
        "item_idx": pa.array(np.arange(n, dtype=np.int32)),
        "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
        "text_hash": pa.array(hashes, pa.string()),
    })


def encode(workdir: str | Path, cfg: Config, *, model: str | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Encode every item of `workdir/items.parquet`; returns a JSON-able summary.

    `progress(done, total)` counts texts encoded in this run (reused ones are not in `total`).
    Holds the work-directory lock (runtime.lock_wait) while it runs.
    """
    with WorkdirLock(workdir, command="encode", wait=cfg.runtime.lock_wait):
        return _encode(workdir, cfg, model=model, progress=progress)


def _encode(workdir: str | Path, cfg: Config, *, model: str | None, progress: Progress | None) -> dict[str, Any]:
    started = time.perf_counter()
    workdir = Path(workdir)
    ecfg = cfg.encode
    spec = resolve_encoder_spec(ecfg.encoder, model)
    check_settings(cfg)
    # read (and validate) the items before any expensive model loading
    column = "tokens" if spec == "hashing" else ecfg.input_field
    table = read_items(workdir, column)

    fallback_reason = None
    adapt_report = None
    if spec.startswith("hf:"):  # TensorFlow: placed by --device / runtime.device, as in every TF command
        from dyembed.replay.runtime import configure_runtime

        configure_runtime(cfg.runtime)
    try:
        if spec.startswith("hf:") and ecfg.adapt_steps > 0:
            from dyembed.encode.adapt import adapt

            adapt_report = adapt(workdir, spec[3:], _inputs(table, column, ecfg.prefix, hashing=False), cfg)
            spec = "hf:" + adapt_report["model_dir"]
        encoder = _make_encoder(spec, cfg)
    except DyembedError as exc:  # settings were checked above: this is "the model cannot be used"
        if not (ecfg.fallback_to_hashing and spec != "hashing"):
            raise
        fallback_reason = str(exc)
        log.warning("falling back to the hashing encoder: %s", fallback_reason)
        spec = "hashing"
        encoder = _make_encoder(spec, cfg)
    hashing = spec == "hashing"
    if hashing and column != "tokens":
        column = "tokens"
        table = read_items(workdir, column)
    texts = _inputs(table, column, ecfg.prefix, hashing)
    hashes = [text_hash(t) for t in texts]

    fingerprint = {**encoder.fingerprint(), "input_field": column, "prefix": "" if hashing else ecfg.prefix,
                   "normalize": ecfg.normalize, "dtype": ecfg.dtype}
    fp_id = fingerprint_id(fingerprint)
    checkpoints = Checkpoints(workdir, fp_id)
    checkpoints.clear_stale()
    known = load_previous(workdir, fp_id)
    reused_from_previous = len(known)
    from_checkpoints = checkpoints.load()
    known.update(from_checkpoints)

    todo: dict[str, str] = {}  # unique texts still to encode, in first-seen order
    for h, t in zip(hashes, texts):
        if h not in known and h not in todo:
            todo[h] = t
    todo_hashes, todo_texts = list(todo), list(todo.values())
    total = len(todo_texts)
    if progress is not None:
        progress(0, total)
    if hasattr(encoder, "plan"):
        encoder.plan(total)
    encode_started = time.perf_counter()
    for start in range(0, total, ecfg.checkpoint_every):
        chunk_hashes = todo_hashes[start:start + ecfg.checkpoint_every]
        chunk_texts = todo_texts[start:start + ecfg.checkpoint_every]
        report = None if progress is None else (lambda n, s=start: progress(s + n, total))
        vectors = encoder.encode(chunk_texts, report)
        if ecfg.dtype == "float16":
            vectors = vectors.astype(np.float16)
        checkpoints.save(chunk_hashes, vectors)
        known.update(zip(chunk_hashes, vectors))
    encode_seconds = time.perf_counter() - encode_started

    dim = encoder.dim
    matrix = np.stack([known[h] for h in hashes]) if hashes else np.zeros((0, dim), dtype=np.float32)
    embeddings = _embedding_table(matrix, hashes, ecfg.dtype)
    counts = {
        "items": len(hashes),
        "unique_texts": len(set(hashes)),
        "items_encoded": total,
        "items_reused": len(hashes) - sum(1 for h in hashes if h in todo),
        "resumed_from_checkpoint": len(set(from_checkpoints) & set(hashes)),
        "empty_texts": sum(1 for t in texts if not t.strip() or t == ecfg.prefix),
    }
    summary: dict[str, Any] = {
        "encoder": spec,
        "fingerprint_id": fp_id,
        "dim": dim,
        "dtype": ecfg.dtype,
        **counts,
        "encode_seconds": round(encode_seconds, 3),
        "items_per_second": round(total / encode_seconds, 1) if total and encode_seconds > 0 else None,
        "fallback_reason": fallback_reason,
    }
    if not hashing:
        summary.update(model_dir=str(encoder.model_dir), weights_layout=encoder.layout, pooling=encoder.pooling,
                       max_length=encoder.max_length, batch_size=encoder.batch_size,
                       model_declares_normalize=encoder.st.normalize, model_loaded=encoder.model is not None)
    if adapt_report is not None:
        summary["adapt"] = adapt_report
    summary["seconds"] = round(time.perf_counter() - started, 3)
    from dyembed.tracking import library_versions

    manifest = {
        "schema_version": SCHEMA_VERSION,
        "fingerprint_id": fp_id,
        "fingerprint": fingerprint,
        "dim": dim,
        "dtype": ecfg.dtype,
        "counts": counts,
        "items_file": file_record(workdir / ITEMS_FILE),
        "output": EMBEDDINGS_FILE,
        "libraries": library_versions(),
        "summary": summary,
    }
    # the vectors and the manifest that describes them are replaced together (all or nothing)
    with atomic_group(workdir) as group:
        write_table(embeddings, group.path(EMBEDDINGS_FILE))
        write_json_to(group.path(MANIFEST_FILE), manifest)
    checkpoints.clear()
    log.info("encoded %d texts, reused %d items (%s)", total, counts["items_reused"], spec)
    return summary
