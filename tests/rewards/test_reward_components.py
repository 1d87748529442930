"""The composed reward: each built-in against a plain reference, weights, caps and schedules, a user
component by dotted path, errors naming the component, and the defaults reproducing the GRACE reward
(``compute_rewards``) bit for bit, on hand-made tensors and on the tiny model."""
import math

import pytest
import torch
import torch.nn.functional as F
from train_helpers import compose_config, read_metrics

from grace.config import ConfigError, reward_components
from grace.rewards import ComponentError, Ramp, RewardFunction, RewardInputs, build_component, compute_rewards
from grace.rewards.degenerate import copied_fraction, degenerate_penalty, repeated_ngram_fraction, repetition_rates
from grace.rewards.length import length_cost
from grace.rewards.truncation import truncation_penalty
from grace.training.trainer import train
from grace.training.validation import validate

Q, P, N = 0, 1, 2
VOCAB = ["<eos>", "the", "cat", "sat", "on", "a", "mat", "dogs", "bark", "loudly", "at", "night"]
EOS = 0


def decode(ids: list[int]) -> str:
    return " ".join(VOCAB[i] for i in ids if i != EOS)


def inputs_of(rationales, texts, *, groups=None, roles=None, truncated=None, step=0, seed=0, dim=8) -> RewardInputs:
    """R rollouts with the given rationale token ids (padded with EOS) and random unit embeddings."""
    r = len(rationales)
    width = max(len(ids) for ids in rationales)
    ids = torch.zeros(r, width, dtype=torch.long)
    mask = torch.zeros(r, width, dtype=torch.bool)
    for row, tokens in enumerate(rationales):
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, : len(tokens)] = True
    generator = torch.Generator().manual_seed(seed)
    return RewardInputs(
        embeddings=F.normalize(torch.randn(r, dim, generator=generator), dim=-1),
        group=torch.tensor(groups if groups is not None else [0] * r),
        role=torch.tensor(roles if roles is not None else [P] * r),
        truncated=torch.tensor(truncated if truncated is not None else [False] * r),
        rationale_ids=ids,
        rationale_mask=mask,
        texts=texts,
        step=step,
        decode=decode,
    )


def triplet_batch(groups=3, k=2, seed=0, truncated_rows=()) -> RewardInputs:
    """k rollouts of each role of each group, with rationales of varied length (a supervised GRACE batch)."""
    group, role, rationales, texts = [], [], [], []
    for g in range(groups):
        for r in (Q, P, N):
            for i in range(k):
                group.append(g)
                role.append(r)
                rationales.append([1 + (g + r + i + j) % 11 for j in range(3 + (g * 3 + r + i) % 6)] + [EOS])
                texts.append(f"text {g} {r}")
    truncated = [row in truncated_rows for row in range(len(group))]
    return inputs_of(rationales, texts, groups=group, roles=role, truncated=truncated, seed=seed)


def default_reward(*overrides) -> RewardFunction:
    cfg = compose_config(*overrides)
    return RewardFunction.from_config(reward_components(cfg), cfg.reward, cfg.mode)


# ---------------------------------------------------------------- each built-in against a plain reference


def test_the_length_cost_charges_each_token_beyond_the_budget():
    batch = inputs_of([[1, 2, EOS], [1, 2, 3, 4, EOS], [1, 2, 3, 4, 5, 6, 7, EOS]], ["a", "b", "c"])
    lengths = [3, 5, 8]  # tokens, EOS included
    assert length_cost(batch, budget=5).tolist() == [-max(0, n - 5) for n in lengths] == [0, 0, -3]
    with pytest.raises(ValueError, match="budget"):
        length_cost(batch, budget=-1)


def test_the_truncation_penalty_is_minus_one_for_a_rationale_cut_without_eos():
    batch = inputs_of([[1, 2], [1, EOS], [3, 4]], ["a", "b", "c"], truncated=[True, False, True])
    assert truncation_penalty(batch).tolist() == [-1.0, 0.0, -1.0]


