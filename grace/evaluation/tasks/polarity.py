"""GracePangLeePolarity: sentence polarity (movie review snippets) from gensim's ``pang_lee_polarity.cor``.

The file holds 200 lower-cased, tokenised sentences of Pang & Lee's sentence polarity dataset v1.0 in
fastText format: ``__label__neg <text>`` (first 100 lines) or ``__label__pos <text>`` (last 100); it is
Windows-1252 encoded (em dashes are byte 0x97). There is no official split, so we fix one: within each
label, in file order, even positions train and odd positions test (100 + 100, balanced). The logistic
regression probe sees the whole training half, so one experiment is all there is to run.
"""
from __future__ import annotations

from typing import Any

from datasets import Dataset, DatasetDict
from mteb.abstasks import AbsTaskClassification
from mteb.abstasks.task_metadata import TaskMetadata

from ._common import gensim_test_file, package_revision

LABELS: dict[str, int] = {"__label__neg": 0, "__label__pos": 1}


def read_polarity_sentences() -> list[tuple[str, int]]:
    """(sentence, label) for every line of the file; label 0 = negative, 1 = positive."""
    examples = []
    for number, line in enumerate(
        gensim_test_file("pang_lee_polarity.cor").read_text(encoding="cp1252").splitlines(), start=1
    ):
        tag, _, text = line.partition(" ")
        if tag not in LABELS or not text.strip():
            raise ValueError(f"pang_lee_polarity.cor:{number}: expected '__label__neg|pos <text>'")
        examples.append((text.strip(), LABELS[tag]))
    return examples


def polarity_splits() -> DatasetDict:
    """The fixed split: per label, even positions -> ``train``, odd positions -> ``test``."""
    splits: dict[str, dict[str, list[Any]]] = {s: {"text": [], "label": []} for s in ("train", "test")}
    seen_per_label = {label: 0 for label in LABELS.values()}
    for text, label in read_polarity_sentences():
        split = "train" if seen_per_label[label] % 2 == 0 else "test"
        seen_per_label[label] += 1
        splits[split]["text"].append(text)
        splits[split]["label"].append(label)
    return DatasetDict({name: Dataset.from_dict(columns) for name, columns in splits.items()})


class GracePangLeePolarity(AbsTaskClassification):
    samples_per_label = 50  # = every training sentence: 100 train sentences, 50 per label
    n_experiments = 1  # with the whole training half used, every further experiment would be identical

    metadata = TaskMetadata(
        name="GracePangLeePolarity",
        description=(
            "Binary sentiment of 200 movie-review sentences (Pang & Lee sentence polarity v1.0 sample), read "
            "from gensim/test/test_data/pang_lee_polarity.cor in the installed gensim package. Fixed split: "
            "within each label, even file positions train and odd positions test (100/100, balanced)."
        ),
        reference="https://www.cs.cornell.edu/people/pabo/movie-review-data/",
        dataset={
            "path": "gensim/test/test_data/pang_lee_polarity.cor",
            "revision": package_revision("gensim"),
        },
        type="Classification",
        category="t2c",
        modalities=["text"],
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        main_score="accuracy",
        date=("2002-01-01", "2005-06-30"),  # rottentomatoes.com snippets, released with the ACL 2005 paper
        domains=["Reviews", "Written"],
        task_subtypes=["Sentiment/Hate speech"],
        license="not specified",
        annotations_creators="derived",  # labels come from the review's overall fresh/rotten rating
        dialect=[],
        sample_creation="found",
        bibtex_citation=r"""@inproceedings{pang2005seeing,
  author = {Pang, Bo and Lee, Lillian},
  booktitle = {Proceedings of the 43rd Annual Meeting of the Association for Computational Linguistics},
  pages = {115--124},
  title = {Seeing Stars: Exploiting Class Relationships for Sentiment Categorization with Respect to Rating Scales},
  year = {2005},
}""",
    )

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        self.dataset = polarity_splits()
        self.data_loaded = True
