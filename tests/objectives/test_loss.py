import math

import pytest
import torch

from grace.objectives.policy_gradient.logprobs import policy_logprobs
from grace.objectives.policy_gradient.ppo_loss import ppo_loss

MASK = torch.tensor([[True, True, False], [True, False, False]])
OLD = torch.zeros(2, 3)
ADV = torch.tensor([1.0, -2.0])


def test_on_policy_loss_is_minus_the_token_weighted_advantage():
    out = ppo_loss(OLD.clone(), OLD, ADV, MASK)
    assert torch.isclose(out.loss, torch.tensor(-(1 + 1 - 2) / 3))
    assert out.clip_fraction == 0 and out.ratio_max == 1


def test_sequence_mean_weighs_each_rationale_once():
    out = ppo_loss(OLD.clone(), OLD, ADV, MASK, aggregation="sequence-mean")
    assert torch.isclose(out.loss, torch.tensor(-(1 - 2) / 2))


def test_clipping_uses_separate_low_and_high_bounds():
    # Ratio e^1 with positive advantage is clipped at 1 + clip_high; ratio e^-1 with negative advantage
    # is clipped at 1 - clip_low (the pessimistic side of each).
    logprobs = torch.tensor([[1.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    out = ppo_loss(logprobs, OLD, ADV, MASK, clip_low=0.1, clip_high=0.3)
    expected = (-(1.3) * 1 * 2 + 2 * 0.9) / 3
    assert torch.isclose(out.loss, torch.tensor(expected))
    assert torch.isclose(out.clip_fraction, torch.tensor(1.0))


def test_gradient_flows_only_through_unclipped_tokens():
    logprobs = torch.tensor([[0.05, 1.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    ppo_loss(logprobs, OLD, ADV, MASK).loss.backward()
    assert logprobs.grad[0, 0] != 0 and logprobs.grad[0, 1] == 0  # ratio e^1 > 1.2: clipped, no gradient
    assert logprobs.grad[0, 2] == 0  # padding


def test_kl_estimators_match_their_formulas():
    logprobs = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    ref = torch.tensor([[0.5, -0.5, 9.0], [1.0, 9.0, 9.0]])
    k1 = ppo_loss(logprobs, OLD, ADV, MASK, ref_logprobs=ref, kl_coef=0.1, kl_estimator="k1")
    k3 = ppo_loss(logprobs, OLD, ADV, MASK, ref_logprobs=ref, kl_coef=0.1, kl_estimator="k3")
    assert torch.isclose(k1.kl, torch.tensor(-(0.5 - 0.5 + 1.0) / 3))
    k3_value = sum(math.exp(d) - d - 1 for d in (0.5, -0.5, 1.0)) / 3
    assert torch.isclose(k3.kl, torch.tensor(k3_value))
    assert torch.isclose(k3.loss, k3.policy_loss + 0.1 * k3.kl)


def test_kl_weight_without_reference_is_an_error():
    with pytest.raises(ValueError, match="needs reference"):
        ppo_loss(OLD, OLD, ADV, MASK, kl_coef=0.1)


def test_entropy_bonus_lowers_the_loss():
    entropy = torch.ones(2, 3)
    out = ppo_loss(OLD.clone(), OLD, ADV, MASK, entropy=entropy, entropy_coef=0.5)
    assert torch.isclose(out.loss, out.policy_loss - 0.5)


def test_micro_batches_with_a_global_normaliser_add_up_to_the_full_batch():
    generator = torch.Generator().manual_seed(0)
    logprobs, old = torch.randn(4, 5, generator=generator), torch.randn(4, 5, generator=generator)
    mask = torch.rand(4, 5, generator=generator) > 0.3
    advantages = torch.randn(4, generator=generator)
    for aggregation, normaliser in (("token-mean", float(mask.sum())), ("sequence-mean", 4.0), ("constant", 4 * 5.0)):
        full = ppo_loss(logprobs, old, advantages, mask, aggregation=aggregation).loss
        parts = sum(
            ppo_loss(logprobs[s], old[s], advantages[s], mask[s], aggregation=aggregation, normaliser=normaliser).loss
            for s in (slice(0, 2), slice(2, 4))
        )
        assert torch.isclose(full, parts, atol=1e-6), aggregation


def test_unknown_aggregation_is_rejected():
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        ppo_loss(OLD, OLD, ADV, MASK, aggregation="sum")


def test_policy_logprobs_and_entropies_equal_a_plain_full_log_softmax(tiny, tiny_template):
    from grace.data.roles import Role
    from grace.generation.rollout import RoleSampling, RolloutRequest, rollout

    model, tokenizer = tiny
    requests = [RolloutRequest("A short text.", 0, Role.QUERY), RolloutRequest("A much longer text about cats and dogs.", 1, Role.POSITIVE)]
    sampling = {Role.QUERY: RoleSampling(2, 0.0, 1.0, 5), Role.POSITIVE: RoleSampling(2, 0.7, 1.0, 7)}  # greedy and T=0.7
    batch = rollout(model, tokenizer, tiny_template, requests, sampling, pooling="after_system", max_prompt_tokens=None, seeds=[1, 2, 3, 4])

    logged = policy_logprobs(model, batch, entropy="logged")
    trained = policy_logprobs(model, batch, entropy="trained")
    assert policy_logprobs(model, batch).entropy is None

    # Reference: the whole sequence through the model, a full log-softmax at the sampling temperature.
    mask = batch.attention_mask
    logits = model(input_ids=batch.sequence_ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
    t = torch.where(batch.temperature > 0, batch.temperature, 1.0).view(-1, 1, 1)
    log_probs = torch.log_softmax(logits[:, batch.prompt_length - 1 : -1].float() / t, dim=-1)
    real = batch.rationale_mask
    expected = torch.where(real, log_probs.gather(-1, batch.rationale_ids.unsqueeze(-1)).squeeze(-1), 0.0)
    expected_entropy = torch.where(real, -(log_probs.exp() * log_probs).sum(-1), 0.0)

    assert torch.allclose(logged.logprobs, expected, atol=1e-5)
    assert torch.allclose(logged.logprobs, batch.logprobs, atol=1e-4)  # on-policy: what the rollout sampled with
    assert torch.allclose(logged.entropy, expected_entropy, atol=1e-4)
    assert torch.allclose(trained.entropy, expected_entropy, atol=1e-4)
    assert trained.entropy.requires_grad and not logged.entropy.requires_grad


def test_unknown_entropy_mode_is_rejected(tiny):
    with pytest.raises(ValueError, match="unknown entropy mode"):
        policy_logprobs(tiny[0], None, entropy="yes")
