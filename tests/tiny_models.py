"""A tiny random BERT (2 layers, hidden 32, 153-token WordPiece vocab) written to a directory in
either weight layout, with a tokenizer and optional sentence-transformers files.

- layout "pt": PyTorch-style `model.safetensors` (PyTorch weight names, [out, in] dense kernels),
  written with safetensors.numpy from the TF model's weights renamed by transformers' own
  TF→PyTorch name rule (no torch needed) — the layout most hub models, like MiniLM, ship in.
- layout "tf": TensorFlow `tf_model.h5` from `save_pretrained`.

The same seed gives the same weights in both layouts, so both must encode identically.
Also here (the encode tests share them): a small items.parquet with the documented schema.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

WORDS = (
    "the a of and to in is it for on with as by at from this that movie film story love war life man "
    "woman world night day city house star dark light king queen game time year new old big little "
    "red blue green black white music dance comedy drama horror action adventure family school "
    "magazine news sport science art history travel food children mystery crime space"
).split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_vocab() -> list[str]:
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    punct = list(".,!?'-:()") + [str(d) for d in range(10)]
    tokens = SPECIALS + punct + letters + ["##" + c for c in letters] + ["##" + str(d) for d in range(10)] + WORDS
    return list(dict.fromkeys(tokens))  # "a" is a letter and a word: keep ids dense


def tiny_bert_config(vocab_size: int):
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64, type_vocab_size=2, pad_token_id=0)


def pytorch_state_dict(tf_model) -> dict[str, np.ndarray]:
    """The TF model's weights under their PyTorch names and shapes (inverse of transformers' loader)."""
    from transformers.modeling_tf_pytorch_utils import TransposeType, convert_tf_weight_name_to_pt_weight_name

    prefix = tf_model.base_model_prefix + "."
    state: dict[str, np.ndarray] = {}
    for weight in tf_model.weights:
        name, transpose = convert_tf_weight_name_to_pt_weight_name(weight.name, tf_weight_shape=weight.shape)
        # a bare PyTorch BertModel has no "bert." stem (as sentence-transformers checkpoints)
        name = name[len(prefix):] if name.startswith(prefix) else name
        array = weight.numpy()
        if transpose is TransposeType.SIMPLE:
            array = array.T
        elif transpose is not TransposeType.NO:  # pragma: no cover - no convolutions in BERT
            raise ValueError(f"unexpected transpose {transpose} for {weight.name}")
        state[name] = np.ascontiguousarray(array)
    return state


def make_tiny_bert(
    directory: str | Path,
    *,
    layout: str = "pt",
    seed: int = 0,
    st_pooling: str | None = "mean",
    st_normalize: bool = True,
) -> Path:
    """Write a tiny random BERT + WordPiece tokenizer to `directory`; returns it.

    `st_pooling` ("mean" | "cls" | None) adds sentence-transformers files declaring that pooling.
    """
    from transformers import BertTokenizerFast, TFBertModel

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab()
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"), do_lower_case=True, model_max_length=64)
    tokenizer.save_pretrained(str(directory))

    config = tiny_bert_config(len(vocab))
    model = TFBertModel(config)
    model(model.dummy_inputs, training=False)
    # deterministic weights independent of Keras' initialiser state: redraw every tensor from the seed
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        shape = tuple(weight.shape)
        if "LayerNorm" in weight.name and weight.name.endswith("gamma:0"):
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            value = 0.2 * rng.standard_normal(shape)
        weight.assign(value.astype(np.float32))

    if layout == "pt":
        from safetensors.numpy import save_file

        config.architectures = ["BertModel"]
        config.save_pretrained(str(directory))
        save_file(pytorch_state_dict(model), str(directory / "model.safetensors"), metadata={"format": "pt"})
    elif layout == "tf":
        model.save_pretrained(str(directory))
        for leftover in ("model.safetensors",):
            if (directory / leftover).exists():  # pragma: no cover - depends on transformers' default
                raise RuntimeError("save_pretrained wrote safetensors; expected tf_model.h5")
    else:
        raise ValueError(f"layout must be 'pt' or 'tf', got {layout!r}")

    if st_pooling is not None:
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        if st_normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (directory / "modules.json").write_text(json.dumps(modules, indent=2), encoding="utf-8")
        (directory / "1_Pooling").mkdir(exist_ok=True)
        (directory / "1_Pooling" / "config.json").write_text(json.dumps({
            "word_embedding_dimension": config.hidden_size,
            "pooling_mode_cls_token": st_pooling == "cls",
            "pooling_mode_mean_tokens": st_pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        }, indent=2), encoding="utf-8")
        (directory / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48, "do_lower_case": False}), encoding="utf-8")
    return directory


def make_tiny_gpt2(directory: str | Path, *, seed: int = 0) -> Path:
    """A tiny random GPT-2 (decoder, byte-level BPE trained on TITLES, no pad token) as tf_model.h5."""
    import tensorflow as tf
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2TokenizerFast, TFGPT2Model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TITLES * 3, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"], show_progress=False)
    bpe.save_model(str(directory))
    tokenizer = GPT2TokenizerFast(vocab_file=str(directory / "vocab.json"), merges_file=str(directory / "merges.txt"))
    tokenizer.save_pretrained(str(directory))
    tf.random.set_seed(seed)
    model = TFGPT2Model(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2))
    model(model.dummy_inputs, training=False)
    model.save_pretrained(str(directory))
    return directory


# --------------------------------------------------------------------------- items.parquet

TITLES = [
    "The dark knight rises over the city",
    "A love story in a time of war",
    "Comedy night at the old house",
    "Space adventure for the whole family",
    "Horror in the dark house",
    "Music and dance: a new drama",
    "",
    "Crime and mystery in the big city",
    "The little red game",
    "The dark knight rises over the city",  # duplicate text: encoded once, reused
    "Zebra 1995 (video)",
    "Children of the blue star",
]


def simple_tokens(text: str) -> list[str]:
    """Stand-in for preprocess' tokens (lowercased words); the encoder only needs list<string>."""
    return [w.strip(".,:()!?").lower() for w in text.split() if w.strip(".,:()!?")]


def write_items(workdir: Path, texts: list[str] | None = None, *, drop: str | None = None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = list(TITLES if texts is None else texts)
    workdir.mkdir(parents=True, exist_ok=True)
    columns = {
        "item_idx": pa.array(np.arange(len(texts), dtype=np.int32)),
        "item_id": pa.array([f"i{i}" for i in range(len(texts))], pa.string()),
        "text": pa.array(texts, pa.string()),
        "tokens": pa.array([simple_tokens(t) for t in texts], pa.list_(pa.string())),
    }
    if drop:
        del columns[drop]
    pq.write_table(pa.table(columns), workdir / "items.parquet")
    return workdir / "items.parquet"


def read_embeddings(workdir: Path):
    import pyarrow.parquet as pq

    from dyembed.encode.cache import embedding_matrix

    table = pq.read_table(workdir / "item_embeddings.parquet")
    return table, embedding_matrix(table.column("embedding"))