def test_repeated_ngrams_copies_and_near_empty_rationales_are_measured_as_by_hand():
    assert repeated_ngram_fraction([1, 2, 3, 1, 2, 3]) == 0.25  # (1,2,3) (2,3,1) (3,1,2) (1,2,3): one of 4 repeats
    assert repeated_ngram_fraction([5, 5, 5, 5]) == 0.5  # (5,5,5) twice
    assert repeated_ngram_fraction([1, 2]) == 0.0 and repeated_ngram_fraction([1, 2, 3, 4]) == 0.0
    assert copied_fraction("The cat sat on the mat.", "the cat sat on the mat") == 1.0
    assert copied_fraction("the cat sat at night", "the cat sat on a mat") == pytest.approx(1 / 3)  # "the cat sat" of 3
    assert copied_fraction("dogs bark loudly", "the cat sat") == 0.0 and copied_fraction("cat", "cat") == 0.0
    ids = torch.tensor([[1, 2, 3, 1, 2, 3, 0], [5, 5, 5, 5, 0, 0, 0]])
    mask = torch.tensor([[True] * 6 + [False], [True] * 4 + [False] * 3])
    assert repetition_rates(ids, mask).tolist() == [0.25, 0.5]


def test_the_degenerate_penalty_equals_a_plain_loop_over_its_three_parts():
    rationales = [
        [1, 2, 3, 4, 1, 6, EOS],  # "the cat sat on the mat": copies its input
        [7, 8, 9, 7, 8, 9, 7, 8, 9, EOS],  # a loop
        [2, EOS],  # one word: near-empty
        [EOS],  # empty
        [7, 8, 9, 10, 11, EOS],  # a fine rationale
    ]
    texts = ["the cat sat on the mat", "dogs", "a cat", "a cat", "the mat"]
    batch = inputs_of(rationales, texts)
    out = degenerate_penalty(batch, ngram=3, min_words=2, repetition=1.0, empty=2.0, copy=0.5)
    for row, (ids, text) in enumerate(zip(rationales, texts)):
        words = decode(ids)
        grams = [tuple(ids[i : i + 3]) for i in range(len(ids) - 2)]
        repeated = 1 - len(set(grams)) / len(grams) if grams else 0.0
        mine = words.split()
        theirs = {tuple(text.split()[i : i + 3]) for i in range(len(text.split()) - 2)}
        copied = [tuple(mine[i : i + 3]) in theirs for i in range(len(mine) - 2)]
        copy = sum(copied) / len(copied) if copied else 0.0
        empty = float(len(mine) < 2)
        assert out.value[row].item() == pytest.approx(-(1.0 * repeated + 2.0 * empty + 0.5 * copy)), row
        assert out.terms["degenerate_repetition"][row].item() == pytest.approx(-repeated)
        assert out.terms["degenerate_empty"][row].item() == -empty
        assert out.terms["degenerate_copy"][row].item() == pytest.approx(-copy)
    assert out.value[4] == 0  # the fine one costs nothing
    assert out.value[0] < 0 and out.value[1] < 0 and out.value[2] < 0 and out.value[3] < 0


# ---------------------------------------------------------------- composition: weights, caps, schedules


def test_the_total_is_the_sum_of_weighted_capped_contributions():
    batch = triplet_batch(truncated_rows=(1, 4))
    grace = build_component("grace", injected={"variant": "contrastive", "mode": "supervised", "tau": 0.1, "w_cluster": 0.2, "w_cross": 0.2})
    length = build_component("length", weight=0.5, cap=1.0, params={"budget": 4})
    truncation = build_component("truncation", weight=2.0)
    out = RewardFunction([grace, length, truncation], "contrastive")(batch)
    expected_grace = compute_rewards(batch.embeddings, batch.group, batch.role, batch.truncated).total
    expected_length = (0.5 * length_cost(batch, budget=4)).clamp(-1.0, 1.0)
    expected_truncation = 2.0 * truncation_penalty(batch)
    assert torch.equal(out.components["grace"], expected_grace)
    assert torch.allclose(out.components["length"], expected_length)
    assert torch.equal(out.components["truncation"], expected_truncation)
    assert torch.allclose(out.total, expected_grace + expected_length + expected_truncation)
    assert torch.equal(out.capped["length"], (0.5 * length_cost(batch, budget=4)).abs() > 1.0)
    assert bool(out.capped["length"].any()) and bool((~out.capped["length"]).any())  # the cap both bit and did not
    assert set(out.terms) == {"contrastive", "cluster", "cross"}  # the GRACE terms, under their own names
    assert out.trained.all() and out.weights == {}  # no schedule: no weight to log


