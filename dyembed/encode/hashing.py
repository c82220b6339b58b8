"""The hashing encoder: a deterministic, model-free bag-of-stemmed-words baseline.

For an item with stemmed tokens t (the `tokens` column of items.parquet) and counts c_t:

    x = Σ_t w_t · r_t,   w_t = 1 + ln c_t   (sublinear term frequency)
    r_t ~ N(0, I_D / D), drawn from a generator seeded by (seed, first 8 bytes of blake2b(t))
    output = x / ||x||   (a text with no tokens gives the zero vector)

This is a fixed random projection of the (unbounded) one-hot vocabulary to D = `hashing_dim`
dimensions: by Johnson–Lindenstrauss, cosines between outputs approximate the cosines between the
items' tf vectors, no vocabulary has to be stored, and a new token tomorrow gets the same vector
in every run and on every machine (blake2b, not Python's salted `hash`).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np


def token_key(token: str) -> int:
    """A stable 64-bit key for a token (the same on every run and machine)."""
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "little")


def token_vector(token: str, dim: int, seed: int) -> np.ndarray:
    """r_t: the token's fixed random direction, N(0, I/D) in float64."""
    rng = np.random.default_rng([seed, token_key(token)])
    return rng.standard_normal(dim) / math.sqrt(dim)


def hashing_input(tokens: Sequence[str]) -> str:
    """The hashing encoder's input text (what `text_hash` hashes): the tokens joined by spaces."""
    return " ".join(tokens)


class HashingEncoder:
    """Encode token lists as L2-normalised random projections of their sublinear tf vectors."""

    def __init__(self, dim: int = 384, seed: int = 0, normalize: bool = True):
        if dim <= 0:
            from dyembed.errors import ConfigError

            raise ConfigError(f"config key 'encode.hashing_dim' must be positive, got {dim}")
        self.dim = dim
        self.seed = seed
        self.normalize = normalize
        self._vectors: dict[str, np.ndarray] = {}

    def fingerprint(self) -> dict:
        return {"encoder": "hashing", "hashing_dim": self.dim, "seed": self.seed, "weighting": "1+ln(tf)",
                "projection": "gaussian/blake2b-64"}

    def _vector(self, token: str) -> np.ndarray:
        vec = self._vectors.get(token)
        if vec is None:
            vec = self._vectors[token] = token_vector(token, self.dim, self.seed)
        return vec

    def encode(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """`texts` are `hashing_input(tokens)` strings; returns float32 [n, dim]."""
        out = np.zeros((len(texts), self.dim), dtype=np.float64)
        for i, text in enumerate(texts):
            for token, count in Counter(text.split()).items():
                out[i] += (1.0 + math.log(count)) * self._vector(token)
            if progress is not None and (i + 1) % 1024 == 0:
                progress(i + 1)
        if self.normalize:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out = np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)
        if progress is not None:
            progress(len(texts))
        return out.astype(np.float32)
