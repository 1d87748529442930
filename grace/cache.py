"""An on-disk cache of embeddings and their rationales, keyed by everything that decides them.

Key = hash(model fingerprint, embedding config, role settings, text). mteb's STS tasks repeat the same
documents many times and a rebuilt index re-embeds the same corpus: with the cache a repeated text or
a re-run costs a lookup, not a generation. SQLite (standard library) gives atomic writes and safe
concurrent readers, so a killed run never leaves a half-written entry and sweep jobs can share it.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np


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
    def namespace(fingerprint: str, settings: dict) -> str:
        return hashlib.sha256(f"{fingerprint}\x00{json.dumps(settings, sort_keys=True)}".encode()).hexdigest()

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
