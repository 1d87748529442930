"""The single-pass capture during generation equals a plain full forward over the finished sequences."""
import pytest
import torch

from grace.generation.reference import RowSampling, generate
from grace.model.forward import decoder_forward, lm_logits, position_ids
from grace.model.pooling import POOLING_METHODS, pool_hidden
from grace.model.prompts import PromptBatch, PromptTemplate, Span, render_prompt
from grace.model.system_prompt import GRACE_SYSTEM_PROMPT

TEXTS = ["A cat.", "The quick brown fox jumps over the lazy dog near the river bank.", "Why is the sky blue?"]


def run(model, tokenizer, template, *, pooling="after_system", eos_ids=None, limits=(6, 9, 4), temperature=(1.0, 0.7, 0.0)):
    prompts = PromptBatch.collate([render_prompt(tokenizer, t, template) for t in TEXTS], tokenizer.pad_token_id)
    rows = RowSampling(
        temperature=torch.tensor(temperature),
        top_p=torch.tensor([0.9, 1.0, 1.0]),
        max_new_tokens=torch.tensor(limits),
        seeds=[11, 12, 13],
        eos_ids=eos_ids if eos_ids is not None else [tokenizer.eos_token_id],
        pad_id=tokenizer.pad_token_id,
    )
    return generate(model, prompts, rows, pooling=pooling, keep_hidden=True)


def relayout(generation, side, pad_id):
    """The finished sequences re-packed with all padding on one side."""
    real = generation.attention_mask.bool()
    width = int(real.sum(1).max())
    ids = torch.full((len(real), width), pad_id)
    mask = torch.zeros_like(ids)
    spans = torch.full_like(ids, int(Span.PAD))
    for row in range(len(real)):
        n = int(real[row].sum())
        cols = slice(width - n, width) if side == "left" else slice(0, n)
        ids[row, cols], mask[row, cols], spans[row, cols] = (
            generation.sequence_ids[row][real[row]],
            1,
            generation.spans[row][real[row]],
        )
    return ids, mask, spans


def check_equivalence(model, tokenizer, generation, atol=1e-4):
    real = generation.attention_mask.bool()
    for side in ("left", "right"):
        ids, mask, spans = relayout(generation, side, tokenizer.pad_token_id)
        with torch.no_grad():
            hidden, _ = decoder_forward(model, ids, mask, position_ids(mask))
        # Every real token's state, EOS and the last token of truncated rationales included.
        assert torch.allclose(hidden[mask.bool()], generation.hidden[real], atol=atol), side
        assert torch.allclose(pool_hidden(hidden, spans, "after_system"), generation.embeddings, atol=atol), side


def test_captured_states_match_a_full_forward_on_both_padding_sides(tiny, tiny_template):
    model, tokenizer = tiny
    check_equivalence(model, tokenizer, run(model, tokenizer, tiny_template))


@pytest.mark.parametrize("pooling", POOLING_METHODS)
def test_every_pooling_method_matches_the_reference(tiny, tiny_template, pooling):
    model, tokenizer = tiny
    generation = run(model, tokenizer, tiny_template, pooling=pooling)
    ids, mask, spans = relayout(generation, "right", tokenizer.pad_token_id)
    with torch.no_grad():
        hidden, _ = decoder_forward(model, ids, mask, position_ids(mask))
    assert torch.allclose(pool_hidden(hidden, spans, pooling), generation.embeddings, atol=1e-5)


def test_eos_stops_a_row_and_its_state_is_pooled(tiny, tiny_template):
    model, tokenizer = tiny
    greedy = run(model, tokenizer, tiny_template, temperature=(0.0, 0.0, 0.0), limits=(6, 6, 6))
    stop_token = int(greedy.rationale_ids[0, 2])  # declare the 3rd greedy token of row 0 an end token
    generation = run(model, tokenizer, tiny_template, temperature=(0.0, 0.0, 0.0), limits=(6, 6, 6), eos_ids=[stop_token])
    row = generation.rationale_ids[0][generation.rationale_mask[0]].tolist()
    assert row[-1] == stop_token and len(row) <= 3
    assert not generation.truncated[0]
    check_equivalence(model, tokenizer, generation)


def test_truncation_flags_rows_that_hit_their_limit(tiny, tiny_template):
    model, tokenizer = tiny
    generation = run(model, tokenizer, tiny_template, eos_ids=[-1])  # no token ends a row
    assert generation.truncated.tolist() == [True, True, True]
    assert generation.rationale_mask.sum(1).tolist() == [6, 9, 4]


def test_rollout_log_probs_equal_a_full_forward(tiny, tiny_template):
    model, tokenizer = tiny
    generation = run(model, tokenizer, tiny_template)
    with torch.no_grad():
        hidden, _ = decoder_forward(model, generation.sequence_ids, generation.attention_mask, position_ids(generation.attention_mask))
    p = generation.prompt_length
    logits = lm_logits(model, hidden[:, p - 1 : -1]).float()
    temperature = torch.tensor([1.0, 0.7, 1.0]).view(-1, 1, 1)  # greedy rows use T = 1
    expected = torch.log_softmax(logits / temperature, -1).gather(-1, generation.rationale_ids.unsqueeze(-1)).squeeze(-1)
    mask = generation.rationale_mask
    assert torch.allclose(generation.logprobs[mask], expected[mask], atol=1e-4)
    assert (generation.logprobs[~mask] == 0).all()


