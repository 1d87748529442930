import pytest
import torch

from grace.objectives.policy_gradient.advantages import compute_advantages

REWARDS = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 4.0])
KEY = torch.tensor([0, 0, 0, 1, 1, 2])
ALL = torch.ones(6, dtype=torch.bool)


def test_grpo_subtracts_the_group_mean():
    advantages = compute_advantages(REWARDS, KEY, ALL, estimator="grpo")
    # group 0 mean 2; group 1 all equal -> 0; group 2 has one rollout -> 0.
    assert advantages.tolist() == [-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]


def test_grpo_can_divide_by_the_unbiased_group_std():
    advantages = compute_advantages(REWARDS, KEY, ALL, estimator="grpo", scale_by_std=True, eps=0.0)
    assert torch.allclose(advantages, torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]))  # std of 1,2,3 is 1


def test_rloo_uses_the_mean_of_the_others():
    advantages = compute_advantages(REWARDS, KEY, ALL, estimator="rloo")
    # 1 - mean(2, 3) = -1.5; 2 - mean(1, 3) = 0; 3 - mean(1, 2) = 1.5
    assert torch.allclose(advantages, torch.tensor([-1.5, 0.0, 1.5, 0.0, 0.0, 0.0]))


def test_reinforce_uses_the_batch_mean():
    advantages = compute_advantages(REWARDS, KEY, ALL, estimator="reinforce")
    assert torch.allclose(advantages, REWARDS - REWARDS.mean())


@pytest.mark.parametrize("estimator", ["grpo", "rloo", "reinforce"])
@pytest.mark.parametrize("scale", [False, True])
def test_equal_rewards_give_exactly_zero_never_nan(estimator, scale):
    rewards = torch.full((8,), 0.1)  # 0.1 is not exact in binary: the mean must not leave rounding noise
    advantages = compute_advantages(rewards, torch.tensor([0] * 4 + [1] * 4), torch.ones(8, dtype=torch.bool), estimator=estimator, scale_by_std=scale)
    assert torch.equal(advantages, torch.zeros(8))


def test_untrained_rows_get_zero_and_stay_out_of_the_baseline():
    mask = torch.tensor([True, True, False, True, True, True])
    advantages = compute_advantages(REWARDS, KEY, mask, estimator="grpo")
    assert advantages.tolist() == [-0.5, 0.5, 0.0, 0.0, 0.0, 0.0]


def test_unknown_estimator_is_rejected():
    with pytest.raises(ValueError, match="unknown advantage estimator"):
        compute_advantages(REWARDS, KEY, ALL, estimator="ppo")
