"""faiss retrieval over GRACE embeddings: an index directory that knows how its vectors were made.

* ``index``: ``RetrievalIndex``, loading an index directory and searching it (every public name below is
  importable from here too);
* ``build``: ``build_index``, embedding a corpus and writing the directory; ``check_corpus``;
* ``manifest``: the format of the directory's files (``manifest.json``, ``documents.jsonl``), its errors;
* ``spec``: ``IndexSpec``, which faiss index to build (flat, HNSW, IVF) and its parameters.

The names this package had as a module before 0.2 (``retrieval.check_corpus``, ...) are still found here.
"""
from grace.moved import old_names

__getattr__ = old_names(
    __name__,
    "grace.retrieval.index",
    (
        "Document", "EncoderMismatchError", "Hit", "IndexManifest", "IndexSpec", "InvalidIndexError", "RetrievalIndex",
        "SearchResult", "build_index", "check_corpus",
    ),
)
