"""Rollouts generated in several batches and merged equal one unsplit rollout, row for row."""
import pytest
import torch

from grace.rollout import Role, RoleSampling, RolloutRequest, expand_requests, rollout

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


def run(tiny, template, batch_size):
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
    )


@pytest.mark.parametrize("batch_size", [1, 4, 7])
def test_a_rollout_split_into_batches_equals_the_unsplit_one_row_for_row(tiny, tiny_template, batch_size):
    whole = run(tiny, tiny_template, batch_size=64)
    split = run(tiny, tiny_template, batch_size=batch_size)
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
