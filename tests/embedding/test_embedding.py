import pytest
import torch

from grace.embedding.pipeline import Decoding, EmbeddingConfig, embed
from grace.generation.options import GenerationOptions
from grace.model.forward import decoder_forward, position_ids
from grace.model.pooling import pool_hidden
from grace.model.prompts import PromptBatch, render_prompt

TEXTS = ["A short one.", "Cats are small domesticated carnivores.", "What time is it?"]


def test_greedy_embeddings_are_deterministic_and_normalised(tiny):
    config = EmbeddingConfig(decoding=Decoding(max_new_tokens=5))
    a = embed(*tiny, TEXTS, config)
    b = embed(*tiny, TEXTS, config, batch_size=1)  # batch composition must not matter
    assert torch.allclose(a.embeddings, b.embeddings, atol=1e-5)
    assert a.rationales == b.rationales and all(a.rationales)
    assert torch.allclose(a.embeddings.norm(dim=1), torch.ones(3))
    assert a.embeddings.shape == (3, tiny[0].config.hidden_size)


def test_seeded_sampling_does_not_depend_on_the_batch(tiny):
    config = EmbeddingConfig(decoding=Decoding(temperature=1.0, seed=7, max_new_tokens=5))
    together = embed(*tiny, TEXTS, config)
    alone = embed(*tiny, TEXTS[1:2], config)
    assert together.rationales[1] == alone.rationales[0]
    other_seed = embed(*tiny, TEXTS, EmbeddingConfig(decoding=Decoding(temperature=1.0, seed=8, max_new_tokens=5)))
    assert other_seed.rationales != together.rationales


def test_duplicates_are_computed_once_and_returned_in_order(tiny):
    out = embed(*tiny, [TEXTS[0], TEXTS[1], TEXTS[0]], EmbeddingConfig(decoding=Decoding(max_new_tokens=3)))
    assert torch.equal(out.embeddings[0], out.embeddings[2])
    assert out.rationales[0] == out.rationales[2]


def test_without_rationale_it_pools_the_prompt_of_a_plain_forward(tiny, tiny_template):
    model, tokenizer = tiny
    out = embed(model, tokenizer, TEXTS, EmbeddingConfig(rationale=False))
    assert out.rationales == ["", "", ""]
    prompts = PromptBatch.collate([render_prompt(tokenizer, t, tiny_template, 1024) for t in TEXTS], tokenizer.pad_token_id)
    with torch.no_grad():
        hidden, _ = decoder_forward(model, prompts.input_ids, prompts.attention_mask, position_ids(prompts.attention_mask))
    assert torch.allclose(out.embeddings, pool_hidden(hidden, prompts.spans, "after_system"), atol=1e-5)


def test_several_samples_are_averaged(tiny):
    config = EmbeddingConfig(decoding=Decoding(temperature=1.0, num_samples=3, max_new_tokens=4))
    out = embed(*tiny, TEXTS[:2], config)
    assert len(out.sample_rationales) == 2 and len(out.sample_rationales[0]) == 3
    assert torch.allclose(out.embeddings.norm(dim=1), torch.ones(2))


PLAIN = GenerationOptions(shared_prefix=False, continuous=False)


@pytest.mark.parametrize(
    "config",
    [
        EmbeddingConfig(rationale=False),
        EmbeddingConfig(decoding=Decoding(max_new_tokens=6)),
        EmbeddingConfig(decoding=Decoding(temperature=1.0, seed=3, num_samples=3, max_new_tokens=5)),
    ],
    ids=["no-rationale", "greedy", "sampled-k3"],
)
def test_the_engine_embeds_as_the_plain_loop(tiny, config):
    texts = TEXTS + ["Paris", "A longer text about the way rivers carve valleys over millions of years."]
    reference = embed(*tiny, texts, config, batch_size=4, options=PLAIN)
    for batch_size in (2, 16):
        out = embed(*tiny, texts, config, batch_size=batch_size)
        assert torch.allclose(out.embeddings, reference.embeddings, atol=1e-5)
        assert out.rationales == reference.rationales and out.sample_rationales == reference.sample_rationales
        assert torch.equal(out.truncated, reference.truncated)


def test_progress_counts_texts_not_rollout_rows(tiny):
    done = []
    config = EmbeddingConfig(decoding=Decoding(temperature=1.0, num_samples=3, max_new_tokens=3))
    embed(*tiny, TEXTS, config, batch_size=4, progress=done.append)
    assert sum(done) == len(TEXTS)


def test_empty_text_names_its_index(tiny):
    with pytest.raises(ValueError, match="text 1 is empty"):
        embed(*tiny, ["fine", "  "])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Decoding(num_samples=2), "needs temperature > 0"),
        (lambda: Decoding(temperature=-1), "temperature must be >= 0"),
        (lambda: EmbeddingConfig(pooling="max"), "unknown pooling"),
        (lambda: EmbeddingConfig(pooling="rationale", rationale=False), "needs rationale=True"),
    ],
)
def test_impossible_settings_are_rejected(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_config_round_trips_through_a_dict():
    config = EmbeddingConfig(pooling="input", decoding=Decoding(temperature=0.5, seed=3))
    assert EmbeddingConfig.from_dict(config.to_dict()) == config
