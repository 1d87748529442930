"""Exact token attribution of a cosine (grace.embedding.attribution): hand-computed tensors, then the tiny model
through GraceEncoder.explain_similarity, then (slow) the packaged SmolLM2."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from grace.embedding.attribution import (
    PooledTokens,
    explain_pair,
    pair_contributions,
    pooled_tokens,
    token_contributions,
)
from grace.embedding.encoder import GraceEncoder
from grace.embedding.pipeline import Decoding, EmbeddingConfig
from grace.model.pooling import POOLING_METHODS, pool_hidden
from grace.model.prompts import Span

S, T, I, R, P = int(Span.SYSTEM), int(Span.TEMPLATE), int(Span.INPUT), int(Span.RATIONALE), int(Span.PAD)
ROOT26 = math.sqrt(26)


def _hand_pair() -> tuple[PooledTokens, PooledTokens]:
    # a: the system token is not pooled; mu = ([0,1] + [1,1] + [2,0]) / 3 = [1, 2/3], e_a = [3, 2] / sqrt(13)
    a = pooled_tokens(torch.tensor([[1.0, 0], [0, 1], [1, 1], [2, 0]]), torch.tensor([S, I, T, R]), "after_system")
    # b: mu = [1/2, 1/2], e_b = [1, 1] / sqrt(2)
    b = pooled_tokens(torch.tensor([[0.0, 1], [1, 0]]), torch.tensor([I, R]), "after_system")
    return a, b


def test_mean_pooling_weights_and_contributions_by_hand():
    a, b = _hand_pair()
    assert torch.allclose(a.weights, torch.full((3,), 1 / math.sqrt(13)))
    assert torch.allclose(a.embedding, torch.tensor([3.0, 2.0]) / math.sqrt(13))
    # cos = (3 + 2) / sqrt(26); token i of a adds w_i (h_i . e_b): 1, 2, 2 over sqrt(26); b's tokens: 2, 3.
    assert torch.allclose(token_contributions(a, b.embedding), torch.tensor([1.0, 2, 2]) / ROOT26)
    assert torch.allclose(token_contributions(b, a.embedding), torch.tensor([2.0, 3]) / ROOT26)
    # pairs: w_a w_b (h_i . h_j) = dots [[1, 0], [1, 1], [0, 2]] / sqrt(26)
    assert torch.allclose(pair_contributions(a, b), torch.tensor([[1.0, 0], [1, 1], [0, 2]]) / ROOT26)


def test_explain_pair_parts_shares_and_top_pairs_by_hand():
    a, b = _hand_pair()
    explained = explain_pair(a, b, "after_system", pieces=(["x", "y", "z"], ["u", "v"]), top_pairs=1)
    assert explained.cosine == pytest.approx(5 / ROOT26, abs=1e-6)
    assert explained.a.spans == ["input", "template", "rationale"]
    # a's split: input 1, template 2, rationale 2; b's: input 2, rationale 3 (over sqrt 26); the pair's is the mean.
    assert explained.a.parts() == pytest.approx({"input": 1 / ROOT26, "template": 2 / ROOT26, "rationale": 2 / ROOT26})
    assert explained.parts() == pytest.approx({"input": 1.5 / ROOT26, "template": 1 / ROOT26, "rationale": 2.5 / ROOT26})
    assert explained.shares() == pytest.approx({"input": 0.3, "template": 0.2, "rationale": 0.5})
    assert explained.rationale_share == pytest.approx(0.5)
    (pair,) = explained.top_pairs
    assert (pair.a, pair.b, pair.contribution) == (2, 1, pytest.approx(2 / ROOT26))
    assert explained.a.strongest(2) in ([1, 2], [2, 1])


def test_last_token_pooling_by_hand():
    # The last real token (before right padding) is the only pooled one: e = h / |h|.
    a = pooled_tokens(torch.tensor([[9.0, 9], [1, 1], [3, 4], [7, 7]]), torch.tensor([S, I, R, P]), "last_token")
    b = pooled_tokens(torch.tensor([[0.0, 5], [1, 0]]), torch.tensor([I, T]), "last_token")
    assert a.weights.tolist() == pytest.approx([0.2]) and torch.allclose(a.embedding, torch.tensor([0.6, 0.8]))
    explained = explain_pair(a, b, "last_token", pieces=(["end"], ["."]))
    assert explained.cosine == pytest.approx(0.6)
    assert explained.a.contributions.tolist() == pytest.approx([0.6]) and explained.b.contributions.tolist() == pytest.approx([0.6])
    assert explained.a.spans == ["rationale"] and explained.b.spans == ["template"]


def test_without_a_rationale_the_rationale_share_is_zero():
    a = pooled_tokens(torch.tensor([[1.0, 0], [0, 2]]), torch.tensor([I, T]), "after_system")
    b = pooled_tokens(torch.tensor([[1.0, 1]]), torch.tensor([I]), "after_system")
    explained = explain_pair(a, b, "after_system", pieces=(["p", "q"], ["r"]))
    # mu_a = [1/2, 1], e_a = [1, 2] / sqrt(5); e_b = [1, 1] / sqrt(2): cos = 3 / sqrt(10)
    assert explained.cosine == pytest.approx(3 / math.sqrt(10))
    assert explained.rationale_share == 0.0
    assert sum(explained.shares().values()) == pytest.approx(1.0)


@pytest.mark.parametrize("method", POOLING_METHODS)
def test_pooled_tokens_make_pool_hidden_for_every_pooling(method):
    """The weighted sum of the pooled tokens is the embedding pool_hidden (the reference) makes."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(6, 5, generator=generator)
    spans = torch.tensor([P, S, T, I, T, R])  # left padding, the rationale last
    reference = pool_hidden(hidden.unsqueeze(0), spans.unsqueeze(0), method)[0]
    tokens = pooled_tokens(hidden, spans, method)
    assert torch.allclose(tokens.embedding, reference, atol=1e-6)
    other = torch.nn.functional.normalize(torch.randn(5, generator=generator), dim=0)
    assert float(token_contributions(tokens, other).sum()) == pytest.approx(float(reference @ other), abs=1e-6)


