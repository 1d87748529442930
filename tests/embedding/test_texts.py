"""One str is one text, a list is a batch, anything else is a TypeError: at every function that takes texts.

The issue's example: ``encode("plants")`` returned 6 embeddings (one per character) and ``encode("Leaves turn
light into sugar.")`` failed with "text 6 is empty" (the position of a space).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset
from mteb.types import PromptType
from torch.utils.data import DataLoader

from grace.embedding.encoder import GraceEncoder
from grace.embedding.pipeline import Decoding, EmbeddingConfig, embed
from grace.embedding.texts import text_batch
from grace.evaluation.adapter import GraceMtebEncoder
from grace.model.loading import TINY_RANDOM
from grace.retrieval.index import RetrievalIndex, SearchResult, build_index

SENTENCE = "Leaves turn light into sugar."
SHORT = EmbeddingConfig(decoding=Decoding(max_new_tokens=3))
NOT_TEXT = [
    (b"bytes", "texts must be a str or a list of str, got bytes: decode it first"),
    (None, "texts must be a str or a list of str, got NoneType \\(None\\)"),
    (42, "got int \\(42\\)"),
    ({"a": 1}, "got dict .*its order is undefined"),
    (["fine", 3], "texts\\[1\\] must be a str, got int \\(3\\)"),
    (["fine", b"raw"], "texts\\[1\\] must be a str, got bytes"),
    ([["nested"]], "texts\\[0\\] must be a str, got list"),
]


@pytest.fixture(scope="module")
def encoder(tiny) -> GraceEncoder:
    return GraceEncoder(*tiny, document=SHORT, name=TINY_RANDOM)


def test_the_rule():
    assert text_batch("plants") == (["plants"], True)
    assert text_batch(["a", "b"]) == (["a", "b"], False)
    assert text_batch(("a", "b")) == (["a", "b"], False)
    assert text_batch(t for t in "ab") == (["a", "b"], False)  # any ordered iterable of str
    assert text_batch(np.array(["a", "b"])) == (["a", "b"], False)
    assert text_batch([]) == ([], False)
    for value, message in NOT_TEXT:
        with pytest.raises(TypeError, match=message):
            text_batch(value)
    with pytest.raises(TypeError, match="queries must be"):
        text_batch({"q"}, name="queries")


def test_one_str_is_one_text_for_the_encoder(encoder):
    vector = encoder.encode(SENTENCE)
    assert vector.shape == (encoder.embedding_dim,)
    np.testing.assert_array_equal(vector, encoder.encode([SENTENCE])[0])
    assert encoder.explain(SENTENCE) == encoder.explain([SENTENCE])[0] and isinstance(encoder.explain(SENTENCE), str)
    one = encoder.encode_with_rationales("plants")
    assert one.embeddings.shape == (encoder.embedding_dim,) and isinstance(one.rationales, str)
    assert one.truncated.shape == () and one.truncated.dtype == bool
    assert encoder.encode(["plants", SENTENCE]).shape == (2, encoder.embedding_dim)


def test_one_str_is_one_text_for_the_embed_function(tiny):
    one = embed(*tiny, SENTENCE, SHORT)
    batch = embed(*tiny, [SENTENCE], SHORT)
    assert one.embeddings.shape == (tiny[0].config.hidden_size,) and torch.equal(one.embeddings, batch.embeddings[0])
    assert one.rationales == batch.rationales[0] and bool(one.truncated) == bool(batch.truncated[0])


@pytest.mark.parametrize("value, message", NOT_TEXT)
def test_what_is_not_text_is_a_type_error_everywhere(tiny, encoder, tmp_path, value, message):
    for call in (
        lambda: embed(*tiny, value, SHORT),
        lambda: encoder.encode(value),
        lambda: encoder.explain(value),
        lambda: encoder.encode_with_rationales(value),
        lambda: build_index(encoder, value, tmp_path / "index"),
    ):
        with pytest.raises(TypeError, match=message):
            call()
    assert not (tmp_path / "index").exists()


def test_the_empty_text_error_keeps_its_index(encoder):
    with pytest.raises(ValueError, match="text 1 is empty"):
        encoder.encode(["fine", "  "])
    with pytest.raises(ValueError, match="text 0 is empty"):
        encoder.encode("   ")


def test_retrieval_indexes_one_document_and_answers_one_query(encoder, tmp_path):
    index = build_index(encoder, SENTENCE, tmp_path / "index", ids="leaves")
    assert len(index) == 1 and index.documents[0].id == "leaves" and index.documents[0].text == SENTENCE
    index = build_index(encoder, [SENTENCE, "Stocks fell."], tmp_path / "index")
    result = RetrievalIndex.load(tmp_path / "index").search(encoder, "how do plants eat?", k=2)
    assert isinstance(result, SearchResult) and result.query == "how do plants eat?" and len(result.hits) == 2
    results = index.search(encoder, ["how do plants eat?"], k=2)
    assert isinstance(results, list) and results[0].hits == result.hits
    for value, message in NOT_TEXT:
        with pytest.raises(TypeError, match=message.replace("texts", "queries")):
            index.search(encoder, value)


class _Metadata:
    name = "unit-test"


def adapter_encode(adapter: GraceMtebEncoder, loader) -> np.ndarray:
    return adapter.encode(loader, task_metadata=_Metadata(), hf_split="test", hf_subset="default",
                          prompt_type=PromptType.document, show_progress_bar=False)  # fmt: skip


def test_the_mteb_adapter_takes_unbatched_texts_as_one_text_each(encoder):
    adapter = GraceMtebEncoder(encoder)
    texts = [SENTENCE, "Stocks fell."]
    batched = adapter_encode(adapter, DataLoader(Dataset.from_dict({"text": texts}), batch_size=2))
    unbatched = adapter_encode(adapter, DataLoader(Dataset.from_dict({"text": texts}), batch_size=None))
    assert unbatched.shape == batched.shape == (2, encoder.embedding_dim)
    np.testing.assert_allclose(unbatched, batched, atol=1e-6)
    with pytest.raises(TypeError, match="unit-test \\(default, test\\): batch 0 text\\[1\\] must be a str, got int"):
        adapter_encode(adapter, [{"text": ["fine", 3]}])
