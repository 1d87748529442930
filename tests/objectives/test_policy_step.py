"""One full GRACE policy step: rollout -> rewards -> advantages -> loss -> backward -> optimizer step."""
import pytest
import torch

from grace.data.roles import Role
from grace.generation.rollout import RoleSampling, RolloutRequest, expand_requests, rollout
from grace.model.loading import TINY_RANDOM, load_policy
from grace.model.prompts import PromptTemplate
from grace.model.system_prompt import GRACE_SYSTEM_PROMPT
from grace.objectives.policy_gradient.advantages import compute_advantages
from grace.objectives.policy_gradient.logprobs import policy_logprobs
from grace.objectives.policy_gradient.ppo_loss import ppo_loss
from grace.rewards import compute_rewards

TRIPLETS = [
    ("What is the capital of France?", "Paris is the capital of France.", "Bananas are rich in potassium."),
    ("Who wrote Hamlet?", "Hamlet was written by William Shakespeare.", "The train leaves at noon."),
]


def policy_step(model, tokenizer, estimator, max_new_tokens):
    template = PromptTemplate.build(tokenizer, GRACE_SYSTEM_PROMPT)
    requests = [
        RolloutRequest(text, group, role)
        for group, triplet in enumerate(TRIPLETS)
        for text, role in zip(triplet, (Role.QUERY, Role.POSITIVE, Role.NEGATIVE))
    ]
    sampling = {
        Role.QUERY: RoleSampling(2, 0.5, 1.0, max_new_tokens),
        Role.POSITIVE: RoleSampling(3, 1.0, 1.0, max_new_tokens),
        Role.NEGATIVE: RoleSampling(2, 0.5, 1.0, max_new_tokens),
    }
    seeds = list(range(len(expand_requests(requests, sampling))))
    batch = rollout(model, tokenizer, template, requests, sampling, pooling="after_system", max_prompt_tokens=256, seeds=seeds)
    rewards = compute_rewards(batch.embeddings, batch.group, batch.role, batch.truncated, variant="contrastive")
    advantages = compute_advantages(rewards.total, batch.group * 3 + batch.role, rewards.trained, estimator=estimator)
    assert advantages.abs().sum() > 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    current = policy_logprobs(model, batch, entropy="trained")
    out = ppo_loss(current.logprobs, batch.logprobs, advantages, batch.rationale_mask, entropy=current.entropy)
    out.loss.backward()
    optimizer.step()
    assert torch.isfinite(out.loss)
    assert torch.allclose(out.ratio_max, torch.tensor(1.0), atol=1e-3)  # on-policy: rollout log-probs are current
    changed = sum(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert changed == len(before)


# The contrastive reward: a random tiny model never writes EOS, and the paper's reward gives every
# truncated rollout the same -1 (no advantage), while ours still ranks them by their embeddings.
@pytest.mark.parametrize("estimator", ["grpo", "rloo", "reinforce"])
def test_one_policy_step_on_the_tiny_model(estimator):
    model, tokenizer = load_policy(TINY_RANDOM)
    policy_step(model, tokenizer, estimator, max_new_tokens=6)


@pytest.mark.slow
def test_one_policy_step_on_smollm2():
    from grace.model.sources import PACKAGED_SMOLLM2

    model, tokenizer = load_policy(PACKAGED_SMOLLM2)  # own copy: the step changes the weights
    policy_step(model, tokenizer, "grpo", max_new_tokens=12)