def test_a_schedule_ramps_the_weight_linearly_from_its_start_factor():
    ramp = Ramp(start_factor=0.0, start_step=2, steps=4)
    assert [ramp.factor(step) for step in (0, 2, 3, 4, 6, 10)] == [0.0, 0.0, 0.25, 0.5, 1.0, 1.0]
    assert Ramp(start_factor=2.0, start_step=0, steps=2).factor(1) == 1.5  # a weight can also come down
    component = build_component("truncation", weight=4.0, ramp=ramp)
    batch = inputs_of([[1, 2], [1, EOS]], ["a", "b"], truncated=[True, False], step=4)
    out = RewardFunction([component], "contrastive")(batch)
    assert out.weights == {"truncation": 2.0} and out.total.tolist() == [-2.0, 0.0]


@pytest.mark.parametrize("variant", ["contrastive", "paper"])
@pytest.mark.parametrize("mode", ["supervised", "unsupervised"])
def test_the_default_reward_is_the_grace_reward_bit_for_bit(variant, mode):
    reward = default_reward(f"reward={variant}", f"mode={mode}")
    for seed in range(3):
        batch = triplet_batch(seed=seed, truncated_rows=(2, 7))
        if mode == "unsupervised":  # no negatives
            keep = batch.role != N
            batch = RewardInputs(
                batch.embeddings[keep], batch.group[keep], batch.role[keep], batch.truncated[keep], batch.rationale_ids[keep],
                batch.rationale_mask[keep], [t for t, k in zip(batch.texts, keep) if k], decode=decode,
            )  # fmt: skip
        out = reward(batch)
        expected = compute_rewards(batch.embeddings, batch.group, batch.role, batch.truncated, variant=variant, mode=mode)
        assert torch.equal(out.total, expected.total)
        assert out.terms.keys() == expected.terms.keys() and all(torch.equal(out.terms[k], expected.terms[k]) for k in out.terms)
        assert torch.equal(out.trained, expected.trained)


@pytest.mark.parametrize("variant", ["contrastive", "paper"])
def test_reward_rank_truncated_last_reaches_the_grace_component(variant):
    batch = triplet_batch(seed=0, truncated_rows=(1, 2, 7))
    args = (batch.embeddings, batch.group, batch.role, batch.truncated)
    out = default_reward(f"reward={variant}", "reward.rank_truncated_last=false")(batch)
    assert torch.equal(out.total, compute_rewards(*args, variant=variant, rank_truncated_last=False).total)
    assert not torch.equal(out.total, compute_rewards(*args, variant=variant).total)


def test_the_default_reward_on_the_tiny_models_rollouts_is_the_grace_reward_bit_for_bit(tiny, tiny_template):
    from contextlib import nullcontext

    from grace.data import Triplet
    from grace.objectives import TrainContext
    from grace.objectives.policy_gradient.step import PolicyGradient

    cfg = compose_config("rollout.num_samples=3")
    model, tokenizer = tiny
    objective = PolicyGradient(TrainContext(cfg, model, tokenizer, tiny_template, torch.device("cpu"), nullcontext()))
    examples = [Triplet("What is a cat?", "A small animal.", "A stock index."), Triplet("Who wrote Hamlet?", "Shakespeare.", "Bread.")]
    sampled = objective.sample(1, examples)
    batch, rewards = sampled.everyone, sampled.rewards
    expected = compute_rewards(batch.embeddings, batch.group, batch.role, batch.truncated, variant="contrastive", mode="supervised")
    assert torch.equal(rewards.total, expected.total)
    assert all(torch.equal(rewards.terms[k], expected.terms[k]) for k in expected.terms)


# ---------------------------------------------------------------- user components and errors


