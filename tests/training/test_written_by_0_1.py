"""Files written by grace 0.1 (the flat layout, before the packages) load with today's code.

``tests/fixtures/written_by_0.1`` was written by the code of commit fefd340: a saved tiny-random encoder
(its settings files; the weights and tokenizer are rebuilt here, identically, since they are too large for
git), a faiss index built from it over three texts, that index's answer to one search, and the
``train_config.yaml`` of a 3-step tiny-random run (``grace-train model=tiny-random trainer.max_steps=3
logger=none seed=3 trainer.save_every=3``).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from grace.cli.train import CONF_DIR
from grace.embedding.encoder import GraceEncoder
from grace.model.loading import TINY_RANDOM, load_policy
from grace.retrieval.index import RetrievalIndex
from grace.training.resume import check_resume

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "written_by_0.1"


@pytest.fixture
def saved_encoder(tmp_path) -> Path:
    """The 0.1 encoder directory with its weights and tokenizer rebuilt (tiny-random, seed 0)."""
    target = tmp_path / "encoder"
    shutil.copytree(FIXTURE / "encoder", target)
    model, tokenizer = load_policy(TINY_RANDOM)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    for name in ("config.json", "generation_config.json", "grace_encoder.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(FIXTURE / "encoder" / name, target / name)  # the 0.1 files, not today's
    return target


def test_an_encoder_saved_by_0_1_loads_with_its_settings(saved_encoder):
    encoder = GraceEncoder.from_pretrained(saved_encoder)
    recorded = json.loads((FIXTURE / "encoder" / "grace_encoder.json").read_text())
    assert encoder.fingerprint == recorded["fingerprint"]
    assert encoder.configs["document"].decoding.max_new_tokens == recorded["document"]["decoding"]["max_new_tokens"]
    vectors = encoder.encode(["Bushfires threaten homes near Sydney.", "Rates rose."], max_new_tokens=4)
    assert vectors.shape == (2, 64) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_an_index_built_by_0_1_answers_as_it_did(saved_encoder, tmp_path):
    index_dir = tmp_path / "index"
    shutil.copytree(FIXTURE / "index", index_dir)
    before = json.loads((FIXTURE / "search.json").read_text())
    result = RetrievalIndex.load(index_dir).search(GraceEncoder.from_pretrained(saved_encoder), before["query"], k=2)
    assert [hit.document.id for hit in result.hits] == [hit["id"] for hit in before["hits"]]
    assert [hit.score for hit in result.hits] == pytest.approx([hit["score"] for hit in before["hits"]], abs=1e-5)
    assert result.rationale == before["rationale"]


def test_a_checkpoint_config_of_0_1_resumes_under_the_same_settings(tmp_path):
    checkpoint = tmp_path / "step-3"
    shutil.copytree(FIXTURE / "checkpoint", checkpoint)
    overrides = ["model=tiny-random", "logger=none", "seed=3", "trainer.save_every=3", "trainer.max_steps=6",
                 f"trainer.output_dir={tmp_path}"]  # fmt: skip
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = OmegaConf.to_object(compose(config_name="train", overrides=overrides))
    check_resume(cfg, checkpoint)  # no setting reads as changed
