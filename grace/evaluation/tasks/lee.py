"""GraceLeeSTS: document similarity on the Lee et al. (2005) news corpus, with human ratings from gensim.

gensim ships the corpus and the ratings for its own reproduction of the paper (``gensim/test/test_lee.py``):
``lee.cor`` holds the 50 documents, one per line (Latin-1: one document has a pound sign);
``similarities0-1.txt`` is a 50x50 matrix whose upper triangle holds the 1225 pairwise ratings (mean of
the human raters' 1-5 judgements divided by 5, so 0.2-1.0; the diagonal is 1 and the lower triangle 0).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict
from mteb.abstasks.task_metadata import TaskMetadata

from ._common import UniqueTextSTS, gensim_test_file, package_revision

N_DOCUMENTS = 50


def read_lee_documents() -> list[str]:
    """The 50 news documents of ``lee.cor``, in file order (row i of the rating matrix)."""
    lines = gensim_test_file("lee.cor").read_text(encoding="latin-1").splitlines()
    documents = [line.strip() for line in lines if line.strip()]
    if len(documents) != N_DOCUMENTS:
        raise ValueError(f"lee.cor: expected {N_DOCUMENTS} documents, found {len(documents)}")
    return documents


def read_lee_ratings() -> np.ndarray:
    """The 50x50 rating matrix of ``similarities0-1.txt``; only its upper triangle is meaningful."""
    ratings = np.loadtxt(gensim_test_file("similarities0-1.txt"))
    if ratings.shape != (N_DOCUMENTS, N_DOCUMENTS):
        raise ValueError(f"similarities0-1.txt: expected a 50x50 matrix, found {ratings.shape}")
    return ratings


def lee_pairs() -> Dataset:
    """One row per unordered document pair i < j: ``sentence1``, ``sentence2``, ``score`` (0.2-1.0)."""
    documents, ratings = read_lee_documents(), read_lee_ratings()
    rows, cols = np.triu_indices(N_DOCUMENTS, k=1)
    return Dataset.from_dict(
        {
            "sentence1": [documents[i] for i in rows],
            "sentence2": [documents[j] for j in cols],
            "score": ratings[rows, cols].astype(float).tolist(),
        }
    )


class GraceLeeSTS(UniqueTextSTS):
    # The scale only shifts and stretches the scores; Pearson and Spearman do not depend on it.
    min_score = 0
    max_score = 1

    metadata = TaskMetadata(
        name="GraceLeeSTS",
        description=(
            "Document-level semantic similarity of 50 Australian Broadcasting Corporation news documents "
            "(Lee et al., 2005): 1225 document pairs rated by humans. Reads gensim/test/test_data/lee.cor "
            "(documents) and gensim/test/test_data/similarities0-1.txt (50x50 matrix of mean ratings, "
            "1-5 scale divided by 5) from the installed gensim package; no download."
        ),
        reference="https://github.com/piskvorky/gensim/blob/develop/gensim/test/test_lee.py",
        dataset={"path": "gensim/test/test_data/lee", "revision": package_revision("gensim")},
        type="STS",
        category="t2t",
        modalities=["text"],
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        main_score="cosine_spearman",
        date=("2001-01-01", "2005-07-31"),  # collection date not published; bounded by the paper
        domains=["News", "Written"],
        task_subtypes=[],
        license="not specified",
        annotations_creators="human-annotated",
        dialect=[],
        sample_creation="found",
        bibtex_citation=r"""@inproceedings{lee2005empirical,
  author = {Lee, Michael D. and Pincombe, Brandon and Welsh, Matthew},
  booktitle = {Proceedings of the 27th Annual Conference of the Cognitive Science Society},
  title = {An Empirical Evaluation of Models of Text Document Similarity},
  year = {2005},
}""",
    )

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        self.dataset = DatasetDict({"test": lee_pairs()})
        self.data_loaded = True
