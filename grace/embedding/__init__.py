"""Texts in, embeddings and their rationales out: the one ``pipeline.embed`` that training, evaluation,
encoding and indexing share, the ``GraceEncoder`` built on it, its on-disk ``cache`` and the rule for what
counts as texts (``texts``).

The names this package had as a module before 0.2 (``embedding.text_seed``, ...) are still found here.
"""
from grace.moved import old_names

__getattr__ = old_names(
    __name__,
    "grace.embedding.pipeline",
    ("Decoding", "EmbeddingConfig", "EmbedOutput", "embed", "text_seed"),
)
