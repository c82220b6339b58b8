"""Pretrained language-model encoders through transformers' TensorFlow classes (no torch).

Loading (one path for every model, used by tests on a tiny random BERT too):
- the model directory is a local path, or a hub id that is already in the local Hugging Face cache
  (nothing is downloaded at run time);
- the architecture comes from `config.json` (`TFAutoModel.from_config`);
- weights: PyTorch-layout `model.safetensors` (or sharded `model.safetensors.index.json`) are read
  with `safetensors.numpy` and assigned by `load_pytorch_state_dict_in_tf2_model` (from_pretrained
  on such a file fails with current safetensors: "'builtins.safe_open' object is not iterable");
  TensorFlow `tf_model.h5` goes through `from_pretrained`.

Pooling over the last hidden states h[b, t, :] with attention mask m[b, t]:
    mean:  Σ_t m·h / Σ_t m          cls:  h[:, 0]
    max:   max_t over tokens with m=1   last: h at the last token with m=1 (right padding)
    mean_sqrt: Σ_t m·h / sqrt(Σ_t m)
then x / ||x|| when normalising. `auto` reads the sentence-transformers files (modules.json,
1_Pooling/config.json) the model ships with, else mean.

Speed: texts are tokenised without padding, sorted by length and cut into batches; each batch is
padded to its length rounded up to a multiple of 8 (little padding, few shapes), and one
`tf.function` forward runs per batch shape.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dyembed.artefacts import sha256_file
from dyembed.errors import ConfigError, InputDataError

log = logging.getLogger(__name__)

WEIGHT_FILES = ("tf_model.h5", "model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")
TOKENIZER_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "merges.txt", "added_tokens.json")
ST_POOLING_MODES = {  # sentence-transformers 1_Pooling/config.json flag -> our pooling name
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt",
    "pooling_mode_lasttoken": "last",
}
PAD_MULTIPLE = 8


# --------------------------------------------------------------------------- model files


def resolve_model_dir(spec: str) -> Path:
    """A local directory, or a hub id already in the local HF cache; never downloads."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise InputDataError(f"model path {spec} is a file, expected a model directory")
    looks_local = spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").replace("/", "", 1)
    if looks_local or spec.count("/") > 1:
        raise InputDataError(f"model directory not found: {spec}")
    try:
        from huggingface_hub import snapshot_download

        # HF_HUB_CACHE is read here (not only at huggingface_hub's import) so it can point anywhere
        return Path(snapshot_download(repo_id=spec, local_files_only=True, cache_dir=os.environ.get("HF_HUB_CACHE")))
    except Exception:  # noqa: BLE001 - any hub error means: not available offline
        raise InputDataError(
            f"model '{spec}' is neither a local directory nor in the local Hugging Face cache "
            "(dyembed never downloads at run time: download it once, or pass --model DIR / set DYEMBED_MODEL)"
        ) from None


def weight_files(model_dir: Path) -> tuple[str, list[Path]]:
    """('tf-h5' | 'pt-safetensors', files) or InputDataError naming what is missing."""
    if (model_dir / "tf_model.h5").is_file():
        return "tf-h5", [model_dir / "tf_model.h5"]
    if (model_dir / "model.safetensors").is_file():
        return "pt-safetensors", [model_dir / "model.safetensors"]
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise InputDataError(f"model weights index {index} is not a valid safetensors index") from None
        missing = [s for s in shards if not (model_dir / s).is_file()]
        if missing:
            raise InputDataError(f"model dir {model_dir} lacks weight shard {missing[0]} named in {index.name}")
        return "pt-safetensors", [model_dir / s for s in shards]
    if (model_dir / "pytorch_model.bin").is_file():
        raise InputDataError(
            f"model dir {model_dir} has only pytorch_model.bin (needs torch to read); "
            "convert it once to model.safetensors or tf_model.h5"
        )
    raise InputDataError(f"model dir {model_dir} has no weights (expected model.safetensors or tf_model.h5)")