def test_seeded_generation_is_reproducible(tiny, tiny_template):
    model, tokenizer = tiny
    a = run(model, tokenizer, tiny_template)
    b = run(model, tokenizer, tiny_template)
    assert torch.equal(a.sequence_ids, b.sequence_ids)


def test_no_rationale_pools_the_prompt_only(tiny, tiny_template):
    model, tokenizer = tiny
    generation = run(model, tokenizer, tiny_template, limits=(0, 0, 0))
    assert generation.rationale_ids.shape[1] == 0 and not generation.truncated.any()
    check_equivalence(model, tokenizer, generation)


@pytest.mark.slow
def test_smollm2_capture_matches_a_full_forward(smollm2):
    model, tokenizer = smollm2
    template = PromptTemplate.build(tokenizer, GRACE_SYSTEM_PROMPT)
    greedy = run(model, tokenizer, template, temperature=(0.0, 0.0, 0.0), limits=(8, 8, 8))
    stop_token = int(greedy.rationale_ids[1, 3])
    generation = run(model, tokenizer, template, limits=(8, 12, 5), eos_ids=[tokenizer.eos_token_id, stop_token])
    check_equivalence(model, tokenizer, generation)


def test_duplicate_prompts_share_one_prompt_pass_with_identical_results(tiny, tiny_template):
    model, tokenizer = tiny
    texts = [TEXTS[1], TEXTS[0], TEXTS[1], TEXTS[1], TEXTS[0]]  # k samples of two texts, interleaved
    prompts = PromptBatch.collate([render_prompt(tokenizer, t, tiny_template) for t in texts], tokenizer.pad_token_id)

    def sample(share):
        rows = RowSampling(
            temperature=torch.ones(5), top_p=torch.ones(5), max_new_tokens=torch.full((5,), 6),
            seeds=[1, 2, 3, 4, 5], eos_ids=[tokenizer.eos_token_id], pad_id=tokenizer.pad_token_id,
        )  # fmt: skip
        return generate(model, prompts, rows, pooling="after_system", keep_hidden=True, share_prompts=share)

    shared, separate = sample(True), sample(False)
    assert torch.equal(shared.sequence_ids, separate.sequence_ids)
    assert torch.allclose(shared.logprobs, separate.logprobs, atol=1e-5)
    assert torch.allclose(shared.embeddings, separate.embeddings, atol=1e-5)
    check_equivalence(model, tokenizer, shared)


def test_row_sampling_selects_the_rows_of_a_sub_batch_in_their_order():
    rows = RowSampling(
        temperature=torch.tensor([1.0, 0.5, 0.0, 0.7]),
        top_p=torch.tensor([0.9, 1.0, 0.8, 0.95]),
        max_new_tokens=torch.tensor([6, 0, 4, 9]),
        seeds=[10, 11, 12, 13],
        eos_ids=[2, 7],
        pad_id=0,
    )
    sub = rows.select([3, 1])
    assert torch.equal(sub.temperature, torch.tensor([0.7, 0.5]))
    assert torch.equal(sub.top_p, torch.tensor([0.95, 1.0]))
    assert sub.max_new_tokens.tolist() == [9, 0]
    assert sub.seeds == [13, 11] and len(sub) == 2
    assert sub.eos_ids == [2, 7] and sub.pad_id == 0
    assert len(rows.select([])) == 0


def test_row_sampling_rejects_per_row_fields_of_different_lengths():
    fields = dict(temperature=torch.ones(3), top_p=torch.ones(3), max_new_tokens=torch.full((3,), 4), seeds=[1, 2, 3])
    with pytest.raises(ValueError, match=r"top_p 2.*seeds 3"):
        RowSampling(**{**fields, "top_p": torch.ones(2)}, eos_ids=[2], pad_id=0)
    with pytest.raises(ValueError, match=r"seeds 4"):
        RowSampling(**{**fields, "seeds": [1, 2, 3, 4]}, eos_ids=[2], pad_id=0)
    with pytest.raises(ValueError, match=r"max_new_tokens must be one value per row"):
        RowSampling(**{**fields, "max_new_tokens": torch.tensor(4)}, eos_ids=[2], pad_id=0)


def test_generate_needs_settings_for_every_prompt(tiny, tiny_template):
    model, tokenizer = tiny
    prompts = PromptBatch.collate([render_prompt(tokenizer, t, tiny_template) for t in TEXTS], tokenizer.pad_token_id)
    rows = RowSampling(torch.ones(2), torch.ones(2), torch.full((2,), 3), [1, 2], [tokenizer.eos_token_id], tokenizer.pad_token_id)
    with pytest.raises(ValueError, match="3 prompts, 2 rows"):
        generate(model, prompts, rows, pooling="after_system")
