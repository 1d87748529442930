"""GraceChatterbotRetrieval: question -> answer retrieval on the held-out chatterbot-corpus categories.

Queries are the questions of ``chatterbot_split("eval")`` (categories ``HELD_OUT_CATEGORIES``, which the
training data never sees); the corpus is their answers with identical texts merged into one document, and
a question's relevant documents are those whose text equals its answer. ``chatterbot_retrieval_data``
exposes the same data as plain dicts for code outside mteb (the faiss retrieval path).
"""
from __future__ import annotations

from typing import Any, NamedTuple

from datasets import Dataset
from mteb.abstasks import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.task_metadata import TaskMetadata

from grace.data.chatterbot import chatterbot_split

from ._common import package_revision


class RetrievalData(NamedTuple):
    """A retrieval benchmark as plain dicts, in the shape mteb's v1 loaders and BEIR use."""

    queries: dict[str, str]  # query id -> question
    corpus: dict[str, str]  # document id -> answer text (unique texts)
    qrels: dict[str, dict[str, int]]  # query id -> {relevant document id: 1}


def chatterbot_retrieval_data() -> RetrievalData:
    """Queries, corpus and relevance judgements of the held-out split; ids are stable for a fixed corpus.

    Query ``q{i}`` is the i-th pair of ``chatterbot_split("eval")``; document ``d{j}`` is the j-th distinct
    answer text in that order. Every query has exactly one relevant document, since identical answers
    share one.
    """
    queries: dict[str, str] = {}
    corpus: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    doc_id_of: dict[str, str] = {}
    for index, pair in enumerate(chatterbot_split("eval")):
        if pair.answer not in doc_id_of:
            doc_id_of[pair.answer] = f"d{len(doc_id_of)}"
            corpus[doc_id_of[pair.answer]] = pair.answer
        query_id = f"q{index}"
        queries[query_id] = pair.question
        qrels[query_id] = {doc_id_of[pair.answer]: 1}
    return RetrievalData(queries, corpus, qrels)


class GraceChatterbotRetrieval(AbsTaskRetrieval):
    metadata = TaskMetadata(
        name="GraceChatterbotRetrieval",
        description=(
            "Find the answer to a chatbot question among all answers of the held-out chatterbot-corpus "
            "categories (history, literature, psychology, science, sports: grace.data.chatterbot."
            "HELD_OUT_CATEGORIES, never used for training). Reads chatterbot_corpus/data/english/*.yml from "
            "the installed chatterbot-corpus package; identical answers are merged into one document."
        ),
        reference="https://github.com/gunthercox/chatterbot-corpus",
        dataset={"path": "chatterbot_corpus/data/english", "revision": package_revision("chatterbot-corpus")},
        type="Retrieval",
        category="t2t",
        modalities=["text"],
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        main_score="ndcg_at_10",
        date=("2016-01-01", "2019-12-31"),  # not published; the corpus grew over its 1.x releases
        domains=["Constructed", "Written"],
        task_subtypes=["Question answering"],
        license="bsd-3-clause",
        annotations_creators="derived",  # relevance is the answer written for the question
        dialect=[],
        sample_creation="created",
        bibtex_citation="",
    )

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        data = chatterbot_retrieval_data()
        split = RetrievalSplitData(
            queries=Dataset.from_dict({"id": list(data.queries), "text": list(data.queries.values())}),
            corpus=Dataset.from_dict(
                {
                    "id": list(data.corpus),
                    "text": list(data.corpus.values()),
                    "title": [""] * len(data.corpus),
                }
            ),
            relevant_docs=data.qrels,
            top_ranked=None,
        )
        self.dataset = {"default": {"test": split}}
        self.data_loaded = True
