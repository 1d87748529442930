"""experiments/quality/quality.py: equal training minutes across methods, and what the guards recorded per run."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

from grace.training.checkpoint import STATE_FILE

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "quality" / "quality.py"


def _quality():
    spec = importlib.util.spec_from_file_location("quality_driver", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _run(out: Path, experiment: str, seed: int, records: list[dict]) -> None:
    """A finished run as quality.py train leaves it: its overrides, metrics.jsonl and its last checkpoint."""
    job = out / "runs" / f"experiment={experiment},seed={seed}"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"experiment={experiment}", f"seed={seed}", "trainer.resume=auto"]))
    (job / "metrics.jsonl").write_text("".join(json.dumps({"step": step, **record}) + "\n" for step, record in enumerate(records, 1)))
    checkpoint = job / "checkpoints" / f"step-{len(records)}"
    checkpoint.mkdir(parents=True)
    (checkpoint / STATE_FILE).write_text("{}")


def _main(quality, capsys, *argv: str) -> str:
    sys.argv = ["quality.py", *argv]
    quality.main()
    return capsys.readouterr().out


def test_as_long_as_gives_each_method_the_steps_of_the_other_runs_training_minutes(tmp_path, capsys) -> None:
    quality = _quality()
    for seed in (0, 1):  # GRACE: 4 steps of 20 s on idle cores (the first step warms caches and is left out)
        _run(tmp_path, "quality_grace_no_truncation_rule", seed, [{"time/step_seconds": s} for s in (99, 20, 20, 20)])
    _run(tmp_path, "quality_contrastive", 0, [{"time/step_seconds": s} for s in (99, 8, 8)])  # 8 s a step
    printed = _main(quality, capsys, "budget", "--out", str(tmp_path), "--as-long-as", "quality_grace_no_truncation_rule")
    assert "quality_grace_no_truncation_rule: 1.33 min of training" in printed
    assert "quality_contrastive: 8.0 s/step -> trainer.max_steps=10" in printed  # 80 s / 8 s
    assert "quality_grace_no_truncation_rule: 20.0 s/step -> trainer.max_steps=4" in printed


def test_as_long_as_refuses_runs_that_stopped_at_different_steps(tmp_path, capsys) -> None:
    quality = _quality()
    _run(tmp_path, "quality_grace_no_truncation_rule", 0, [{"time/step_seconds": 20}] * 4)
    _run(tmp_path, "quality_grace_no_truncation_rule", 1, [{"time/step_seconds": 20}] * 3)
    with pytest.raises(SystemExit, match=r"must all stop at one step \(found \['step-3', 'step-4'\]\)"):
        _main(quality, capsys, "budget", "--out", str(tmp_path), "--as-long-as", "quality_grace_no_truncation_rule")


def test_guards_lists_each_runs_firings_and_its_first_and_last_held_out_scores(tmp_path, capsys) -> None:
    quality = _quality()
    records = [
        {"guard/length": 0, "guard/diversity": 0, "eval/triplet_accuracy": 0.75, "eval/triplet_margin": 0.1, "rollout/rationale_length_mean": 21.4},
        {"guard/length": 1, "guard/diversity": 1, "rollout/rationale_length_mean": 3.5},
        {"guard/length": 1, "guard/diversity": 0, "eval/triplet_accuracy": 0.875, "eval/triplet_margin": 0.05, "rollout/rationale_length_mean": 7.3},
    ]
    _run(tmp_path, "two_stage_aggressive", 0, records)
    _run(tmp_path, "two_stage_gentle", 0, [{"guard/length": 0, "rollout/rationale_length_mean": 20.0}])
    printed = _main(quality, capsys, "guards", "--out", str(tmp_path), "--methods", "two_stage_aggressive,two_stage_gentle")
    assert "| two stages: SFT, then aggressive GRACE | 0 | diversity: 2; length: 2, 3 | 0.750 → 0.875 | 0.100 → 0.050 | 21.4 → 7.3 |" in printed
    assert "| two stages: SFT, then gentle GRACE | 0 | none | - | - | 20.0 → 20.0 |" in printed