def test_bad_inputs_to_the_math_name_the_problem():
    with pytest.raises(ValueError, match="no token to pool"):
        pooled_tokens(torch.ones(2, 3), torch.tensor([I, T]), "rationale")
    with pytest.raises(ValueError, match="unknown pooling"):
        pooled_tokens(torch.ones(2, 3), torch.tensor([I, T]), "max")
    with pytest.raises(ValueError, match=r"\[T, H\]"):
        pooled_tokens(torch.ones(3, 3), torch.tensor([I, T]), "input")
    a, b = _hand_pair()
    with pytest.raises(ValueError, match="side b: 1 pieces for 2 pooled tokens"):
        explain_pair(a, b, "after_system", pieces=(["x", "y", "z"], ["u"]))


# ---------------------------------------------------------------- the tiny model, through the encoder

SHORT = EmbeddingConfig(decoding=Decoding(max_new_tokens=6), max_prompt_tokens=96)


@pytest.fixture(scope="module")
def encoder(tiny):
    return GraceEncoder(*tiny, document=SHORT)


def _check_exact(explained, a_vector, b_vector):
    assert float(explained.a.contributions.sum()) == pytest.approx(explained.cosine, abs=1e-5)
    assert float(explained.b.contributions.sum()) == pytest.approx(explained.cosine, abs=1e-5)
    assert sum(explained.parts().values()) == pytest.approx(explained.cosine, abs=1e-5)
    assert explained.cosine == pytest.approx(float(np.dot(a_vector, b_vector)), abs=1e-4)


def test_explain_similarity_is_exact_and_matches_encode(encoder):
    a, b = "The cat sat on the mat.", "A dog slept on the rug."
    explained = encoder.explain_similarity(a, b, top_pairs=4)
    _check_exact(explained, encoder.encode(a), encoder.encode(b))
    assert explained.a.rationale == encoder.explain(a) and explained.b.rationale == encoder.explain(b)
    assert len(explained.top_pairs) == 4
    assert [p.contribution for p in explained.top_pairs] == sorted((p.contribution for p in explained.top_pairs), reverse=True)
    # The input pieces spell the input text, literally.
    assert "".join(p for p, s in zip(explained.a.pieces, explained.a.spans) if s == "input") == a


