"""The offline MTEB suite: each task loads its packaged data with the expected shape, and the whole suite
runs through ``mteb.evaluate`` with a cheap deterministic encoder (no language model involved)."""
from __future__ import annotations

import math
import re
import zlib
from typing import Any

import mteb
import numpy as np
import pytest
from mteb.abstasks import AbsTaskSTS
from mteb.models import EncoderProtocol, ModelMeta
from mteb.models.abs_encoder import AbsEncoder
from mteb.timing import TimingStack

from grace.data.chatterbot import HELD_OUT_CATEGORIES, chatterbot_split
from grace.evaluation.tasks import (
    OFFLINE_SUITE,
    SMALL_SUITE,
    GraceChatterbotRetrieval,
    GraceLeeSTS,
    GraceMiniNewsgroupsClustering,
    GracePangLeePolarity,
    GraceSimLex999,
    GraceWordSim353,
    chatterbot_retrieval_data,
    get_tasks,
)


class HashedBagOfWordsEncoder(AbsEncoder):
    """Words and character trigrams hashed into a fixed-size, L2-normalised count vector.

    Deterministic, dependency-free and fast, with a weak but real signal where texts share words (Lee,
    chatterbot): enough to show that every task wires its data through mteb correctly. Trigrams give
    single words (WordSim353, SimLex999) overlapping features, so their similarities are not all zero.
    """

    def __init__(self, dim: int = 1024) -> None:
        self.dim = dim
        self.seen_prompt_types: set[str | None] = set()
        self.mteb_model_meta = ModelMeta(
            loader=None,
            name="grace-tests/hashed-bag-of-words",  # mteb insists on "organisation/name"
            revision="1",
            release_date=None,
            languages=["eng-Latn"],
            n_parameters=0,
            memory_usage_mb=None,
            max_tokens=None,
            embed_dim=dim,
            license="apache-2.0",
            open_weights=True,
            public_training_code=None,
            public_training_data=None,
            framework=["NumPy"],
            similarity_fn_name="cosine",
            use_instructions=False,
            training_datasets=set(),
        )

    def _embed(self, text: str) -> np.ndarray:
        vector = np.zeros(self.dim, dtype=np.float32)
        for word in re.findall(r"\w+", text.lower()):
            padded = f"<{word}>"
            for feature in [word, *(padded[i : i + 3] for i in range(len(padded) - 2))]:
                vector[zlib.crc32(feature.encode()) % self.dim] += 1.0
        return vector / max(float(np.linalg.norm(vector)), 1e-12)

    def encode(
        self,
        inputs: Any,  # a torch DataLoader whose batches are dicts with a "text" list
        *,
        task_metadata: Any,
        hf_split: str,
        hf_subset: str,
        prompt_type: Any = None,  # mteb.types.PromptType.query / .document in retrieval, else None
        **kwargs: Any,
    ) -> np.ndarray:
        self.seen_prompt_types.add(prompt_type.value if prompt_type is not None else None)
        texts = [text for batch in inputs for text in batch["text"]]
        return np.stack([self._embed(text) for text in texts])


ENCODE_KWARGS = {"batch_size": 64, "show_progress_bar": False}


def loaded(task_class: type) -> Any:
    task = task_class()
    task.load_data()
    return task


def column(split: Any, name: str) -> list[Any]:
    return list(split[name])  # datasets 5 returns a lazy Column, not a list


def test_lee_has_1225_rated_pairs_of_50_documents() -> None:
    test = loaded(GraceLeeSTS).dataset["test"]
    assert len(test) == 1225
    assert len(set(column(test, "sentence1")) | set(column(test, "sentence2"))) == 50
    assert min(column(test, "score")) >= 0.2 and max(column(test, "score")) <= 1.0
    assert len(set(column(test, "score"))) > 20  # real ratings, not a constant


def test_polarity_split_is_balanced_disjoint_and_covers_200_sentences() -> None:
    dataset = loaded(GracePangLeePolarity).dataset
    train, test = dataset["train"], dataset["test"]
    assert len(train) + len(test) == 200
    for split in (train, test):
        assert sorted(set(column(split, "label"))) == [0, 1]
        assert column(split, "label").count(0) == column(split, "label").count(1) == 50
    texts = column(train, "text") + column(test, "text")
    assert len(set(texts)) == 200  # disjoint halves
    assert not any(text.startswith("__label__") for text in texts)
    assert "\u2014" in " ".join(texts)  # the cp1252 em dashes decoded, not mangled


def test_newsgroups_has_two_groups_and_no_headers() -> None:
    test = loaded(GraceMiniNewsgroupsClustering).dataset["test"]
    assert len(test) == 200
    assert sorted(set(column(test, "labels"))) == ["alt.atheism", "sci.space"]
    assert column(test, "labels").count("sci.space") == 100
    assert not any(post.startswith(("Newsgroups:", "From:", "Path:")) for post in column(test, "sentences"))


