"""The 2026 policy options: GDPO per-component advantages, Dr. GRPO's constant aggregation, the rollout/trainer
mismatch (measured, corrected by truncated importance sampling), their start-up checks. Hand-computed tensors
first, then the tiny model."""
import math

import pytest
import torch
from train_helpers import compose_config, read_metrics

from grace.config import ConfigError
from grace.data.roles import Role
from grace.distributed.parallel import Parallel
from grace.generation.rollout import RoleSampling, RolloutRequest, expand_requests, rollout
from grace.objectives.policy_gradient.advantages import compute_advantages, per_component_advantages
from grace.objectives.policy_gradient.logprobs import policy_logprobs
from grace.objectives.policy_gradient.ppo_loss import ppo_loss
from grace.objectives.policy_gradient.ppo_update import MiniBatch, StepTotals, accumulate_gradients
from grace.objectives.policy_gradient.rollout_correction import (
    Correction,
    correction_level,
    mismatch_sums,
    truncated_importance_weights,
)
from grace.training.trainer import train
from grace.training.validation import validate

# Two groups of three rollouts.
KEY = torch.tensor([0, 0, 0, 1, 1, 1])
ALL = torch.ones(6, dtype=torch.bool)


# -- GDPO: per-component advantages -------------------------------------------------------------------------


def test_a_component_constant_in_its_group_contributes_exactly_zero():
    # "negative" is the same within each group (the paper's shared negative): only "positive" moves the advantage.
    positive = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 3.0])
    negative = torch.tensor([5.0, 5.0, 5.0, -7.0, -7.0, -7.0])
    total, parts = per_component_advantages({"positive": positive, "negative": negative}, {"positive": 1.0, "negative": 1.0}, KEY, ALL)
    assert torch.equal(parts["negative"], torch.zeros(6))
    # Group 0: mean 2, unbiased std 1 -> (-1, 0, 1). Group 1: mean 1, std sqrt(3) -> (-1, -1, 2) / sqrt(3).
    s3 = math.sqrt(3.0)
    expected = torch.tensor([-1.0, 0.0, 1.0, -1 / s3, -1 / s3, 2 / s3])
    assert torch.allclose(total, expected, atol=1e-5)


def test_a_high_variance_component_no_longer_swamps_a_low_variance_one():
    # big spreads by 100 and ranks the rollouts 1 < 2 < 3; small spreads by 0.01 and ranks them the other way.
    big = torch.tensor([100.0, 200.0, 300.0])
    small = torch.tensor([0.03, 0.02, 0.01])
    key, mask = torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.bool)
    summed = compute_advantages(big + small, key, mask)  # GRPO on the sum: the small component is invisible
    assert torch.allclose(summed, torch.tensor([-100.0, 0.0, 100.0]), atol=0.02)
    total, parts = per_component_advantages({"big": big, "small": small}, {"big": 1.0, "small": 1.0}, key, mask)
    # Each standardised: big -> (-1, 0, 1), small -> (1, 0, -1): equal say, they cancel.
    assert torch.allclose(parts["big"], torch.tensor([-1.0, 0.0, 1.0]), atol=1e-4)
    assert torch.allclose(parts["small"], torch.tensor([1.0, 0.0, -1.0]), atol=1e-3)
    assert torch.allclose(total, torch.zeros(3), atol=1e-3)
    # A weight sets a component's share in units of its own spread; a weight of 0 (a schedule's start) removes it.
    total, _ = per_component_advantages({"big": big, "small": small}, {"big": 0.5, "small": 0.0}, key, mask)
    assert torch.allclose(total, torch.tensor([-0.5, 0.0, 0.5]), atol=1e-4)


def test_per_component_rloo_and_reinforce_divide_their_baseline_by_the_spread():
    x = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 3.0])
    _, rloo = per_component_advantages({"x": x}, {"x": 1.0}, KEY, ALL, estimator="rloo")
    # RLOO residual r_i - mean_{j!=i}: group 0 (-1.5, 0, 1.5) / std 1; group 1 (-1.5, -1.5, 3) / sqrt(3).
    s3 = math.sqrt(3.0)
    assert torch.allclose(rloo["x"], torch.tensor([-1.5, 0.0, 1.5, -1.5 / s3, -1.5 / s3, 3 / s3]), atol=1e-5)
    _, reinforce = per_component_advantages({"x": x}, {"x": 1.0}, KEY, ALL, estimator="reinforce")
    centred = x - x.mean()
    assert torch.allclose(reinforce["x"], centred / centred.pow(2).sum().div(5).sqrt(), atol=1e-5)