def test_one_query_against_several_documents_with_role_settings(tiny):
    query_settings = EmbeddingConfig(decoding=Decoding(max_new_tokens=3), max_prompt_tokens=96)
    encoder = GraceEncoder(*tiny, document=SHORT, query=query_settings)
    query, documents = "where do cats sleep?", ["on the mat", "stocks fell <b>sharply</b> <|im_end|>"]
    explained = encoder.explain_similarity(query, documents, role_a="query", role_b="document")
    assert isinstance(explained, list) and len(explained) == 2
    q = encoder.encode(query, role="query")
    for item, vector in zip(explained, encoder.encode(documents, role="document")):
        _check_exact(item, q, vector)
        assert item.a.spans.count("rationale") <= 3  # the query's own length limit applied
    # Markup and a control-token string stay literal text of the input.
    pieces = explained[1].b
    assert "".join(p for p, s in zip(pieces.pieces, pieces.spans) if s == "input") == documents[1]


@pytest.mark.parametrize("pooling", ["last_token", "input", "rationale"])
def test_other_poolings_are_exact_and_match_encode(tiny, pooling):
    encoder = GraceEncoder(*tiny, document=EmbeddingConfig(pooling=pooling, decoding=Decoding(max_new_tokens=4)))
    a, b = "first text here", "second text there"
    explained = encoder.explain_similarity(a, b)
    _check_exact(explained, encoder.encode(a), encoder.encode(b))
    if pooling == "last_token":
        assert len(explained.a.pieces) == 1


def test_without_a_rationale_matches_encode_and_has_no_rationale_share(tiny):
    encoder = GraceEncoder(*tiny, document=EmbeddingConfig(rationale=False))
    explained = encoder.explain_similarity("alpha beta", "gamma delta")
    _check_exact(explained, encoder.encode("alpha beta"), encoder.encode("gamma delta"))
    assert explained.rationale_share == 0.0 and "rationale" not in explained.a.spans and explained.a.rationale == ""


def test_bad_input_names_the_argument(encoder):
    with pytest.raises(ValueError, match="a: text 0 is empty"):
        encoder.explain_similarity("  ", "x")
    with pytest.raises(ValueError, match="b: text 1 is empty"):
        encoder.explain_similarity("x", ["y", ""])
    with pytest.raises(TypeError, match="a must be one str"):
        encoder.explain_similarity(["x"], "y")
    with pytest.raises(TypeError, match="b"):
        encoder.explain_similarity("x", 3)
    with pytest.raises(ValueError, match="role_b: unknown role 'answer'"):
        encoder.explain_similarity("x", "y", role_b="answer")
    with pytest.raises(ValueError, match=r"b\[1\] is \d+ tokens, over the prompt budget"):
        encoder.explain_similarity("x", ["y", "word " * 200])
    with pytest.raises(ValueError, match="num_samples=2"):
        encoder.explain_similarity("x", "y", decoding={"num_samples": 2, "temperature": 1.0})


def test_mismatched_pooling_between_roles_is_refused(tiny):
    encoder = GraceEncoder(*tiny, document=SHORT, query=EmbeddingConfig(pooling="last_token"))
    with pytest.raises(ValueError, match="role_a='query' pools with 'last_token'"):
        encoder.explain_similarity("x", "y", role_a="query")


def test_allow_truncated_explains_the_cut_text(encoder):
    long = "word " * 200
    explained = encoder.explain_similarity("x", long, allow_truncated=True)
    assert explained.b.input_truncated and not explained.a.input_truncated
    _check_exact(explained, encoder.encode("x"), encoder.encode(long))


@pytest.mark.slow
def test_smollm2_explanation_is_exact_and_matches_encode(smollm2):
    encoder = GraceEncoder(*smollm2, document=EmbeddingConfig(decoding=Decoding(max_new_tokens=16)))
    a, b = "A man is playing a guitar on stage.", "Someone performs music with a guitar."
    explained = encoder.explain_similarity(a, b, top_pairs=3)
    _check_exact(explained, encoder.encode(a), encoder.encode(b))
    assert explained.a.rationale and explained.parts()["rationale"] != 0