@pytest.mark.parametrize(("task_class", "n_pairs"), [(GraceWordSim353, 353), (GraceSimLex999, 999)])
def test_word_pair_tasks_have_every_pair_on_a_0_to_10_scale(task_class: type, n_pairs: int) -> None:
    test = loaded(task_class).dataset["test"]
    assert len(test) == n_pairs
    assert 0 <= min(column(test, "score")) and max(column(test, "score")) <= 10
    words = column(test, "sentence1") + column(test, "sentence2")
    assert all(word and " " not in word for word in words)


def test_chatterbot_retrieval_queries_match_the_eval_split_and_all_have_an_answer() -> None:
    eval_pairs = chatterbot_split("eval")
    data = chatterbot_retrieval_data()
    assert len(data.queries) == len(eval_pairs)
    assert len(set(data.corpus.values())) == len(data.corpus)  # identical answers merged
    assert set(data.qrels) == set(data.queries)
    for query_id, relevant in data.qrels.items():
        assert relevant and all(doc_id in data.corpus for doc_id in relevant)
    pair_of = {pair.question: pair for pair in eval_pairs}
    for query_id, question in data.queries.items():
        assert {data.corpus[d] for d in data.qrels[query_id]} == {pair_of[question].answer}

    split = loaded(GraceChatterbotRetrieval).dataset["default"]["test"]
    assert len(split["queries"]) == len(data.queries) and len(split["corpus"]) == len(data.corpus)


def test_chatterbot_eval_never_overlaps_training() -> None:
    eval_pairs, train_pairs = chatterbot_split("eval"), chatterbot_split("train")
    eval_categories = {pair.category for pair in eval_pairs}
    assert eval_categories == set(HELD_OUT_CATEGORIES)
    assert not eval_categories & {pair.category for pair in train_pairs}
    train_questions = {pair.question.lower() for pair in train_pairs}
    assert not any(pair.question.lower() in train_questions for pair in eval_pairs)


def test_every_task_has_complete_metadata_and_a_package_revision() -> None:
    for task in get_tasks(list(OFFLINE_SUITE)):
        metadata = task.metadata
        assert metadata.is_filled(), metadata.name
        assert metadata.name.startswith("Grace")
        assert metadata.eval_langs == ["eng-Latn"]
        assert re.fullmatch(r"(gensim|chatterbot-corpus)-\d+\.\d+\.\d+", metadata.dataset["revision"])


def test_get_tasks_expands_suites_and_falls_back_to_mteb() -> None:
    assert [t.metadata.name for t in get_tasks(["offline"])] == list(OFFLINE_SUITE)
    assert [t.metadata.name for t in get_tasks(["small"])] == list(SMALL_SUITE)
    assert set(SMALL_SUITE) <= set(OFFLINE_SUITE)
    names = [t.metadata.name for t in get_tasks(["GraceSimLex999", "small", "GraceLeeSTS", "STS12"])]
    assert names == ["GraceSimLex999", *SMALL_SUITE, "STS12"]  # order kept, duplicates dropped
    first, second = get_tasks(["GraceLeeSTS"]), get_tasks(["GraceLeeSTS"])
    assert first[0] is not second[0]  # tasks hold loaded data: never share them
    with pytest.raises(ValueError, match="GraceChatterbotRetrieval"):
        get_tasks(["NoSuchTask"])


def test_unique_text_sts_scores_exactly_like_mtebs_own_sts_evaluator() -> None:
    task, encoder = loaded(GraceWordSim353), HashedBagOfWordsEncoder()
    test = task.dataset["test"]
    arguments: dict[str, Any] = dict(encode_kwargs=ENCODE_KWARGS, hf_split="test", hf_subset="default")
    ours = task._evaluate_subset(encoder, test, timer=TimingStack(), **arguments)
    stock = AbsTaskSTS._evaluate_subset(task, encoder, test, timer=TimingStack(), **arguments)
    assert ours.keys() == stock.keys()
    for metric in ours:
        assert ours[metric] == pytest.approx(stock[metric], abs=1e-9), metric


def test_whole_suite_runs_through_mteb_evaluate_with_finite_main_scores() -> None:
    encoder = HashedBagOfWordsEncoder()
    assert isinstance(encoder, EncoderProtocol)
    results = mteb.evaluate(
        encoder,
        get_tasks(["offline"]),
        cache=None,  # no result files anywhere, in particular not in ~/.cache/mteb
        co2_tracker=False,
        encode_kwargs=dict(ENCODE_KWARGS),
        show_progress_bar=False,
    )
    assert not results.exceptions
    scores = {result.task_name: result.get_score() for result in results.task_results}
    assert set(scores) == set(OFFLINE_SUITE)
    assert all(math.isfinite(score) for score in scores.values()), scores
    # Word overlap is a weak but real signal (a random ranking of 140 answers has nDCG@10 ~0.03).
    assert scores["GraceLeeSTS"] > 0.05
    assert scores["GraceChatterbotRetrieval"] > 0.1
    assert {"query", "document", None} <= encoder.seen_prompt_types  # retrieval used both roles
