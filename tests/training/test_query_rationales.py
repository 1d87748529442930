"""embedding.rationales=queries: documents embedded as plain text, only queries write (and train) rationales, and
the checkpoint, the encoder, the held-out set and the index all follow it."""
import numpy as np
import torch
from train_helpers import compose_config, read_metrics

from grace.config import role_max_new_tokens, role_samples, trained_roles
from grace.embedding.encoder import GraceEncoder
from grace.objectives.policy_gradient.step import PolicyGradient
from grace.retrieval.build import build_index
from grace.training.trainer import train
from grace.training.validation import validate

QUERIES = ["embedding.rationales=queries"]


def test_documents_get_one_plain_row_and_only_queries_are_trained():
    cfg = compose_config(*QUERIES, "rollout.num_samples=3")
    validate(cfg)
    assert trained_roles(cfg) == ["query"]
    assert [role_samples(cfg, r) for r in ("query", "positive", "negative")] == [3, 1, 1]
    assert [role_max_new_tokens(cfg, r) for r in ("query", "positive", "negative")] == [cfg.rollout.max_new_tokens, 0, 0]


def test_a_step_trains_queries_only_on_plain_documents(tiny, tiny_template):
    from grace.data import Triplet
    from grace.objectives.base import TrainContext

    model, tokenizer = tiny
    cfg = compose_config(*QUERIES, "algorithm=reinforce")  # reinforce would give a k=1 document an advantage if it were trained
    objective = PolicyGradient(TrainContext(cfg, model, tokenizer, tiny_template, torch.device("cpu"), torch.autocast("cpu", enabled=False)))
    examples = [Triplet("What is a cat?", "A cat is a small animal.", "Trains run on rails."), Triplet("Who wrote Hamlet?", "Shakespeare.", "Noon.")]
    sampled = objective.sample(1, examples)
    everyone, rewards = sampled.everyone, sampled.rewards
    documents = everyone.role != 0
    assert bool((everyone.rationale_mask[documents].sum(dim=1) == 0).all())  # no rationale
    assert bool((everyone.rationale_mask[~documents].sum(dim=1) > 0).all())
    assert rewards.trained.tolist() == (~documents).tolist()
    # The documents' embeddings are what the saved encoder computes for them without a rationale.
    encoder = GraceEncoder(model, tokenizer, document=objective.embedding, query=objective.query_embedding)
    texts = [everyone.texts[i] for i in torch.nonzero(documents).flatten().tolist()]
    encoded = encoder.encode(texts, role="document")
    assert np.allclose(encoded, everyone.embeddings[documents].numpy(), atol=1e-5)


def test_the_checkpoint_the_heldout_set_and_the_index_follow_the_setting(tmp_path):
    cfg = compose_config(*QUERIES, "trainer.max_steps=1", "trainer.save_every=1", "trainer.eval_every=1", "trainer.heldout.size=2")
    validate(cfg)
    train(cfg, tmp_path / "run")
    metrics = read_metrics(tmp_path / "run")
    assert "eval/triplet_accuracy" in metrics[0] and metrics[0]["eval/rationale_words_mean"] >= 0
    encoder = GraceEncoder.from_pretrained(tmp_path / "run" / "checkpoints" / "step-1")
    assert encoder.configs["document"].rationale is False and encoder.configs["query"].rationale is True
    assert encoder.configs["query"].decoding.max_new_tokens == role_max_new_tokens(cfg, "query")
    assert encoder.explain(["A cat is a small animal."], role="document") == [""]
    assert encoder.explain(["What is a cat?"], role="query")[0] != ""  # the tiny model never writes EOS: never empty
    index = build_index(encoder, ["A cat is a small animal.", "Trains run on rails."], tmp_path / "index")
    assert index.manifest.document.rationale is False and index.manifest.query.rationale is True
    assert all(document.rationale == "" for document in index.documents)
    found = index.search(encoder, ["What is a cat?"], k=2)  # the query embedded with its rationale
    assert len(found) == 1