def sha256_files(paths: Sequence[Path]) -> str:
    """One digest over several files (name + content digest each), order-independent."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        digest.update(f"{path.name}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def tokenizer_files(model_dir: Path) -> list[Path]:
    return [model_dir / n for n in TOKENIZER_FILES + TOKENIZER_SIDE_FILES if (model_dir / n).is_file()]


@dataclass
class SentenceTransformersInfo:
    """What a model's sentence-transformers files declare (all None/False when it has none)."""

    pooling: str | None = None
    normalize: bool = False
    max_seq_length: int | None = None
    ignored_modules: list[str] = field(default_factory=list)


def read_sentence_transformers(model_dir: Path) -> SentenceTransformersInfo:
    info = SentenceTransformersInfo()
    modules_path = model_dir / "modules.json"
    if not modules_path.is_file():
        return info
    try:
        modules = json.loads(modules_path.read_text(encoding="utf-8"))
        for module in modules:
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            if kind == "Pooling":
                pool_cfg = json.loads((model_dir / module.get("path", "1_Pooling") / "config.json").read_text(encoding="utf-8"))
                modes = [name for flag, name in ST_POOLING_MODES.items() if pool_cfg.get(flag)]
                if len(modes) != 1:
                    raise InputDataError(f"{model_dir}/{module.get('path')}/config.json declares pooling modes {modes}; dyembed supports exactly one")
                info.pooling = modes[0]
            elif kind == "Normalize":
                info.normalize = True
            elif kind != "Transformer":
                info.ignored_modules.append(kind)
        st_cfg = model_dir / "sentence_bert_config.json"
        if st_cfg.is_file():
            info.max_seq_length = json.loads(st_cfg.read_text(encoding="utf-8")).get("max_seq_length")
    except (OSError, json.JSONDecodeError, AttributeError, TypeError) as exc:
        raise InputDataError(f"sentence-transformers files in {model_dir} are unreadable: {exc}") from None
    if info.ignored_modules:
        log.warning("modules %s of %s are not applied (dyembed applies Transformer, Pooling, Normalize)", info.ignored_modules, modules_path)
    return info


# --------------------------------------------------------------------------- loading


def quiet_transformers() -> None:
    """transformers prints deprecation and 'weights were used' banners; dyembed reports through logging."""
    import transformers

    transformers.logging.set_verbosity_error()