def test_per_component_rows_outside_the_mask_get_zero_and_enter_no_statistic():
    x = torch.tensor([1.0, 2.0, 3.0, 100.0, 0.0, 0.0])
    mask = torch.tensor([True, True, True, False, False, False])
    total, _ = per_component_advantages({"x": x}, {"x": 1.0}, KEY, mask)
    assert torch.allclose(total, torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]), atol=1e-5)


# -- Dr. GRPO: the constant normaliser -----------------------------------------------------------------------

MASK = torch.tensor([[True, True, False], [True, False, False]])
OLD = torch.zeros(2, 3)
ADV = torch.tensor([1.0, -2.0])


def test_constant_aggregation_divides_the_token_sum_by_rows_times_max_length():
    out = ppo_loss(OLD.clone(), OLD, ADV, MASK, aggregation="constant")
    assert torch.isclose(out.loss, torch.tensor(-(1 + 1 - 2) / (2 * 3)))  # default: B x T
    out = ppo_loss(OLD.clone(), OLD, ADV, MASK, aggregation="constant", normaliser=2 * 8.0)  # 2 rows x max 8 tokens
    assert torch.isclose(out.loss, torch.tensor(0.0 / 16))
    # Unlike sequence-mean, a token of a long rationale weighs as much as one of a short rationale.
    adv = torch.tensor([1.0, 1.0])
    constant = ppo_loss(OLD.clone(), OLD, adv, MASK, aggregation="constant", normaliser=6.0)
    assert torch.isclose(constant.loss, torch.tensor(-3 / 6))


# -- Rollout/trainer mismatch ----------------------------------------------------------------------------------


