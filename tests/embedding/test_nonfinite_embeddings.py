"""Every embedding entry point refuses NaN vectors, naming the texts and the model: GraceEncoder.encode (and
its cache), grace-encode, grace-index build, the mteb adapter. A diverged run's weights used to index
silently ("indexed 5 documents", every vector NaN, every search without hits)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from datasets import Dataset
from mteb.types import PromptType
from torch.utils.data import DataLoader

from grace.cli.encode import main as encode_main
from grace.cli.index import main as index_main
from grace.embedding.encoder import GraceEncoder, NonFiniteEmbedding
from grace.embedding.pipeline import Decoding, EmbeddingConfig
from grace.evaluation.adapter import GraceMtebEncoder
from grace.model.loading import TINY_RANDOM

SHORT = EmbeddingConfig(decoding=Decoding(max_new_tokens=2))
TEXTS = ["A cat sat on the mat.", "Stocks fell sharply today.", "The river froze in winter."]


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    """A saved encoder whose weights went NaN (as a diverged run's last weights)."""
    encoder = GraceEncoder.from_pretrained(TINY_RANDOM, document=SHORT)
    with torch.no_grad():
        encoder.model.model.norm.weight[0] = math.nan  # the final norm: every pooled vector gets a NaN
    directory = tmp_path_factory.mktemp("diverged") / "encoder"
    encoder.save(directory)
    return directory


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(TEXTS) + "\n")
    return path


def test_encode_names_the_texts_and_the_model_and_caches_nothing(diverged, tmp_path):
    encoder = GraceEncoder.from_pretrained(diverged, cache=tmp_path / "cache.sqlite")
    with pytest.raises(NonFiniteEmbedding) as caught:
        encoder.encode(TEXTS)
    message = str(caught.value)
    assert f"encoder {encoder.name!r} gave NaN or infinite embeddings for 3 of 3 texts" in message
    assert "'A cat sat on the mat.'" in message and "model.norm.weight" in message and "Nothing was returned or cached" in message
    with pytest.raises(NonFiniteEmbedding):  # nothing was cached: the second call computes (and refuses) again
        encoder.encode(TEXTS[0])


def test_an_overflowing_forward_with_finite_weights_says_so(tmp_path):
    encoder = GraceEncoder.from_pretrained(TINY_RANDOM, document=SHORT)
    rows = torch.tensor([[0.6, 0.8], [math.inf, 0.0]])
    with pytest.raises(NonFiniteEmbedding, match=r"for 1 of 2 texts \('b'\); its weights are finite, so the forward pass overflowed"):
        encoder._check_finite(rows, ["a", "b"])


def test_finite_embeddings_pass(tmp_path):
    encoder = GraceEncoder.from_pretrained(TINY_RANDOM, document=SHORT)
    assert np.isfinite(encoder.encode(TEXTS)).all()


def test_grace_encode_exits_with_status_3_and_writes_no_embeddings(diverged, corpus, tmp_path, capsys):
    out = tmp_path / "out"
    assert encode_main([str(corpus), str(out), "--model", str(diverged), "--quiet"]) == 3
    assert "grace-encode: error: encoder" in capsys.readouterr().err
    assert not (out / "embeddings.npy").exists() and not list((out / "chunks").glob("*.npy"))


def test_grace_index_build_exits_with_status_3_and_writes_no_index(diverged, corpus, tmp_path, capsys):
    index = tmp_path / "index"
    assert index_main(["build", str(corpus), str(index), "--model", str(diverged), "--quiet"]) == 3
    err = capsys.readouterr().err
    assert "grace-index: error: encoder" in err and "NaN or infinite embeddings for 3 of 3 texts" in err
    assert not index.exists()


class _Metadata:
    name = "unit-test"


def test_the_mteb_adapter_refuses_them_too(diverged):
    adapter = GraceMtebEncoder(GraceEncoder.from_pretrained(diverged))
    loader = DataLoader(Dataset.from_dict({"text": TEXTS}), batch_size=2)  # as mteb calls it
    with pytest.raises(NonFiniteEmbedding, match="NaN or infinite embeddings for 3 of 3 texts"):
        adapter.encode(loader, task_metadata=_Metadata(), hf_split="test", hf_subset="default", prompt_type=PromptType.query,
                       show_progress_bar=False)  # fmt: skip
