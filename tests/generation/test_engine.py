"""The generation engine (shared prefix, continuous batching, compiled step) equals the plain loop.

Reference: ``grace.generation.reference.generate`` over one batch, itself tested against a full forward pass in
test_generation.py. Tokens must be identical (greedy, and sampled for the same per-row seeds), the
embeddings and log-probs equal within float rounding, whatever the slots, options and batch layout.
"""
import pytest
import torch

import grace.generation.compiled
from grace.generation.engine import generate_rows, supports
from grace.generation.options import GenerationOptions
from grace.generation.reference import RowSampling, generate
from grace.model.loading import TINY_RANDOM, load_policy
from grace.model.pooling import POOLING_METHODS
from grace.model.prompts import PromptBatch, PromptTemplate, render_prompt
from grace.model.system_prompt import GRACE_SYSTEM_PROMPT

TEXTS = [
    "A cat.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Why is the sky blue?",
    "Paris",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen inside the leaves.",
]
# Rows: every text twice (two samples of a text share a prompt pass), mixed temperatures and limits,
# one row without a rationale. No nucleus sampling: on the random tiny model near-tied probabilities
# reorder under the ~1e-7 rounding differences between layouts (see test_rollout.py).
ROW_TEXTS = [t for t in TEXTS for _ in range(2)]
TEMPERATURE = [1.0, 1.0, 0.0, 0.0, 0.7, 0.7, 0.0, 1.0, 1.0, 0.0]
LIMITS = [6, 9, 4, 4, 7, 0, 8, 3, 5, 6]
OPTIONS = [
    GenerationOptions(shared_prefix=True, continuous=False),
    GenerationOptions(shared_prefix=False, continuous=True),
    GenerationOptions(shared_prefix=True, continuous=True),
]


def settings(tokenizer, rows=len(ROW_TEXTS), eos_ids=None, limits=None, temperature=None):
    return RowSampling(
        temperature=torch.tensor((temperature or TEMPERATURE)[:rows]),
        top_p=torch.ones(rows),
        max_new_tokens=torch.tensor((limits or LIMITS)[:rows]),
        seeds=[100 + i for i in range(rows)],
        eos_ids=eos_ids if eos_ids is not None else [tokenizer.eos_token_id],
        pad_id=tokenizer.pad_token_id,
    )


def plain(model, tokenizer, prompts, pooling="after_system", **kwargs):
    batch = PromptBatch.collate(prompts, tokenizer.pad_token_id)
    return generate(model, batch, settings(tokenizer, len(prompts), **kwargs), pooling=pooling)


def engine(model, tokenizer, prompts, slots, options=GenerationOptions(), progress=None, pooling="after_system", **kwargs):
    rows = settings(tokenizer, len(prompts), **kwargs)
    return generate_rows(model, prompts, rows, pooling=pooling, slots=slots, options=options, progress=progress)


def assert_same(reference, other, atol=1e-5):
    """Same rows, tokens and layout; embeddings and log-probs within ``atol``."""
    assert torch.equal(other.sequence_ids, reference.sequence_ids)
    assert torch.equal(other.attention_mask, reference.attention_mask)
    assert torch.equal(other.spans, reference.spans)
    assert torch.equal(other.truncated, reference.truncated)
    assert other.prompt_length == reference.prompt_length
    assert torch.allclose(other.embeddings, reference.embeddings, atol=atol)
    assert torch.allclose(other.logprobs, reference.logprobs, atol=atol)


@pytest.fixture(scope="module")
def prompts(tiny, tiny_template):
    return [render_prompt(tiny[1], text, tiny_template) for text in ROW_TEXTS]


@pytest.mark.parametrize("options", OPTIONS, ids=["prefix", "continuous", "both"])
@pytest.mark.parametrize("slots", [1, 3, 16])
def test_engine_equals_the_plain_loop(tiny, prompts, options, slots):
    model, tokenizer = tiny
    assert_same(plain(model, tokenizer, prompts), engine(model, tokenizer, prompts, slots, options))


@pytest.mark.parametrize("pooling", POOLING_METHODS)
def test_every_pooling_method(tiny, prompts, pooling):
    model, tokenizer = tiny
    if pooling == "rationale":  # a row without a rationale has nothing to pool
        limits = [max(1, n) for n in LIMITS]
        assert_same(plain(model, tokenizer, prompts, pooling=pooling, limits=limits),
                    engine(model, tokenizer, prompts, 3, pooling=pooling, limits=limits))  # fmt: skip
    else:
        assert_same(plain(model, tokenizer, prompts, pooling=pooling), engine(model, tokenizer, prompts, 3, pooling=pooling))


