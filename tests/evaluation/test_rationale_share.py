"""The corpus-level rationale share (grace.evaluation.rationale_share): by hand, then on the tiny model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from grace.embedding.attribution import explain_pair, pooled_tokens
from grace.embedding.encoder import GraceEncoder
from grace.embedding.pipeline import Decoding, EmbeddingConfig
from grace.evaluation.rationale_share import retrieval_pairs, retrieval_rationale_share, sts_rationale_share, summarise
from grace.model.prompts import Span

I, R = int(Span.INPUT), int(Span.RATIONALE)


def _pair(rationale_weight: float):
    # a: input [1, 0], rationale [w, 0]; b: one input token [1, 0]. cos = 1, the rationale's part of a is w/(1+w).
    a = pooled_tokens(torch.tensor([[1.0, 0], [rationale_weight, 0]]), torch.tensor([I, R]), "after_system")
    b = pooled_tokens(torch.tensor([[1.0, 0]]), torch.tensor([I]), "after_system")
    return explain_pair(a, b, "after_system", pieces=(["x", "y"], ["z"]))


def test_summarise_splits_related_from_unrelated_by_hand():
    explained = [_pair(1.0), _pair(3.0), _pair(0.0)]  # rationale shares of the pair: (1/2)/2, (3/4)/2, 0
    summary = summarise("hand", explained, [True, True, False])
    assert summary.related.tolist() == pytest.approx([0.25, 0.375]) and summary.unrelated.tolist() == [0.0]
    assert summary.related_mean == pytest.approx(0.3125) and summary.difference == pytest.approx(0.3125)
    assert summary.as_dict()["pairs_related"] == 2 and summary.as_dict()["cosine_unrelated"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="3 explanations but 2 related flags"):
        summarise("hand", explained, [True, False])


SHORT = EmbeddingConfig(decoding=Decoding(max_new_tokens=4), max_prompt_tokens=96)


@pytest.fixture(scope="module")
def encoder(tiny):
    return GraceEncoder(*tiny, document=SHORT)


def test_sts_share_matches_pair_by_pair_explanations(encoder):
    s1, s2 = ["a cat", "a dog", "rain today", "a red car"], ["a kitten", "a puppy", "stock prices", "a cat"]
    scores = [0.9, 0.8, 0.1, 0.2]
    summary = sts_rationale_share(encoder, s1, s2, scores, name="toy")
    expected = [encoder.explain_similarity(a, b).rationale_share for a, b in zip(s1, s2)]
    assert summary.related.tolist() == pytest.approx(expected[:2], abs=1e-5)
    assert summary.unrelated.tolist() == pytest.approx(expected[2:], abs=1e-5)
    with pytest.raises(ValueError, match="same non-zero length"):
        sts_rationale_share(encoder, s1, s2[:2], scores)


def test_retrieval_pairs_take_the_best_scoring_irrelevant_document(tiny):
    encoder = GraceEncoder(*tiny, document=SHORT, query=EmbeddingConfig(decoding=Decoding(max_new_tokens=2)))
    queries = {"q0": "where do cats sleep", "q1": "what fell today"}
    corpus = {"d0": "on the mat", "d1": "the stock market", "d2": "in the garden"}
    qrels = {"q0": {"d0": 1}, "q1": {"d1": 1}}
    pairs, related = retrieval_pairs(encoder, queries, corpus, qrels)
    assert related == [True, False, True, False]
    docs = encoder.encode(list(corpus.values()))
    for row, query in enumerate(queries.values()):
        scores = docs @ encoder.encode(query, role="query")
        relevant = 0 if row == 0 else 1
        scores[relevant] = -np.inf
        assert pairs[2 * row + 1] == (query, list(corpus.values())[int(np.argmax(scores))])
    summary = retrieval_rationale_share(encoder, queries, corpus, qrels)
    assert summary.related.size == 2 and summary.unrelated.size == 2 and np.isfinite(summary.difference)
    with pytest.raises(ValueError, match="relevant document 'd9' is not in the corpus"):
        retrieval_pairs(encoder, queries, corpus, {"q0": {"d9": 1}, "q1": {"d1": 1}})


def test_an_encoder_without_rationales_is_refused_by_name(tiny):
    encoder = GraceEncoder(*tiny, document=EmbeddingConfig(rationale=False), name="plain")
    with pytest.raises(ValueError, match="encoder 'plain' embeds document texts without a rationale"):
        sts_rationale_share(encoder, ["a"], ["b"], [1.0])
