"""faiss retrieval over GRACE embeddings: an index directory that knows how its vectors were made.

    index = build_index(encoder, texts, "my-index", ids=ids)         # embeds the corpus as documents
    results = RetrievalIndex.load("my-index").search(encoder, ["a question"], k=5)
    results[0].rationale, results[0].hits[0].id, results[0].hits[0].score

An index directory holds

* ``index.faiss``: the vectors; exact inner product (``IndexFlatIP``) by default, HNSW or IVF for corpora
  too large to scan. Embeddings are L2-normalised, so inner product = cosine similarity.
* ``documents.jsonl``: row i of the faiss index is line i: the document's id, text, rationale and whether
  the rationale was cut at its length limit. The rationales are what makes a hit explainable.
* ``manifest.json``: count, dimension, index parameters, the encoder (source, name, weight fingerprint,
  dtype and device) and the document and query embedding settings.

Vectors from different weights or settings are not comparable, and nothing in the numbers says so.
The manifest makes a mismatch detectable: ``search`` embeds queries with the query settings recorded
at build time, loads the encoder in the recorded dtype (the fingerprint depends on it) and refuses an
encoder of another dimension or other weights.

This module loads and searches an index (``RetrievalIndex``); ``build`` writes one, ``manifest`` holds the
format of its files and ``spec`` the faiss index types. Their public names are importable from here too.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from grace.embedding.encoder import GraceEncoder
from grace.embedding.pipeline import EmbeddingConfig
from grace.embedding.texts import Texts, text_batch

# Re-imported so that ``grace.retrieval.index`` still offers every name it had as one file.
from grace.retrieval.build import build_index, check_corpus, find_duplicate
from grace.retrieval.manifest import (
    DOCUMENTS_FILE,
    FORMAT_VERSION,
    INDEX_FILE,
    MANIFEST_FILE,
    Document,
    EncoderMismatchError,
    IndexManifest,
    InvalidIndexError,
    read_documents,
    read_manifest,
)
from grace.retrieval.spec import INDEX_TYPES, IndexSpec


@dataclass(frozen=True)
class Hit:
    rank: int  # 1-based
    score: float  # inner product = cosine similarity of the normalised embeddings
    document: Document


@dataclass(frozen=True)
class SearchResult:
    query: str
    rationale: str  # the query's own rationale ("" when queries are embedded without one)
    truncated: bool
    hits: list[Hit]


class RetrievalIndex:
    """A loaded index directory: faiss index, documents (row order) and manifest."""

    def __init__(self, directory: Path, index: faiss.Index, documents: list[Document], manifest: IndexManifest):
        self.directory = directory
        self.index = index
        self.documents = documents
        self.manifest = manifest

    @classmethod
    def load(cls, directory: str | Path) -> "RetrievalIndex":
        """Load and cross-check the three files; anything inconsistent is an ``InvalidIndexError``."""
        directory = Path(directory)
        build = f"build one with `grace-index build CORPUS {directory} --model MODEL`"
        if not directory.is_dir():
            raise FileNotFoundError(f"no index at {directory}: {build}")
        manifest_path = directory / MANIFEST_FILE
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{directory} is not a GRACE index (it has no {MANIFEST_FILE}): {build}")
        manifest = read_manifest(manifest_path, build)
        rebuild = manifest.rebuild_hint(directory)

        index_path = directory / INDEX_FILE
        if not index_path.is_file():
            raise InvalidIndexError(f"{directory} is missing {INDEX_FILE}: {rebuild}")
        try:
            index = faiss.read_index(str(index_path))
        except RuntimeError as error:
            reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unreadable"
            raise InvalidIndexError(f"{index_path} is corrupt, faiss cannot read it ({reason}): {rebuild}") from None
        if index.d != manifest.dim or index.ntotal != manifest.count:
            raise InvalidIndexError(
                f"{index_path} holds {index.ntotal} vectors of dimension {index.d}, but {MANIFEST_FILE} says "
                f"{manifest.count} of dimension {manifest.dim}: the files come from different builds; {rebuild}"
            )
        documents = read_documents(directory / DOCUMENTS_FILE, manifest.count, rebuild)
        manifest.spec.apply_search_parameters(index)
        return cls(directory, index, documents, manifest)

    def __len__(self) -> int:
        return self.manifest.count

    @property
    def dim(self) -> int:
        return self.manifest.dim

    def load_encoder(
        self, source: str | None = None, *, dtype: str | None = None, same_weights: bool = True, **kwargs: Any
    ) -> GraceEncoder:
        """The encoder that built the index (or ``source``), with the index's document and query settings,
        in the index's dtype unless ``dtype`` is given. ``kwargs``: the rest of ``from_pretrained``'s options."""
        recorded = source is None
        source = self.manifest.encoder_source if recorded else source
        try:
            encoder = GraceEncoder.from_pretrained(
                source,
                dtype=dtype or self.manifest.dtype,
                document=self.manifest.document,
                query=self.manifest.query,
                **kwargs,
            )
        except FileNotFoundError as error:
            if not recorded:
                raise
            raise FileNotFoundError(
                f"{error}. The index {self.directory} records its encoder as {source!r}; if the encoder has moved, "
                f"give its new location with --model (source= in Python): its weights are checked against the index"
            ) from error
        self.check_encoder(encoder, same_weights=same_weights)
        return encoder

    def check_encoder(self, encoder: GraceEncoder, *, same_weights: bool = True) -> None:
        """Refuse an encoder whose vectors cannot be compared with the index's.

        A dimension mismatch can never work. Other weights of the same size give numbers that look fine
        and mean nothing, so they are refused too unless ``same_weights=False``.
        """
        built_by = self.manifest.built_by
        if encoder.embedding_dim != self.dim:
            raise EncoderMismatchError(
                f"dimension mismatch: the index {self.directory} holds {self.dim}-dimensional embeddings made by "
                f"{built_by}, but encoder {encoder.name} makes {encoder.embedding_dim}-dimensional ones; search with "
                f"the encoder that built the index (leave out --model), or rebuild the index with this encoder"
            )
        if same_weights and encoder.fingerprint != self.manifest.fingerprint:
            dtype = self.manifest.dtype
            if encoder.dtype != dtype:
                raise EncoderMismatchError(
                    f"the index {self.directory} was built by {built_by} in {dtype} (weights "
                    f"{self.manifest.fingerprint}), but encoder {encoder.name} runs in {encoder.dtype} (weights "
                    f"{encoder.fingerprint}), and a weights fingerprint depends on the dtype: search with "
                    f"--dtype {dtype} (dtype={dtype!r} in Python), or leave --dtype out to use the index's"
                )
            raise EncoderMismatchError(
                f"the index {self.directory} was built by {built_by} (weights {self.manifest.fingerprint}), "
                f"encoder {encoder.name} has other weights ({encoder.fingerprint}): their embeddings are not "
                f"comparable. Search with the encoder that built the index, rebuild the index, or pass "
                f"--allow-other-weights (same_weights=False) if you know what you are doing"
            )
        if same_weights:
            self._check_recorded(encoder)

    def _check_recorded(self, encoder: GraceEncoder) -> None:
        """The same weights with another tokenizer (vocabulary, special tokens, chat template) or other stop
        tokens (generation_config.json) write other rationales: refused like other weights. Indexes written
        before these were recorded are not checked."""
        recorded = {
            "tokenizer or chat template": (self.manifest.tokenizer_fingerprint, encoder.tokenizer_fingerprint),
            "generation settings (stop tokens, generation_config.json)": (
                self.manifest.generation_fingerprint, encoder.generation_fingerprint,
            ),
        }
        for what, (built, given) in recorded.items():
            if built is not None and built != given:
                raise EncoderMismatchError(
                    f"the index {self.directory} was built by {self.manifest.built_by} with another {what} ({built}) "
                    f"than encoder {encoder.name} has ({given}): its queries would not embed as the documents did. "
                    f"Search with the encoder that built the index, or rebuild the index with this one "
                    f"(--allow-other-weights, same_weights=False, skips this check)"
                )

    def search(
        self,
        encoder: GraceEncoder,
        queries: Texts,
        k: int = 10,
        *,
        query_settings: EmbeddingConfig | None = None,
        same_weights: bool = True,
    ) -> list[SearchResult] | SearchResult:
        """Top-``k`` documents for each query, best first; queries are embedded with the index's query
        settings (or ``query_settings``), the ones recorded when it was built. One ``str`` is one query and
        gets one ``SearchResult`` back; a batch gets a list (``grace.embedding.texts``)."""
        queries, one = text_batch(queries, name="queries")
        self.check_encoder(encoder, same_weights=same_weights)
        settings = query_settings or self.manifest.query
        embedded = encoder.encode_with_rationales(
            queries, role="query", **{f.name: getattr(settings, f.name) for f in fields(settings)}
        )
        scores, rows = self.search_vectors(embedded.embeddings, k)
        results = []
        for q, query in enumerate(queries):
            hits = [
                Hit(rank + 1, float(score), self.documents[row])
                for rank, (score, row) in enumerate((s, r) for s, r in zip(scores[q], rows[q]) if r >= 0)
            ]
            results.append(SearchResult(query, embedded.rationales[q], bool(embedded.truncated[q]), hits))
        return results[0] if one else results

    def search_vectors(self, vectors: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """faiss search: ``(scores [Q, k], rows [Q, k])``; row -1 marks a missing hit (approximate indexes)."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise EncoderMismatchError(
                f"dimension mismatch: query vectors have shape {vectors.shape}, the index {self.directory} holds "
                f"{self.dim}-dimensional vectors; embed queries with the encoder that built it"
            )
        return self.index.search(vectors, min(k, len(self)))


__all__ = [
    "DOCUMENTS_FILE",
    "FORMAT_VERSION",
    "INDEX_FILE",
    "INDEX_TYPES",
    "MANIFEST_FILE",
    "Document",
    "EncoderMismatchError",
    "Hit",
    "IndexManifest",
    "IndexSpec",
    "InvalidIndexError",
    "RetrievalIndex",
    "SearchResult",
    "build_index",
    "check_corpus",
    "find_duplicate",
]