def load_config(model_dir: Path):
    from transformers import AutoConfig

    if not (model_dir / "config.json").is_file():
        raise InputDataError(f"model dir {model_dir} has no config.json")
    try:
        return AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    except ValueError as exc:
        raise ConfigError(f"unknown model type in {model_dir}/config.json: {str(exc).splitlines()[0]}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise InputDataError(f"model config {model_dir}/config.json is unreadable: {exc}") from None


def load_tokenizer(model_dir: Path):
    """The model's fast tokenizer; a pad token is added for decoder models that have none."""
    from transformers import AutoTokenizer

    if not any((model_dir / n).is_file() for n in TOKENIZER_FILES):
        raise InputDataError(f"model dir {model_dir} has no tokenizer (expected one of {', '.join(TOKENIZER_FILES)})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - OSError, ValueError, and the tokenizers library's own errors
        raise InputDataError(f"tokenizer in {model_dir} cannot be loaded: {str(exc).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        # decoder-only models (GPT-2, …): pad with EOS; padding is masked out of every pooling
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "right"
    return tokenizer


def _tf_class_for(config, with_mlm_head: bool):
    from transformers import TFAutoModel, TFAutoModelForMaskedLM

    auto = TFAutoModelForMaskedLM if with_mlm_head else TFAutoModel
    if type(config) not in auto._model_mapping:
        what = "masked-language-model" if with_mlm_head else "TensorFlow"
        raise ConfigError(f"model type '{config.model_type}' has no {what} class in transformers; use another model")
    return auto


def load_tf_model(model_dir: Path, config=None, *, with_mlm_head: bool = False):
    """Build the TF model from config.json and load its weights (either layout). Returns (model, layout)."""
    from dyembed.envcheck import check_transformers_versions

    check_transformers_versions()
    quiet_transformers()
    config = config if config is not None else load_config(model_dir)
    auto = _tf_class_for(config, with_mlm_head)
    layout, files = weight_files(model_dir)
    if layout == "tf-h5":
        try:
            model, info = auto.from_pretrained(str(model_dir), config=config, local_files_only=True,
                                               use_safetensors=False, output_loading_info=True)
        except (OSError, ValueError) as exc:
            raise InputDataError(f"TensorFlow weights {files[0]} cannot be loaded: {str(exc).splitlines()[0]}") from None
        missing = info.get("missing_keys", [])
    else:
        from safetensors.numpy import load_file
        from transformers.modeling_tf_pytorch_utils import load_pytorch_state_dict_in_tf2_model

        state: dict[str, np.ndarray] = {}
        for path in files:
            try:
                state.update(load_file(str(path)))
            except Exception as exc:  # noqa: BLE001 - corrupt or truncated file
                raise InputDataError(f"weights file {path} is unreadable: {exc}") from None
        model = auto.from_config(config)
        try:
            _, info = load_pytorch_state_dict_in_tf2_model(model, state, allow_missing_keys=True, output_loading_info=True,
                                                           skip_logger_warnings=True)
        except Exception as exc:  # noqa: BLE001 - shape mismatch etc. from transformers
            raise InputDataError(f"weights {files[0].name} do not fit the architecture in config.json: {str(exc).splitlines()[0]}") from None
        missing = info["missing_keys"]
        if info["unexpected_keys"]:
            log.debug("unused weights in %s: %s", model_dir, info["unexpected_keys"])
    # the pooler and a missing MLM head are not used by (or are trained in) dyembed
    missing = [k for k in missing if "pooler" not in k and not (with_mlm_head and _is_head(k))]
    if missing:
        raise InputDataError(f"weights in {model_dir} lack {len(missing)} tensors of the architecture (e.g. {missing[0]})")
    return model, layout


def _is_head(name: str) -> bool:
    return any(part in name for part in ("cls.", "predictions", "lm_head", "vocab_", "mlm"))


# --------------------------------------------------------------------------- pooling & batching


def pool_reference(hidden: np.ndarray, mask: np.ndarray, pooling: str, normalize: bool) -> np.ndarray:
    """Pure numpy float64 pooling (the reference the TF pooling is tested against)."""
    h = hidden.astype(np.float64)
    m = mask.astype(np.float64)[..., None]
    if pooling == "mean":
        x = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    elif pooling == "mean_sqrt":
        x = (h * m).sum(1) / np.sqrt(np.maximum(m.sum(1), 1e-9))
    elif pooling == "cls":
        x = h[:, 0]
    elif pooling == "max":
        x = np.where(m > 0, h, -np.inf).max(1)
    elif pooling == "last":
        x = h[np.arange(len(h)), mask.sum(1).astype(int) - 1]
    else:
        raise ConfigError(f"unknown pooling '{pooling}'")
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def pool_tf(tf, hidden, mask, pooling: str, normalize: bool):
    """TF version of `pool_reference` (inside the compiled forward)."""
    m = tf.cast(mask, hidden.dtype)[..., None]
    if pooling == "mean":
        x = tf.reduce_sum(hidden * m, 1) / tf.maximum(tf.reduce_sum(m, 1), 1e-9)
    elif pooling == "mean_sqrt":
        x = tf.reduce_sum(hidden * m, 1) / tf.sqrt(tf.maximum(tf.reduce_sum(m, 1), 1e-9))
    elif pooling == "cls":
        x = hidden[:, 0]
    elif pooling == "max":
        x = tf.reduce_max(tf.where(m > 0, hidden, tf.fill(tf.shape(hidden), hidden.dtype.min)), 1)
    elif pooling == "last":
        last = tf.cast(tf.reduce_sum(tf.cast(mask, tf.int32), 1) - 1, tf.int32)
        x = tf.gather(hidden, last, axis=1, batch_dims=1)
    else:
        raise ConfigError(f"unknown pooling '{pooling}'")
    if normalize:
        x = tf.math.l2_normalize(x, axis=1, epsilon=1e-24)
    return x


def padded_length(length: int, max_length: int) -> int:
    return min(max_length, max(PAD_MULTIPLE, math.ceil(length / PAD_MULTIPLE) * PAD_MULTIPLE))


def plan_batches(lengths: Sequence[int], batch_size: int, max_length: int) -> list[tuple[np.ndarray, int]]:
    """Sort by token length (stable), cut into batches, pad each to its rounded-up longest length."""
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batches.append((idx, padded_length(int(max(lengths[i] for i in idx)), max_length)))
    return batches


# --------------------------------------------------------------------------- the encoder


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    try:
        import tensorflow as tf

        return isinstance(exc, tf.errors.ResourceExhaustedError)
    except ImportError:  # pragma: no cover
        return False


class HFEncoder:
    """A transformers TF encoder with pooling, length bucketing and a compiled forward per shape."""

    def __init__(self, spec: str, *, pooling: str = "auto", max_length: int = 128, batch_size: int = 64,
                 normalize: bool = True, jit_compile: bool = False, threads: int = 0, compile_min_texts: int = 0):
        """Reads the model's files (config, tokenizer, sentence-transformers settings) but builds the
        TF model only when something has to be encoded: a rerun with everything cached never
        imports TensorFlow."""
        from dyembed.envcheck import check_transformers_versions

        if max_length < 2:
            raise ConfigError(f"config key 'encode.max_length' must be at least 2, got {max_length}")
        if batch_size < 1:
            raise ConfigError(f"config key 'encode.batch_size' must be positive, got {batch_size}")
        self.spec = spec
        self.model_dir = resolve_model_dir(spec)
        self.layout, _ = weight_files(self.model_dir)
        check_transformers_versions()
        quiet_transformers()
        self.config = load_config(self.model_dir)
        self.tokenizer = load_tokenizer(self.model_dir)
        self.st = read_sentence_transformers(self.model_dir)
        self.pooling = (self.st.pooling or "mean") if pooling == "auto" else pooling
        self.normalize = normalize
        limits = [max_length, getattr(self.config, "max_position_embeddings", None) or max_length]
        if self.st.max_seq_length:
            limits.append(int(self.st.max_seq_length))
        self.max_length = int(min(limits))
        self.batch_size = batch_size
        self.jit_compile = jit_compile
        # tracing the graph costs seconds: a call with fewer texts (the daily few new items) runs eagerly
        self.compile_min_texts = compile_min_texts
        self._use_graph = False
        self.threads = threads
        self.dim = int(getattr(self.config, "hidden_size", 0) or getattr(self.config, "n_embd", 0) or getattr(self.config, "d_model", 0))
        self.model = None
        self._forward = None

    def _ensure_model(self) -> None:
        if self.model is not None:
            return
        from dyembed.envcheck import import_tensorflow

        tf = import_tensorflow()
        if self.threads > 0:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(self.threads)
                tf.config.threading.set_inter_op_parallelism_threads(min(self.threads, 2))
            except RuntimeError:
                log.debug("TensorFlow already initialised; runtime.threads ignored")
        self.model, self.layout = load_tf_model(self.model_dir, self.config)
        self._forward = self._make_forward(tf)
        self._eager = self._make_forward(tf, eager=True)

    # ------------------------------------------------------------------ identity

    def fingerprint(self) -> dict[str, Any]:
        _, files = weight_files(self.model_dir)
        return {
            "encoder": "hf",
            "model": self.spec,
            "model_dir": str(self.model_dir),
            "model_type": self.config.model_type,
            "config_sha256": sha256_file(self.model_dir / "config.json"),
            "weights_sha256": sha256_files(files),
            "tokenizer_sha256": sha256_files(tokenizer_files(self.model_dir)),
            "pooling": self.pooling,
            "max_length": self.max_length,
        }

    # ------------------------------------------------------------------ compute

    def _make_forward(self, tf, eager: bool = False):
        model, pooling, normalize = self.model, self.pooling, self.normalize

        def forward(input_ids, attention_mask):
            hidden = model(input_ids=input_ids, attention_mask=attention_mask, training=False)[0]
            return pool_tf(tf, tf.cast(hidden, tf.float32), attention_mask, pooling, normalize)

        if eager:
            return lambda ids, mask: forward(tf.constant(ids), tf.constant(mask))
        if self.jit_compile:
            return tf.function(forward, jit_compile=True)  # one XLA program per bucket shape
        spec = tf.TensorSpec([None, None], tf.int32)
        return tf.function(forward, input_signature=[spec, spec])  # one graph for every shape

    def plan(self, total_texts: int) -> None:
        """Told the run's total up front: chunks of a big run all use the compiled graph."""
        self._use_graph = self._use_graph or total_texts >= self.compile_min_texts

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, padding=False)
        # decoder tokenizers add no special tokens: an empty text would have nothing to pool
        filler = [t for t in (self.tokenizer.eos_token_id, self.tokenizer.unk_token_id, self.tokenizer.pad_token_id) if t is not None][:1]
        return [ids if ids else list(filler) for ids in enc["input_ids"]]

    def hidden_states(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Unpooled last hidden states and mask (for the pooling tests)."""
        self._ensure_model()
        ids = self.tokenize(texts)
        width = max(len(x) for x in ids)
        input_ids = np.full((len(ids), width), self.tokenizer.pad_token_id or 0, dtype=np.int32)
        mask = np.zeros((len(ids), width), dtype=np.int32)
        for row, seq in enumerate(ids):
            input_ids[row, :len(seq)], mask[row, :len(seq)] = seq, 1
        out = self.model(input_ids=input_ids, attention_mask=mask, training=False)
        return out[0].numpy(), mask

    def _run_batch(self, ids: list[list[int]], width: int) -> np.ndarray:
        pad = self.tokenizer.pad_token_id or 0
        input_ids = np.full((len(ids), width), pad, dtype=np.int32)
        mask = np.zeros((len(ids), width), dtype=np.int32)
        for row, seq in enumerate(ids):
            input_ids[row, :len(seq)] = seq
            mask[row, :len(seq)] = 1
        forward = self._forward if self._use_graph else self._eager
        return forward(input_ids, mask).numpy()

    def encode(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """float32 [n, dim] in the order of `texts`; on out-of-memory the batch size halves and retries."""
        self._ensure_model()
        self._use_graph = self._use_graph or len(texts) >= self.compile_min_texts  # once traced, keep it
        ids = self.tokenize(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        lengths = [len(x) for x in ids]
        pending = [idx for idx, _ in plan_batches(lengths, self.batch_size, self.max_length)][::-1]
        done = 0
        while pending:
            idx = pending.pop()
            width = padded_length(max(lengths[i] for i in idx), self.max_length)
            try:
                out[idx] = self._run_batch([ids[i] for i in idx], width)
            except Exception as exc:
                if not _is_oom(exc):
                    raise
                if len(idx) == 1:
                    raise ConfigError(
                        f"out of memory encoding a single text of {width} tokens with {self.spec}; "
                        "lower encode.max_length or use a smaller model"
                    ) from None
                self.batch_size = max(1, len(idx) // 2)
                log.warning("out of memory at batch size %d; retrying with batch size %d", len(idx), self.batch_size)
                # re-cut this batch and every later one (still in length order) at the new size
                rest = np.concatenate([idx] + pending[::-1])
                pending = [rest[s:s + self.batch_size] for s in range(0, len(rest), self.batch_size)][::-1]
                continue
            done += len(idx)
            if progress is not None:
                progress(done)
        return out
