"""The on-disk format of an index directory, apart from the faiss file itself.

* ``manifest.json`` (``IndexManifest``): count, dimension, index parameters (``spec.IndexSpec``), the encoder
  (source, name, weight fingerprint, dtype and device) and the document and query embedding settings;
  ``FORMAT_VERSION`` says which layout it has.
* ``documents.jsonl`` (``Document``): row i of the faiss index is line i.

Reading either file turns anything unusable into an ``InvalidIndexError`` that says how to rebuild.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from grace.embedding.pipeline import EmbeddingConfig
from grace.retrieval.spec import IndexSpec

INDEX_FILE = "index.faiss"
DOCUMENTS_FILE = "documents.jsonl"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1


class InvalidIndexError(ValueError):
    """An index directory that cannot be used as it is (truncated, edited, from a newer version...)."""


class EncoderMismatchError(ValueError):
    """The encoder given for a search did not make the index's vectors."""


@dataclass(frozen=True)
class Document:
    """One row of the index: what was embedded and the rationale its embedding was pooled over."""

    id: str
    text: str
    rationale: str
    truncated: bool


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
    # What else decides an embedding (grace.embedding.encoder): the tokenizer with its chat template, and the
    # stop tokens of the model's generation_config.json. None in manifests written before they were recorded.
    tokenizer_fingerprint: str | None = None
    generation_fingerprint: str | None = None

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
                "tokenizer": self.tokenizer_fingerprint,
                "generation": self.generation_fingerprint,
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
            tokenizer_fingerprint=encoder.get("tokenizer"),
            generation_fingerprint=encoder.get("generation"),
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


def write_manifest(path: Path, manifest: IndexManifest) -> None:
    path.write_text(json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False) + "\n")


def read_manifest(path: Path, build: str) -> IndexManifest:
    """The manifest at ``path``; a corrupt one is an ``InvalidIndexError`` ending with the hint ``build``."""
    try:
        return IndexManifest.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise InvalidIndexError(f"{path} is corrupt ({_describe(error)}): {build}") from None


def write_documents(path: Path, documents: list[Document]) -> None:
    """One JSON object per line, in row order (non-ASCII text kept as is)."""
    with open(path, "w", encoding="utf-8") as handle:
        for document in documents:
            handle.write(json.dumps(asdict(document), ensure_ascii=False) + "\n")


def read_documents(path: Path, count: int, rebuild: str) -> list[Document]:
    """The ``count`` documents at ``path``, in row order; anything else is an ``InvalidIndexError`` ending with ``rebuild``."""
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
    "DOCUMENTS_FILE",
    "FORMAT_VERSION",
    "INDEX_FILE",
    "MANIFEST_FILE",
    "Document",
    "EncoderMismatchError",
    "IndexManifest",
    "InvalidIndexError",
    "read_documents",
    "read_manifest",
    "write_documents",
    "write_manifest",
]