def test_refilled_slots_under_bf16_autocast(tiny, prompts):
    """Under autocast rotary embeddings give float32 keys and the projections bf16 values; a refill writes
    both into the slots' buffers (by row index, which does not cast by itself)."""
    model, tokenizer = tiny
    with torch.autocast("cpu", dtype=torch.bfloat16):
        refilled = engine(model, tokenizer, prompts, 3)
    # bf16 rounding reorders the random model's near-tied tokens, so only the layout is compared: every
    # rationale runs to its limit (the random model never writes EOS), every embedding is a unit vector.
    assert refilled.rationale_mask.sum(dim=1).tolist() == LIMITS
    assert torch.allclose(refilled.embeddings.norm(dim=1), torch.ones(len(prompts)), atol=1e-3)


def test_eos_frees_a_slot_for_the_next_row(tiny, prompts):
    model, tokenizer = tiny
    greedy = dict(temperature=[0.0] * len(prompts), limits=[8] * len(prompts))
    first = plain(model, tokenizer, prompts, **greedy)
    stop = int(first.rationale_ids[2, 1])  # declare row 2's second greedy token an end token
    reference = plain(model, tokenizer, prompts, eos_ids=[stop], **greedy)
    assert reference.rationale_mask[2].sum() <= 2 and not reference.truncated[2]
    assert_same(reference, engine(model, tokenizer, prompts, 2, eos_ids=[stop], **greedy))


def test_rows_without_rationale_only(tiny, prompts):
    model, tokenizer = tiny
    none = dict(limits=[0] * len(prompts))
    reference = plain(model, tokenizer, prompts, **none)
    out = engine(model, tokenizer, prompts, 4, **none)
    assert out.rationale_ids.shape[1] == 0 and not out.truncated.any()
    assert_same(reference, out)


def test_a_sampled_row_does_not_depend_on_its_neighbours(tiny, prompts):
    model, tokenizer = tiny
    together = engine(model, tokenizer, prompts, 3)
    row = 7  # sampled at T=1.0, 3 tokens
    alone = generate_rows(model, [prompts[row]], settings(tokenizer).select([row]), pooling="after_system", slots=3)
    assert alone.rationale_ids[0].tolist() == together.rationale_ids[row][together.rationale_mask[row]].tolist()


def test_settings_must_cover_every_prompt(tiny, prompts):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="10 prompts, 9 rows"):
        generate_rows(model, prompts, settings(tokenizer, 9), pooling="after_system", slots=3)


def test_progress_counts_every_row_once(tiny, prompts):
    model, tokenizer = tiny
    finished = []
    engine(model, tokenizer, prompts, 3, progress=finished.append)
    assert sum(finished) == len(prompts) and len(finished) > 1


def test_a_weight_update_between_calls_is_never_served_a_stale_prefix(tiny_template):
    model, tokenizer = load_policy(TINY_RANDOM)  # an own copy: its weights change here
    prompts = [render_prompt(tokenizer, text, tiny_template) for text in ROW_TEXTS]
    before = engine(model, tokenizer, prompts, 3)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(1.5)  # every token of the shared prefix changes
    after = engine(model, tokenizer, prompts, 3)
    assert not torch.allclose(after.embeddings, before.embeddings, atol=1e-3)
    assert_same(plain(model, tokenizer, prompts), after)


def test_models_with_sliding_window_layers_are_not_driven_by_the_engine(tiny):
    model, _ = tiny
    assert supports(model)
    sliding = model.config.__class__(**{**model.config.to_dict(), "layer_types": ["sliding_attention", "full_attention"], "sliding_window": 4})
    assert not supports(type(model)(sliding))


def test_compiled_step_gives_the_eager_tokens_and_embeddings(tiny, prompts, monkeypatch):
    """Dynamo traces the real step over the static cache; the "eager" backend skips Inductor's code
    generation (minutes on two cores), which the slow test below runs."""
    monkeypatch.setattr(grace.generation.compiled, "BACKEND", "eager")
    model, tokenizer = tiny
    options = GenerationOptions(compile=True)
    first = engine(model, tokenizer, prompts, 3, options)
    assert_same(plain(model, tokenizer, prompts), first)
    # A second call with other prompts reuses the static cache and the compiled step.
    short = prompts[:4]
    assert_same(plain(model, tokenizer, short), engine(model, tokenizer, short, 3, options))


@pytest.mark.slow
def test_inductor_compiled_step_gives_the_eager_tokens_and_embeddings(tiny, prompts):
    model, tokenizer = tiny
    assert_same(plain(model, tokenizer, prompts), engine(model, tokenizer, prompts, 4, GenerationOptions(compile=True)))


@pytest.mark.slow
def test_smollm2_engine_equals_the_plain_loop(smollm2):
    """Greedy rationales identical and embeddings within 1e-5 on the packaged model, with refills."""
    model, tokenizer = smollm2
    template = PromptTemplate.build(tokenizer, GRACE_SYSTEM_PROMPT)
    prompts = [render_prompt(tokenizer, text, template) for text in TEXTS + ["Cats are small domesticated carnivores."]]
    greedy = dict(temperature=[0.0] * 6, limits=[16, 10, 16, 0, 12, 16])
    reference = plain(model, tokenizer, prompts, **greedy)
    assert_same(reference, engine(model, tokenizer, prompts, 2, **greedy), atol=1e-5)
