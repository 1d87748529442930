"""An on-disk cache of embeddings and their rationales, keyed by everything that decides them.

Key = hash(EMBED_VERSION, weights fingerprint, tokenizer fingerprint (vocabulary, special tokens, chat
template), generation fingerprint (the stop tokens the model directory's generation_config.json adds),
canonical embedding config, text).
The config is canonicalised first (``canonical_config``), so settings that cannot change an embedding
never split the cache. mteb's STS tasks repeat the same documents many times and a rebuilt index
re-embeds the same corpus: with the cache a repeated text or a re-run costs a lookup, not a generation.
SQLite (standard library) gives atomic writes and safe concurrent readers, so a killed run never leaves
a half-written entry and sweep jobs can share it.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from grace.embedding.pipeline import Decoding, EmbeddingConfig

# Bump when the embed path (grace.embedding.pipeline.embed: prompt rendering, rollout, pooling) changes what a
# text embeds to without a change of weights or settings: every entry written before is then unreachable.
# 2: user text is tokenised as literal text (a quoted "<|im_end|>" is no longer a control token).
EMBED_VERSION = 2


def canonical_config(config: EmbeddingConfig) -> EmbeddingConfig:
    """``config`` with every setting that cannot change an embedding reset to its default, the one place
    that knows which they are: all decoding settings without a rationale (nothing is generated), and
    seed and top_p under greedy decoding (temperature 0 takes the most likely token whatever they say).
    Two configs that embed alike canonicalise to the same value."""
    if not config.rationale:
        return replace(config, decoding=Decoding())
    if config.decoding.temperature == 0:
        return replace(config, decoding=replace(config.decoding, seed=Decoding.seed, top_p=Decoding.top_p))
    return config


@dataclass(frozen=True)
class CachedEmbedding:
    embedding: np.ndarray  # [H] float32
    rationale: str
    truncated: bool


class EmbeddingCache:
    """``get_many`` / ``put_many`` over one SQLite file; entries are never modified once written."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(self.path, timeout=60)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute(
            "CREATE TABLE IF NOT EXISTS embeddings "
            "(key TEXT PRIMARY KEY, vector BLOB NOT NULL, rationale TEXT NOT NULL, truncated INTEGER NOT NULL)"
        )
        self._connection.commit()

    @staticmethod
    def key(namespace: str, text: str) -> str:
        """``namespace`` identifies model and settings (see ``namespace``); the text is hashed with it."""
        return hashlib.sha256(f"{namespace}\x00{text}".encode()).hexdigest()

    @staticmethod
    def namespace(fingerprint: str, tokenizer_fingerprint: str, config: EmbeddingConfig, generation_fingerprint: str) -> str:
        """Everything but the text that decides an entry: embed version, weights, tokenizer, the model's
        generation settings (``grace.embedding.encoder.generation_fingerprint``), embedding settings."""
        decided_by = {
            "embed_version": EMBED_VERSION,
            "weights": fingerprint,
            "tokenizer": tokenizer_fingerprint,
            "generation": generation_fingerprint,
            "settings": canonical_config(config).to_dict(),
        }
        return hashlib.sha256(json.dumps(decided_by, sort_keys=True).encode()).hexdigest()

    def get_many(self, keys: list[str]) -> dict[str, CachedEmbedding]:
        found: dict[str, CachedEmbedding] = {}
        for start in range(0, len(keys), 500):  # SQLite caps the number of bound parameters
            chunk = keys[start : start + 500]
            rows = self._connection.execute(
                f"SELECT key, vector, rationale, truncated FROM embeddings WHERE key IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            for key, vector, rationale, truncated in rows:
                found[key] = CachedEmbedding(np.frombuffer(vector, dtype=np.float32).copy(), rationale, bool(truncated))
        return found

    def put_many(self, entries: dict[str, CachedEmbedding]) -> None:
        with self._connection:  # one transaction: all or nothing
            self._connection.executemany(
                "INSERT OR IGNORE INTO embeddings VALUES (?, ?, ?, ?)",
                [
                    (key, np.asarray(e.embedding, dtype=np.float32).tobytes(), e.rationale, int(e.truncated))
                    for key, e in entries.items()
                ],
            )

    def __len__(self) -> int:
        return self._connection.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]

    def close(self) -> None:
        self._connection.close()