def test_a_user_component_by_dotted_path_reads_the_rationales_and_joins_the_total(tmp_path):
    user = "+reward.components.words={_target_: reward_helpers.rationale_words, weight: 0.5}"
    constant = "+reward.components.bonus={_target_: reward_helpers.constant, weight: 2.0, cap: 1.5, params: {value: 1.0}}"
    train(compose_config(user, constant, "trainer.max_steps=1"), tmp_path)
    row = read_metrics(tmp_path)[0]
    assert row["reward/bonus_mean"] == 1.5  # 2.0 * 1.0, capped at 1.5
    assert row["reward_capped/bonus"] == 1.0
    assert row["reward/words_mean"] >= 0 and "reward/words_within_group_std" in row
    parts = row["reward/grace_mean"] + row["reward/words_mean"] + row["reward/bonus_mean"]
    assert row["reward/total_mean"] == pytest.approx(parts, rel=1e-5)  # total is the sum of the components


def no_model(*args, **kwargs):
    raise AssertionError("a model was loaded before the reward components were checked")


@pytest.mark.parametrize(
    "component, message",
    [
        ("mine={_target_: no_such_package.reward}", r"reward.components.mine._target_='no_such_package.reward' cannot be imported"),
        ("mine={_target_: reward_helpers.missing}", r"reward_helpers has no attribute or submodule 'missing'"),
        ("mine={_target_: reward_helpers.NOT_CALLABLE}", r"reward.components.mine._target_=.* is a int, not a function"),
        ("mine={_target_: reward_helpers.constant, params: {colour: red}}", r"reward.components.mine: .* unexpected keyword argument 'colour'"),
        ("length={weight: 0.1}", r"reward.components.length: .* missing a required argument: 'budget'"),
        ("lenght={weight: 0.1}", r"no built-in component is called 'lenght' \(built-ins: \['grace', 'length'"),
        ("length={wieght: 0.1, params: {budget: 3}}", r"reward.components.length: Key 'wieght' not in 'ComponentConfig'"),
        ("truncation={cap: -1}", r"reward.components.truncation.cap=-1(\.0)? must be positive"),
        ("cluster={_target_: reward_helpers.constant}", r"reward.components.cluster: a component name must be a plain identifier other than"),
        ("truncation={schedule: {steps: 0}}", r"reward.components.truncation.schedule: steps=0 must be >= 1"),
    ],
)
def test_a_bad_component_fails_at_start_up_naming_it(tmp_path, monkeypatch, component, message):
    monkeypatch.setattr("grace.training.trainer.load_policy", no_model)
    with pytest.raises(ConfigError, match=message):
        train(compose_config(f"+reward.components.{component}"), tmp_path)


def test_grace_takes_its_settings_from_reward_and_an_empty_reward_is_refused():
    with pytest.raises(ConfigError, match=r"reward.components.grace.params=.*takes its settings from reward.\*"):
        validate(compose_config("+reward.components.grace.params.tau=0.5"))
    with pytest.raises(ConfigError, match="reward.components is empty"):
        validate(compose_config("~reward.components.grace"))


@pytest.mark.parametrize(
    "target, message",
    [
        ("wrong_shape", r"reward component 'bad' \(reward_helpers.wrong_shape\) returned shape \[12, 2\]; .* shape \[12\]"),
        ("not_numbers", r"reward component 'bad' \(reward_helpers.not_numbers\) returned list, not numbers"),
    ],
)
def test_a_component_returning_the_wrong_thing_fails_at_the_first_step_naming_it(tmp_path, target, message):
    with pytest.raises(ComponentError, match=message):  # 2 triplets x 3 roles x 2 rationales = 12 rollouts
        train(compose_config(f"+reward.components.bad={{_target_: reward_helpers.{target}}}", "trainer.max_steps=1"), tmp_path)
    assert not (tmp_path / "metrics.jsonl").is_file() or not read_metrics(tmp_path)


def test_a_scheduled_component_logs_its_weight_per_step(tmp_path):
    ramp = "+reward.components.truncation={weight: 1.0, schedule: {start_factor: 0.0, start_step: 1, steps: 2}}"
    train(compose_config(ramp), tmp_path)
    assert [row["reward_weight/truncation"] for row in read_metrics(tmp_path)] == [0.0, 0.5]
    assert all(math.isfinite(row["reward/total_mean"]) for row in read_metrics(tmp_path))
