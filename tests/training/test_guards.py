"""The guards: each detector fires on a constructed degenerate batch and stays quiet on a normal one; a guard
that stops leaves a resumable run and the best held-out checkpoint; the trainer logs what they saw."""
import json

import pytest
import torch
import torch.nn.functional as F
from train_helpers import compose_config, read_metrics, without_timing

from grace.rewards.degenerate import repetition_rates
from grace.rewards.statistics import different_text_mean_cos
from grace.training.checkpoint import latest_checkpoint
from grace.training.guards import GuardWarning, check, diversity_collapse, length_drift, repetition, reward_vs_heldout
from grace.training.trainer import train

TEXTS = ["a cat", "a dog", "rain", "bread", "a poem", "a comet"]


def history(key, values):
    return [{"step": step, key: value} for step, value in enumerate(values, start=1)]


def normal_embeddings(seed):
    return F.normalize(torch.randn(len(TEXTS), 16, generator=torch.Generator().manual_seed(seed)), dim=-1)


def collapsed_embeddings(seed):
    """Every text's embedding a hair away from one vector: different texts, the same embedding."""
    noise = 1e-3 * torch.randn(len(TEXTS), 16, generator=torch.Generator().manual_seed(seed))
    return F.normalize(torch.ones(len(TEXTS), 16) + noise, dim=-1)


def test_the_mean_cosine_between_different_texts_leaves_out_pairs_of_the_same_text():
    e = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), dim=-1)
    assert different_text_mean_cos(e, ["x", "x", "y"]) == 0.0  # only x-y pairs count: orthogonal
    assert different_text_mean_cos(e, ["x", "z", "y"]) == pytest.approx(2 / 6)  # x-z is 1, the four x/z-y pairs 0
    assert different_text_mean_cos(e[:2], ["x", "x"]) != different_text_mean_cos(e[:2], ["x", "x"])  # NaN: no pair


def test_the_length_guard_fires_on_rationales_that_double_or_vanish_and_not_on_noise():
    settings = {"max_ratio": 2.0, "min_ratio": 0.25, "baseline_steps": 3}
    assert "2.50x its first steps' 10.0" in length_drift(history("rollout/rationale_length_mean", [10, 10, 10, 25]), **settings)
    assert "shrank to 0.10x" in length_drift(history("rollout/rationale_length_mean", [10, 10, 10, 1]), **settings)
    assert length_drift(history("rollout/rationale_length_mean", [10, 12, 8, 17, 9]), **settings) is None
    assert length_drift(history("rollout/rationale_length_mean", [10, 30, 30]), **settings) is None  # still the baseline


def test_the_repetition_guard_fires_on_looping_rationales_and_not_on_normal_ones():
    looping = torch.tensor([[5, 6, 7] * 4, [9] * 12])
    normal = torch.arange(24).view(2, 12)
    mask = torch.ones(2, 12, dtype=torch.bool)
    rate = lambda ids: float(repetition_rates(ids, mask).mean())  # noqa: E731
    assert repetition(history("rollout/repetition_rate", [rate(normal), rate(looping)]), max_rate=0.5).startswith("80% of the")  # (1 - 3/10 + 1 - 1/10) / 2
    assert repetition(history("rollout/repetition_rate", [rate(normal), rate(normal)]), max_rate=0.5) is None


def test_the_diversity_guard_fires_when_different_texts_embed_alike():
    normal = [different_text_mean_cos(normal_embeddings(seed), TEXTS) for seed in range(4)]
    collapsed = different_text_mean_cos(collapsed_embeddings(0), TEXTS)
    assert collapsed > 0.999 and max(abs(c) for c in normal) < 0.5
    settings = {"min_spread_ratio": 0.5, "baseline_steps": 3}
    assert "drew together" in diversity_collapse(history("rollout/embedding_mean_cos", [*normal[:3], collapsed]), **settings)
    assert diversity_collapse(history("rollout/embedding_mean_cos", normal), **settings) is None


