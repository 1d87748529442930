"""Rollouts generated in several batches and merged equal one unsplit rollout, row for row."""
import pytest
import torch

from grace.data.roles import Role
from grace.generation.options import GenerationOptions
from grace.generation.rollout import RoleSampling, RolloutRequest, expand_requests, rollout

TEXTS = [
    ("What is a cat?", "A small furry animal that purrs.", "The stock index fell."),
    ("Why is the sky blue?", "Sunlight scatters off the air, blue light the most.", "Pizza is round."),
    ("Who wrote Hamlet?", "Shakespeare.", "Trains run on rails across the whole country."),
]
# No nucleus (top_p < 1) here: on the random tiny model the next-token distribution is nearly flat over
# 49k tokens, and the float rounding that differs between batch layouts (~1e-7) reorders near-tied
# probabilities in the nucleus sort, so a split run can pick another token. Plain sampling by inverse CDF
# over the vocabulary order is stable to such rounding.
SAMPLING = {
    Role.QUERY: RoleSampling(num_samples=2, temperature=1.0, max_new_tokens=5),
    Role.POSITIVE: RoleSampling(num_samples=3, temperature=0.7, max_new_tokens=7),
    Role.NEGATIVE: RoleSampling(num_samples=1, temperature=0.0, max_new_tokens=4),
}


def requests() -> list[RolloutRequest]:
    return [RolloutRequest(text, group, role) for group, texts in enumerate(TEXTS) for role, text in zip(Role, texts)]


PLAIN = GenerationOptions(shared_prefix=False, continuous=False)


def run(tiny, template, batch_size, options=GenerationOptions()):
    model, tokenizer = tiny
    rows = len(expand_requests(requests(), SAMPLING))
    return rollout(
        model,
        tokenizer,
        template,
        requests(),
        SAMPLING,
        pooling="after_system",
        max_prompt_tokens=256,
        seeds=[1000 + i for i in range(rows)],
        batch_size=batch_size,
        options=options,
    )


@pytest.mark.parametrize("options", [PLAIN, GenerationOptions()], ids=["plain", "engine"])
@pytest.mark.parametrize("batch_size", [1, 4, 7])
def test_a_rollout_split_into_batches_equals_the_unsplit_one_row_for_row(tiny, tiny_template, batch_size, options):
    whole = run(tiny, tiny_template, batch_size=64, options=PLAIN)
    split = run(tiny, tiny_template, batch_size=batch_size, options=options)
    expected = [(r.group, int(r.role), r.text) for r, _ in expand_requests(requests(), SAMPLING)]
    assert len(expected) == 18 and len(split) == 18
    for batch in (whole, split):
        assert list(zip(batch.group.tolist(), batch.role.tolist(), batch.texts)) == expected
    assert torch.allclose(split.embeddings, whole.embeddings, atol=1e-5)
    # Same rationales in the same rows (per-row seeds), whatever the padding of their batch.
    for i in range(18):
        assert torch.equal(split.rationale_ids[i][split.rationale_mask[i]], whole.rationale_ids[i][whole.rationale_mask[i]]), i
        length = int(whole.rationale_lengths[i])
        assert torch.allclose(split.logprobs[i, :length], whole.logprobs[i, :length], atol=1e-5), i
    assert torch.equal(split.truncated, whole.truncated) and torch.equal(split.temperature, whole.temperature)
    assert torch.equal(split.input_truncated, whole.input_truncated)


def test_the_engine_lays_out_rows_as_the_plain_loop(tiny, tiny_template):
    """The trainer's loss reads the layout (left-padded prompt, right-padded rationale): it must not move."""
    plain, engine = run(tiny, tiny_template, 4, PLAIN), run(tiny, tiny_template, 4)
    for name in ("sequence_ids", "attention_mask", "spans", "group", "role", "truncated", "input_truncated", "temperature"):
        assert torch.equal(getattr(engine, name), getattr(plain, name)), name
    assert engine.prompt_length == plain.prompt_length and engine.texts == plain.texts
    assert torch.allclose(engine.logprobs, plain.logprobs, atol=1e-5)
