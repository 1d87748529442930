"""Non-finite values in tiny training runs: a reward component's NaN stops the run naming it; a non-finite
gradient skips its update (the weights stay finite, the run goes on, not labelled diverged); a run of them
stops the run naming its last checkpoint; weights holding NaN are never trained from nor saved."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fault_helpers import PoisonedUpdates
from safetensors.torch import load_file
from train_helpers import compose_config, read_metrics

import grace.objectives.policy_gradient.ppo_update as ppo_update
import grace.objectives.prompt_contrast as prompt_contrast
import grace.objectives.sft as sft
from grace.config import ConfigError
from grace.model.loading import TINY_RANDOM, load_policy
from grace.numerics.finite import NonFiniteError
from grace.runs.sweep_value import find_divergence
from grace.training.checkpoint import NonFiniteCheckpoint, complete_checkpoints, save_checkpoint
from grace.training.nonfinite import Diverged
from grace.training.trainer import train

ROOT = Path(__file__).resolve().parents[2]
JUDGE = "+reward.components.judge={_target_: fault_helpers.judge_fails_on_one_rollout, weight: 0.1}"


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint / "model.safetensors")


@pytest.mark.parametrize("value, row", [(math.nan, 1), (math.inf, 3)])
def test_a_reward_component_that_returns_nan_stops_the_run_naming_it(tmp_path, value, row):
    judge = JUDGE.replace("weight: 0.1}", f"weight: 0.1, params: {{row: {row}, value: {value}}}}}")
    with pytest.raises(Diverged) as caught:
        train(compose_config(judge, "trainer.max_steps=3"), tmp_path)
    message = str(caught.value)
    assert "reward component 'judge' (fault_helpers.judge_fails_on_one_rollout)" in message
    assert "at step 2 for 1 of" in message and f"row {row} ({value})" in message
    assert f"The run stopped at step 2; its last checkpoint, {tmp_path / 'checkpoints' / 'step-1'}" in message
    assert [c.name for c in complete_checkpoints(tmp_path)] == ["step-1"]  # no step 2: its update never ran


@pytest.mark.parametrize(
    "objective, module",
    [(["objective=grace"], ppo_update), (["objective=contrastive"], prompt_contrast), (["objective=sft", "data.train_file={demos}"], sft)],
    ids=["grace", "contrastive", "sft"],
)
def test_a_non_finite_gradient_skips_its_update_and_the_run_goes_on(tmp_path, monkeypatch, objective, module):
    demos = tmp_path / "demos.jsonl"
    demos.write_text("".join(f'{{"text": "Text number {i}.", "rationale": "Reason {i}."}}\n' for i in range(4)))
    monkeypatch.setattr(module, "apply_update", PoisonedUpdates(module.apply_update, poisoned={2}))
    overrides = [o.replace("{demos}", str(demos)) for o in objective]
    result = train(compose_config(*overrides, "trainer.max_steps=3", "trainer.keep_last=3"), tmp_path / "run")
    assert result.steps_done == 3
    rows = read_metrics(tmp_path / "run")
    assert [row["optim/skipped_updates"] for row in rows] == [0, 1, 0]
    assert find_divergence(rows) is None  # finite weights: not a diverged run, the final evaluation and sweep value stand
    assert all(math.isfinite(v) for row in rows for v in row.values() if isinstance(v, float))
    assert "optim/grad_norm" not in rows[1] and rows[2]["optim/grad_norm"] > 0  # the skipped step logs no update
    step1, step2, step3 = (weights(c) for c in complete_checkpoints(tmp_path / "run"))
    assert all(torch.equal(step1[k], step2[k]) for k in step1)  # the skipped update left the weights alone
    assert any(not torch.equal(step2[k], step3[k]) for k in step2)
    assert all(bool(torch.isfinite(t).all()) for t in step3.values())


def test_a_run_of_skipped_updates_stops_the_run_naming_its_last_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(ppo_update, "apply_update", PoisonedUpdates(ppo_update.apply_update, poisoned={2, 3, 4}))
    with pytest.raises(Diverged) as caught:
        train(compose_config("trainer.max_steps=5", "trainer.max_skipped_updates=2", "trainer.keep_last=5"), tmp_path)
    message = str(caught.value)
    assert "2 optimizer updates in a row had a non-finite loss or gradient (the last at step 3)" in message
    assert "trainer.max_skipped_updates=2" in message and "The run stopped at step 3" in message
    assert [row["optim/skipped_updates"] for row in read_metrics(tmp_path)] == [0, 1, 1]
    # Steps 2's checkpoint holds the same finite weights as step 1's; step 3 stopped before its save.
    assert [c.name for c in complete_checkpoints(tmp_path)] == ["step-1", "step-2"]


def test_the_run_of_skipped_updates_counts_on_across_a_resume(tmp_path, monkeypatch):
    monkeypatch.setattr(ppo_update, "apply_update", PoisonedUpdates(ppo_update.apply_update, poisoned={2}))
    train(compose_config("trainer.max_steps=2", "trainer.max_skipped_updates=2"), tmp_path)
    monkeypatch.setattr(ppo_update, "apply_update", PoisonedUpdates(ppo_update.apply_update.apply_update, poisoned={1}))
    with pytest.raises(Diverged, match="2 optimizer updates in a row.*the last at step 3"):
        train(compose_config("trainer.max_steps=4", "trainer.max_skipped_updates=2", "trainer.resume=auto"), tmp_path)


@pytest.mark.parametrize("value", [0, -1])
def test_max_skipped_updates_below_one_is_refused_at_start_up(tmp_path, value):
    with pytest.raises(ConfigError, match=f"trainer.max_skipped_updates={value} must be at least 1"):
        train(compose_config(f"trainer.max_skipped_updates={value}"), tmp_path)


def test_weights_holding_nan_are_never_saved_as_a_checkpoint(tmp_path, tiny):
    model, tokenizer = load_policy(TINY_RANDOM)
    from grace.embedding.pipeline import EmbeddingConfig

    save_checkpoint(tmp_path, 1, model, tokenizer, EmbeddingConfig(), {"step": 1}, keep_last=2, name="x")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = math.nan
    with pytest.raises(NonFiniteCheckpoint, match=r"refusing to write checkpoint .*step-2: 1 weight tensors.*up_proj"):
        save_checkpoint(tmp_path, 2, model, tokenizer, EmbeddingConfig(), {"step": 2}, keep_last=2, name="x")
    assert [c.name for c in complete_checkpoints(tmp_path)] == ["step-1"]
    assert not list((tmp_path / "checkpoints").glob(".step-*"))


def test_a_model_with_nan_weights_is_refused_before_training(tmp_path):
    model, tokenizer = load_policy(TINY_RANDOM)
    with torch.no_grad():
        model.lm_head.weight[3, 3] = math.inf
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    with pytest.raises(NonFiniteError, match=r"the model to train .*model\) is unusable: 1 tensors hold NaN or infinite values"):
        train(compose_config(f"model.source={tmp_path / 'model'}"), tmp_path / "run")


def test_grace_train_exits_with_status_3_naming_the_component(tmp_path):
    command = [sys.executable, "-m", "grace.cli.train", "experiment=debug", "logger=none", "logger.progress_bar=false",
               "report.enabled=false", f"trainer.output_dir={tmp_path}", "trainer.max_steps=3", JUDGE]  # fmt: skip
    env = {**__import__("os").environ, "PYTHONPATH": f"{ROOT / 'tests'}"}
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "grace-train: non-finite value: reward component 'judge'" in done.stderr
    assert "The run stopped at step 2" in done.stderr