def test_mismatch_sums_and_truncated_weights_by_hand():
    rollout_lp = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.5, -0.5]])
    trainer_lp = torch.tensor([[-1.0, -1.0, 0.0], [-1.5, -0.5, -0.4]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    sums = mismatch_sums(trainer_lp, rollout_lp, mask)
    deltas = [0.0, 1.0, -1.0, 0.0, 0.1]
    assert sums.tokens == 5
    assert sums.abs_diff == pytest.approx(sum(abs(d) for d in deltas), abs=1e-6)
    assert sums.kl == pytest.approx(sum(math.exp(d) - d - 1 for d in deltas), abs=1e-6)
    assert sums.ratio_max == pytest.approx(math.e, rel=1e-6)
    token = truncated_importance_weights(trainer_lp, rollout_lp, mask, cap=2.0)
    expected = torch.tensor([[1.0, 2.0, 1.0], [math.exp(-1), 1.0, math.exp(0.1)]])  # e^1 truncated at C = 2
    assert torch.allclose(token, expected, atol=1e-6)
    sequence = truncated_importance_weights(trainer_lp, rollout_lp, mask, cap=2.0, level="sequence")
    row1 = math.exp(-1 + 0 + 0.1)  # the whole rationale's ratio, for each of its tokens
    assert torch.allclose(sequence, torch.tensor([[2.0, 2.0, 1.0], [row1, row1, row1]]), atol=1e-6)
    with pytest.raises(ValueError, match="cap=0.5 must be >= 1"):
        truncated_importance_weights(trainer_lp, rollout_lp, mask, cap=0.5)


def test_importance_weights_scale_each_tokens_surrogate():
    weights = torch.tensor([[0.5, 2.0, 1.0], [3.0, 1.0, 1.0]])
    out = ppo_loss(OLD.clone(), OLD, ADV, MASK, importance_weights=weights)
    assert torch.isclose(out.loss, torch.tensor(-(0.5 + 2.0 - 2 * 3.0) / 3))
    assert torch.equal(ppo_loss(OLD.clone(), OLD, ADV, MASK, importance_weights=None).loss, ppo_loss(OLD.clone(), OLD, ADV, MASK).loss)


def test_auto_corrects_where_the_engine_and_the_trainer_differ():
    assert correction_level("auto", precision="fp32", compiled=False) is None
    assert correction_level("auto", precision="bf16", compiled=False) == "token"
    assert correction_level("auto", precision="fp32", compiled=True) == "token"
    assert correction_level("sequence", precision="fp32", compiled=False) == "sequence"
    assert correction_level("off", precision="bf16", compiled=True) is None


def tiny_rollout(model, tokenizer, template, tokens=6):
    requests = [
        RolloutRequest(text, group, role)
        for group, texts in enumerate([("A question?", "An answer.", "Off topic."), ("Who wrote Hamlet?", "Shakespeare did.", "Noon.")])
        for text, role in zip(texts, Role)
    ]
    sampling = {role: RoleSampling(2, 1.0, 1.0, tokens) for role in Role}
    seeds = list(range(len(expand_requests(requests, sampling))))
    return rollout(model, tokenizer, template, requests, sampling, pooling="after_system", max_prompt_tokens=256, seeds=seeds)


def test_fp32_eager_decoding_gives_importance_weights_of_one(tiny, tiny_template):
    model, tokenizer = tiny
    batch = tiny_rollout(model, tokenizer, tiny_template)
    with torch.no_grad():
        trainer_lp = policy_logprobs(model, batch).logprobs
    for level in ("token", "sequence"):
        weights = truncated_importance_weights(trainer_lp, batch.logprobs, batch.rationale_mask, cap=2.0, level=level)
        assert torch.allclose(weights, torch.ones_like(weights), atol=1e-5), level
    sums = mismatch_sums(trainer_lp, batch.logprobs, batch.rationale_mask)
    assert sums.tokens == float(batch.rationale_mask.sum()) > 0
    assert sums.abs_diff / sums.tokens < 1e-5 and abs(sums.ratio_max - 1) < 1e-5


def _gradients(model, batch, advantages, rows, cfg, correction):
    model.zero_grad(set_to_none=True)
    totals = StepTotals()
    accumulate_gradients(Parallel(model), None, batch, advantages, rows, cfg, torch.autocast("cpu", enabled=False), totals, None, correction)
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}, totals


def test_measuring_the_mismatch_or_switching_the_correction_off_changes_nothing_bit_for_bit(tiny, tiny_template):
    model, tokenizer = tiny
    batch = tiny_rollout(model, tokenizer, tiny_template)
    advantages = torch.linspace(-1, 1, len(batch))
    trained = torch.ones(len(batch), dtype=torch.bool)
    rows = MiniBatch(trained, trained, float(batch.rationale_mask.sum()))
    cfg = compose_config("trainer.micro_batch_size=5")
    model.train()
    plain, _ = _gradients(model, batch, advantages, rows, cfg, None)
    measured, totals = _gradients(model, batch, advantages, rows, cfg, Correction(batch.logprobs.clone(), None, measure=True))
    assert plain.keys() == measured.keys() and all(torch.equal(plain[k], measured[k]) for k in plain)
    assert totals.mismatch_tokens == float(batch.rationale_mask.sum()) and totals.weight_tokens == 0
    # On, in fp32: weights of ~1 and the same gradient within rounding (the ratio is taken against the same forward).
    corrected, totals = _gradients(model, batch, advantages, rows, cfg, Correction(batch.logprobs.clone(), "token", measure=True))
    assert all(torch.allclose(plain[k], corrected[k], rtol=1e-4, atol=1e-6) for k in plain)
    assert abs(totals.weight_sum / totals.weight_tokens - 1) < 1e-5 and totals.weight_clipped == 0


def test_an_injected_mismatch_weights_the_gradient_by_the_hand_computed_factors(tiny, tiny_template):
    model, tokenizer = tiny
    batch = tiny_rollout(model, tokenizer, tiny_template)
    advantages = torch.linspace(-1, 1, len(batch))
    trained = torch.ones(len(batch), dtype=torch.bool)
    rows = MiniBatch(trained, trained, float(batch.rationale_mask.sum()))
    cfg = compose_config("trainer.micro_batch_size=64")
    # The engine believed every token of the even rows log(4) more likely than the trainer does: weight 1/4;
    # odd rows log(4) less likely: ratio 4, truncated at C = 2.
    shift = torch.where(torch.arange(len(batch)) % 2 == 0, math.log(4.0), -math.log(4.0)).unsqueeze(1)
    engine = torch.where(batch.rationale_mask, batch.logprobs + shift, 0.0)
    model.train()
    corrected, totals = _gradients(model, batch, advantages, rows, cfg, Correction(engine, "token", cap=2.0, measure=True))
    factors = torch.where(torch.arange(len(batch)) % 2 == 0, 0.25, 2.0)
    reference, _ = _gradients(model, batch, advantages * factors, rows, cfg, None)  # on-policy: the ratio is 1
    assert all(torch.allclose(corrected[k], reference[k], rtol=1e-4, atol=1e-7) for k in reference)
    tokens = batch.rationale_mask.sum(dim=1).float()
    assert totals.weight_clipped == float(tokens[1::2].sum())
    assert totals.mismatch_abs / totals.mismatch_tokens == pytest.approx(math.log(4.0), rel=1e-4)


def test_micro_batched_constant_aggregation_equals_the_full_batch(tiny, tiny_template):
    model, tokenizer = tiny
    batch = tiny_rollout(model, tokenizer, tiny_template)
    advantages = torch.linspace(-1, 1, len(batch))
    trained = torch.ones(len(batch), dtype=torch.bool)
    rows = MiniBatch(trained, trained, float(len(batch) * 6))  # rows x max_new_tokens
    model.train()
    micro, _ = _gradients(model, batch, advantages, rows, compose_config("algorithm.aggregation=constant", "trainer.micro_batch_size=3"), None)
    model.zero_grad(set_to_none=True)
    current = policy_logprobs(model, batch)
    ppo_loss(current.logprobs, batch.logprobs, advantages, batch.rationale_mask, aggregation="constant", normaliser=len(batch) * 6.0).loss.backward()
    full = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    assert micro.keys() == full.keys() and all(torch.allclose(micro[k], full[k], rtol=1e-4, atol=1e-7) for k in full)


# -- Start-up checks and a whole run --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["algorithm.normalize=per_group"], "algorithm.normalize='per_group' is not one of"),
        (["algorithm.normalize=per_component", "algorithm.scale_by_std=true"], "already divides each reward component.*scale_by_std=false"),
        (["algorithm.aggregation=dr_grpo"], "algorithm.aggregation='dr_grpo' is not one of"),
        (["algorithm.rollout_correction=always"], "algorithm.rollout_correction='always' is not one of"),
        (["algorithm.rollout_correction_cap=0.5"], "algorithm.rollout_correction_cap=0.5 must be >= 1"),
        (["embedding.rationales=documents"], "embedding.rationales='documents' is not one of"),
        (["embedding.rationales=queries", "reward=paper", "rollout.num_samples=3"], "only the query role can be trained.*reward=paper"),
        (["embedding.rationales=queries", "rollout.positive.max_new_tokens=64"], "rollout.positive.max_new_tokens=64 with embedding.rationales=queries"),
        (["embedding.rationales=queries", "embedding.pooling=rationale"], "documents write no rationale to pool"),
        (["embedding.rationales=queries", "objective=contrastive"], "embedding.rationales=queries trains query rationales.*objective=contrastive"),
        (["objective=contrastive", "algorithm.rollout_correction=token"], "algorithm.rollout_correction=token belongs to objective=grace"),
    ],
)
def test_impossible_policy_options_fail_at_start_up(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_config(*overrides))


def test_a_run_with_every_option_logs_the_mismatch_and_each_components_advantage(tmp_path):
    cfg = compose_config(
        "trainer.max_steps=1", "trainer.mini_batch_size=1", "algorithm.normalize=per_component", "algorithm.aggregation=constant",
        "algorithm.rollout_correction=token", "+reward.components.length={weight: 0.1, cap: 0.5, params: {budget: 3}}",
    )  # fmt: skip
    validate(cfg)
    train(cfg, tmp_path)
    metrics = read_metrics(tmp_path)[-1]
    assert metrics["rollout/logprob_mismatch_abs_mean"] < 1e-5 and abs(metrics["rollout/logprob_mismatch_ratio_max"] - 1) < 1e-5
    assert metrics["rollout/importance_weight_clipped_fraction"] == 0
    assert abs(metrics["rollout/importance_weight_mean"] - 1) < 1e-5
    # The tiny model never writes EOS: every rationale has the same length, so the length cost is constant and adds nothing.
    assert metrics["advantage/length_abs_mean"] == 0 and metrics["advantage/grace_abs_mean"] > 0
    assert math.isfinite(metrics["loss/policy"])