def scores_and_rewards(scores, rewards, every=2):
    """A history with a training score at every step 1..n and held-out scores at steps 0, every, 2 every, ..."""
    rows = [{"step": 0, "eval/triplet_accuracy": scores[0]}]
    for step, reward in enumerate(rewards, start=1):
        row = {"step": step, "reward/total_mean": reward}
        if step % every == 0:
            row["eval/triplet_accuracy"] = scores[step // every]
        rows.append(row)
    return rows


@pytest.mark.parametrize(
    "scores, rewards, fires",
    [
        ([0.6, 0.8, 0.5], [-3, -3, -2, -2], True),  # the reward rises while the held-out score falls: hacking
        ([0.6, 0.8, 0.5], [-1, -1, -2, -2], False),  # both fall: a bad run, not a gamed reward
        ([0.6, 0.8, 0.9], [-3, -3, -2, -2], False),  # both rise: learning
        ([0.6, 0.8, 0.78], [-3, -3, -2, -2], False),  # a dip below min_drop: noise
    ],
)
def test_the_reward_vs_heldout_guard_fires_only_when_the_reward_rises_as_the_held_out_score_falls(scores, rewards, fires):
    rows = scores_and_rewards(scores, rewards)
    found = reward_vs_heldout(rows, score_key="eval/triplet_accuracy", training_key="reward/total_mean", min_drop=0.05, min_rise=0.0, window=2)
    assert (found is not None) == fires
    if fires:
        assert "fell from 0.8000 (step 2) to 0.5000 while reward/total_mean rose by 1" in found


def test_check_needs_patience_consecutive_findings_and_skips_guards_that_are_off():
    guards = compose_config("trainer.guards.repetition.patience=2", "trainer.guards.length.action=off").trainer.guards
    rows = history("rollout/repetition_rate", [0.9, 0.1, 0.9])
    for row in rows:
        row["rollout/rationale_length_mean"] = 100.0 * row["step"]  # would fire the length guard, which is off
    assert check(rows, guards, score_key=None, training_key="reward/total_mean") == ([], {"guard/repetition": 0.0})
    rows.append({"step": 4, "rollout/repetition_rate": 0.8, "rollout/rationale_length_mean": 400.0})
    findings, flags = check(rows, guards, score_key=None, training_key="reward/total_mean")
    assert flags == {"guard/repetition": 1.0} and [(f.guard, f.step, f.action) for f in findings] == [("repetition", 4, "warn")]


# ---------------------------------------------------------------- in the trainer (tiny model)

# Greedy rationales of the random tiny model repeat one token: a degenerate batch from a real rollout.
LOOPING = [
    "algorithm=reinforce", "rollout.query.temperature=0", "rollout.positive.temperature=0", "rollout.negative.temperature=0",
    "trainer.eval_every=1", "trainer.heldout.size=3", "trainer.keep_best=true", "trainer.keep_last=1",
]  # fmt: skip


def test_a_guard_stop_leaves_a_resumable_run_and_the_best_checkpoint(tmp_path):
    stopped = tmp_path / "stopped"
    with pytest.warns(GuardWarning, match="guard repetition at step 1: .*: stopping the run"):
        result = train(compose_config(*LOOPING, "trainer.guards.repetition.action=stop", "trainer.max_steps=3"), stopped)
    assert result.steps_done == 1 and result.stopped_by.guard == "repetition"
    assert latest_checkpoint(stopped).name == "step-1"
    rows = read_metrics(stopped)
    assert [row["step"] for row in rows] == [0, 1] and rows[1]["guard/repetition"] == 1.0
    assert "eval/triplet_accuracy" in rows[0] and "eval/triplet_accuracy" in rows[1]

    # Resumed with the guard only warning (a guard setting may change on resume), it ends as a run that never stopped.
    with pytest.warns(GuardWarning):
        train(compose_config(*LOOPING, "trainer.max_steps=3", "trainer.resume=auto"), stopped)
        train(compose_config(*LOOPING, "trainer.max_steps=3"), tmp_path / "straight")
    assert without_timing(read_metrics(stopped)) == without_timing(read_metrics(tmp_path / "straight"))
    best = json.loads((stopped / "best_checkpoint.json").read_text())
    assert best["metric"] == "eval/triplet_accuracy" and (stopped / "checkpoints" / f"step-{best['step']}").is_dir()


def test_keep_best_spares_the_best_held_out_checkpoint_from_keep_last(tmp_path):
    train(compose_config("trainer.eval_every=1", "trainer.heldout.size=3", "trainer.keep_best=true", "trainer.keep_last=1", "trainer.max_steps=3"), tmp_path)
    rows = read_metrics(tmp_path)
    scores = [(row["eval/triplet_accuracy"], -row["step"]) for row in rows if row["step"] >= 1]
    best_step = -max(scores)[1]
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == sorted({f"step-{best_step}", "step-3"})
    assert json.loads((tmp_path / "best_checkpoint.json").read_text())["step"] == best_step
    assert [row["guard/reward_vs_heldout"] for row in rows] == [0.0, 0.0, 0.0, 0.0]  # checked at every evaluation


def test_keep_best_needs_a_held_out_evaluation():
    from grace.config import ConfigError
    from grace.training.validation import validate

    with pytest.raises(ConfigError, match="trainer.keep_best=true keeps the checkpoint of the best held-out score: set trainer.eval_every > 0"):
        validate(compose_config("trainer.keep_best=true"))
