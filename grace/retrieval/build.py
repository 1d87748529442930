"""Building an index directory: ``build_index`` embeds a corpus as documents and writes the three files.

``check_corpus`` refuses, before anything is embedded, a corpus that would make a useless or ambiguous
index (empty, an empty text, repeated ids). The directory is written in a staging directory and swapped
into place, so a reader never sees half an index and a failed build leaves the old one.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import faiss
import numpy as np

from grace.embedding.encoder import GraceEncoder
from grace.embedding.texts import Texts, text_batch
from grace.retrieval.manifest import (
    DOCUMENTS_FILE,
    INDEX_FILE,
    MANIFEST_FILE,
    Document,
    IndexManifest,
    write_documents,
    write_manifest,
)
from grace.retrieval.spec import IndexSpec
from grace.storage.staging import check_replaceable, staged_directory

if TYPE_CHECKING:
    from grace.retrieval.index import RetrievalIndex


def build_index(
    encoder: GraceEncoder,
    texts: Texts,
    directory: str | Path,
    *,
    ids: Sequence[str] | str | None = None,
    spec: IndexSpec = IndexSpec(),
    source: str | None = None,
    corpus: dict[str, Any] | None = None,
    chunk_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> RetrievalIndex:
    """Embed ``texts`` as documents and write an index directory (replacing an index already there).

    ``texts``: the documents, one ``str`` being one document (``grace.embedding.texts``). ``ids``: one unique id per
    text (default: "0", "1", ...); a ``str`` is the id of one document, never one id per character.
    ``source``: what to reload the encoder from at search time (default: the encoder's name). The corpus is embedded ``chunk_size`` texts at a
    time, so with an embedding cache a killed build loses at most one chunk when run again, and a
    second build of the same corpus never runs the model. ``progress(n)``: n more texts embedded.
    """
    # grace.retrieval.index re-exports build_index, so it cannot be imported at the top of this module.
    from grace.retrieval.index import RetrievalIndex

    texts, _ = text_batch(texts)
    if isinstance(ids, str):
        ids = [ids]
    ids = [str(i) for i in range(len(texts))] if ids is None else [str(i) for i in ids]
    check_corpus(texts, ids)
    spec = spec.resolved(len(texts))
    target = Path(directory)
    # An existing index may be replaced; any other non-empty path is the user's and is left alone.
    check_replaceable(target, marker=MANIFEST_FILE, what="a GRACE index")

    vectors, documents = _embed_documents(encoder, texts, ids, chunk_size, progress)
    index = spec.create(encoder.embedding_dim)
    if spec.type == "ivf":
        index.train(vectors)
    index.add(vectors)
    manifest = IndexManifest(
        count=len(texts),
        dim=encoder.embedding_dim,
        spec=spec,
        encoder_source=source or encoder.name,
        encoder_name=encoder.name,
        fingerprint=encoder.fingerprint,
        tokenizer_fingerprint=encoder.tokenizer_fingerprint,
        generation_fingerprint=encoder.generation_fingerprint,
        dtype=encoder.dtype,
        device=encoder.device,
        document=encoder.config_for("document"),
        query=encoder.config_for("query"),
        corpus=corpus or {},
    )
    _write_directory(target, index, documents, manifest)
    return RetrievalIndex(target, index, documents, manifest)


def _embed_documents(
    encoder: GraceEncoder, texts: list[str], ids: list[str], chunk_size: int, progress: Callable[[int], None] | None
) -> tuple[np.ndarray, list[Document]]:
    """The documents' embeddings [N, dim] float32 and their rows, ``chunk_size`` texts at a time."""
    vectors = np.empty((len(texts), encoder.embedding_dim), dtype=np.float32)
    documents: list[Document] = []
    for start in range(0, len(texts), chunk_size):
        chunk = texts[start : start + chunk_size]
        result = encoder.encode_with_rationales(chunk, role="document", progress=progress)
        vectors[start : start + len(chunk)] = result.embeddings
        documents += [
            Document(ids[start + i], text, rationale, bool(cut))
            for i, (text, rationale, cut) in enumerate(zip(chunk, result.rationales, result.truncated))
        ]
    return vectors, documents


def check_corpus(texts: Sequence[str], ids: Sequence[str]) -> None:
    """Refuse what would make a useless or ambiguous index, naming the offending document."""
    if not texts:
        raise ValueError("the corpus is empty: there is nothing to index (check the file and --field)")
    if len(ids) != len(texts):
        raise ValueError(f"got {len(ids)} ids for {len(texts)} texts: give exactly one id per text")
    duplicate = find_duplicate(ids)
    if duplicate is not None:
        ident, first, second = duplicate
        raise ValueError(
            f"duplicate document id {ident!r} (documents {first + 1} and {second + 1}): a hit must name one "
            f"document, so ids must be unique; fix the ids, or leave them out to number documents instead"
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"document {ids[i]!r} (document {i + 1}) has an empty text: remove it or give it content")


def find_duplicate(ids: Sequence[str]) -> tuple[str, int, int] | None:
    """The first repeated id and the 0-based positions of its first two occurrences, or None."""
    seen: dict[str, int] = {}
    for position, ident in enumerate(ids):
        if ident in seen:
            return ident, seen[ident], position
        seen[ident] = position
    return None


def _write_directory(target: Path, index: faiss.Index, documents: list[Document], manifest: IndexManifest) -> None:
    """Write into a staging directory and swap it into place: a reader never sees half an index."""
    with staged_directory(target) as staging:
        faiss.write_index(index, str(staging / INDEX_FILE))
        write_documents(staging / DOCUMENTS_FILE, documents)
        write_manifest(staging / MANIFEST_FILE, manifest)


__all__ = ["build_index", "check_corpus", "find_duplicate"]
