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
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import faiss
import numpy as np

from grace.embedding import EmbeddingConfig
from grace.encoder import GraceEncoder
from grace.staging import check_replaceable, staged_directory
from grace.texts import Texts, text_batch

INDEX_FILE = "index.faiss"
DOCUMENTS_FILE = "documents.jsonl"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
INDEX_TYPES = ("flat", "hnsw", "ivf")
_TRAINING_POINTS_PER_LIST = 39  # below this faiss's k-means warns that its centroids are unreliable


class InvalidIndexError(ValueError):
    """An index directory that cannot be used as it is (truncated, edited, from a newer version...)."""


class EncoderMismatchError(ValueError):
    """The encoder given for a search did not make the index's vectors."""


@dataclass(frozen=True)
class IndexSpec:
    """Which faiss index to build. ``flat`` is exact; ``hnsw`` and ``ivf`` trade recall for speed."""

    type: str = "flat"
    hnsw_m: int = 32  # hnsw: neighbours per node
    ef_construction: int = 80  # hnsw: candidate list while building
    ef_search: int = 64  # hnsw: candidate list while searching (more = better recall, slower)
    nlist: int | None = None  # ivf: clusters; None = about 4 sqrt(N), with enough points to train each
    nprobe: int = 16  # ivf: clusters scanned per query

    def __post_init__(self) -> None:
        if self.type not in INDEX_TYPES:
            raise ValueError(f"unknown index type {self.type!r}: use one of {', '.join(INDEX_TYPES)}")
        for name in ("hnsw_m", "ef_construction", "ef_search", "nprobe"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.nlist is not None and self.nlist < 1:
            raise ValueError(f"nlist must be at least 1, got {self.nlist}")

    def resolved(self, count: int) -> "IndexSpec":
        """The spec with ``nlist`` fixed for a corpus of ``count`` documents (stored in the manifest)."""
        if self.type != "ivf":
            return self
        if self.nlist is None:
            nlist = max(1, min(round(4 * math.sqrt(count)), count // _TRAINING_POINTS_PER_LIST))
            return replace(self, nlist=nlist)
        if self.nlist > count:
            raise ValueError(
                f"an IVF index with nlist={self.nlist} clusters needs at least {self.nlist} documents to train, "
                f"the corpus has {count}: lower --nlist or use --index-type flat"
            )
        return self

    def create(self, dim: int) -> faiss.Index:
        """An empty faiss index (``resolved`` first for IVF)."""
        if self.type == "flat":
            return faiss.IndexFlatIP(dim)
        if self.type == "hnsw":
            index = faiss.index_factory(dim, f"HNSW{self.hnsw_m},Flat", faiss.METRIC_INNER_PRODUCT)
            faiss.downcast_index(index).hnsw.efConstruction = self.ef_construction
        else:
            assert self.nlist is not None, "call resolved() first"
            index = faiss.index_factory(dim, f"IVF{self.nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        self.apply_search_parameters(index)
        return index

    def apply_search_parameters(self, index: faiss.Index) -> None:
        if self.type == "hnsw":
            faiss.ParameterSpace().set_index_parameter(index, "efSearch", self.ef_search)
        elif self.type == "ivf":
            faiss.ParameterSpace().set_index_parameter(index, "nprobe", min(self.nprobe, self.nlist or self.nprobe))


@dataclass(frozen=True)
class Document:
    """One row of the index: what was embedded and the rationale its embedding was pooled over."""

    id: str
    text: str
    rationale: str
    truncated: bool


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


@dataclass(frozen=True)
class IndexManifest:
    """``manifest.json``: what an index holds and how its vectors were made."""

    count: int
    dim: int
    spec: IndexSpec
    encoder_source: str  # what ``GraceEncoder.from_pretrained`` reloads the encoder from
    encoder_name: str
    fingerprint: str  # hash of the encoder's weights, as loaded: in ``dtype``
    dtype: str  # "float32", "bfloat16", ...: search loads the encoder so, or its fingerprint differs
    device: str  # where the corpus was embedded (provenance: search runs wherever it is told)
    document: EmbeddingConfig
    query: EmbeddingConfig
    corpus: dict[str, Any]  # provenance: where the documents were read from (free-form)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "count": self.count,
            "dim": self.dim,
            "metric": "inner_product",
            "index": asdict(self.spec),
            "encoder": {
                "source": self.encoder_source,
                "name": self.encoder_name,
                "fingerprint": self.fingerprint,
                "dtype": self.dtype,
                "device": self.device,
            },
            "document": self.document.to_dict(),
            "query": self.query.to_dict(),
            "corpus": self.corpus,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "IndexManifest":
        version = raw.get("format_version")
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise ValueError(
                f"format version {version} is newer than this grace understands ({FORMAT_VERSION}): upgrade grace"
            )
        if version != FORMAT_VERSION:
            raise ValueError(f"unknown format version {version!r}")
        encoder = raw["encoder"]
        return cls(
            count=int(raw["count"]),
            dim=int(raw["dim"]),
            spec=IndexSpec(**raw["index"]),
            encoder_source=str(encoder["source"]),
            encoder_name=str(encoder["name"]),
            fingerprint=str(encoder["fingerprint"]),
            # Indexes written before these were recorded: float32 was the default, the device is unknown.
            dtype=str(encoder.get("dtype", "float32")),
            device=str(encoder.get("device", "unknown")),
            document=EmbeddingConfig.from_dict(raw["document"]),
            query=EmbeddingConfig.from_dict(raw["query"]),
            corpus=dict(raw.get("corpus") or {}),
        )

    @property
    def built_by(self) -> str:
        """``name (source)``, or just one of them when they are the same."""
        if self.encoder_name == self.encoder_source:
            return self.encoder_name
        return f"{self.encoder_name} ({self.encoder_source})"

    def rebuild_hint(self, directory: Path) -> str:
        corpus = self.corpus.get("source", "CORPUS")
        return f"rebuild it with `grace-index build {corpus} {directory} --model {self.encoder_source}`"


# ---------------------------------------------------------------------- building


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
) -> "RetrievalIndex":
    """Embed ``texts`` as documents and write an index directory (replacing an index already there).

    ``texts``: the documents, one ``str`` being one document (``grace.texts``). ``ids``: one unique id per
    text (default: "0", "1", ...); a ``str`` is the id of one document, never one id per character.
    ``source``: what to reload the encoder from at search time (default: the encoder's name). The corpus is embedded ``chunk_size`` texts at a
    time, so with an embedding cache a killed build loses at most one chunk when run again, and a
    second build of the same corpus never runs the model. ``progress(n)``: n more texts embedded.
    """
    texts, _ = text_batch(texts)
    if isinstance(ids, str):
        ids = [ids]
    ids = [str(i) for i in range(len(texts))] if ids is None else [str(i) for i in ids]
    check_corpus(texts, ids)
    spec = spec.resolved(len(texts))
    target = Path(directory)
    # An existing index may be replaced; any other non-empty path is the user's and is left alone.
    check_replaceable(target, marker=MANIFEST_FILE, what="a GRACE index")

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
        dtype=encoder.dtype,
        device=encoder.device,
        document=encoder.config_for("document"),
        query=encoder.config_for("query"),
        corpus=corpus or {},
    )
    _write_directory(target, index, documents, manifest)
    return RetrievalIndex(target, index, documents, manifest)


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
        with open(staging / DOCUMENTS_FILE, "w", encoding="utf-8") as handle:
            for document in documents:
                handle.write(json.dumps(asdict(document), ensure_ascii=False) + "\n")
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------- loading and searching


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
        try:
            manifest = IndexManifest.from_dict(json.loads(manifest_path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
            raise InvalidIndexError(f"{manifest_path} is corrupt ({_describe(error)}): {build}") from None
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
        documents = _read_documents(directory / DOCUMENTS_FILE, manifest.count, rebuild)
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
        gets one ``SearchResult`` back; a batch gets a list (``grace.texts``)."""
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


def _read_documents(path: Path, count: int, rebuild: str) -> list[Document]:
    if not path.is_file():
        raise InvalidIndexError(f"{path.parent} is missing {path.name}: {rebuild}")
    documents: list[Document] = []
    with open(path, "rb") as handle:  # bytes, decoded per line: a bad byte is reported with its line
        for line, raw in enumerate(handle, start=1):
            try:
                documents.append(Document(**json.loads(raw.decode("utf-8"))))
            except (UnicodeDecodeError, json.JSONDecodeError, TypeError) as error:
                raise InvalidIndexError(f"{path}, line {line} is corrupt ({_describe(error)}): {rebuild}") from None
    if len(documents) != count:
        raise InvalidIndexError(f"{path} lists {len(documents)} documents, the index holds {count}: {rebuild}")
    return documents


def _describe(error: BaseException) -> str:
    if isinstance(error, KeyError):
        return f"missing key {error.args[0]!r}"
    return str(error) or type(error).__name__


__all__ = [
    "INDEX_TYPES",
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
