"""A few GRACE steps of each 2026 policy option on the packaged SmolLM2, side by side: the reward terms'
within-group spread, each component's share of the advantage, the rollout/trainer mismatch, the step time.

    HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python experiments/policy_options/compare.py [--steps 2]

Each run starts from the same weights and seed; a row is the mean over its steps. The length component (weight
0.01 per token over a budget of 16, cap 0.5) gives the GDPO rows a second component with a different scale.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from grace.cli.train import CONF_DIR
from grace.training.trainer import train
from grace.training.validation import validate

COMMON = [
    "logger=none", "logger.progress_bar=false", "report.enabled=false", "trainer.batch_size=2", "rollout.num_samples=2",
    "rollout.max_new_tokens=24", "trainer.save_every=1000", "data.limit=32", "seed=0", "trainer.lr=1e-6",
    "+reward.components.length={weight: 0.01, cap: 0.5, params: {budget: 16}}",
]  # fmt: skip
RUNS = {
    "default (sum, token-mean, fp32)": [],
    "normalize=per_component (GDPO)": ["algorithm.normalize=per_component"],
    "aggregation=constant (Dr. GRPO)": ["algorithm.aggregation=constant"],
    "bf16, rollout_correction=off": ["trainer.precision=bf16", "algorithm.rollout_correction=off"],
    "bf16, rollout_correction=auto (token)": ["trainer.precision=bf16"],
    "bf16, rollout_correction=sequence": ["trainer.precision=bf16", "algorithm.rollout_correction=sequence"],
    "embedding.rationales=queries": ["embedding.rationales=queries"],
}
SHOWN = [
    ("reward/grace_within_group_std", "grace wgs"), ("reward/length_within_group_std", "length wgs"),
    ("advantage/abs_mean", "|A|"), ("advantage/grace_abs_mean", "|A| grace"), ("advantage/length_abs_mean", "|A| length"),
    ("rollout/logprob_mismatch_abs_mean", "mismatch |d|"), ("rollout/logprob_mismatch_kl", "mismatch KL"),
    ("rollout/logprob_mismatch_ratio_max", "max ratio"), ("rollout/importance_weight_mean", "IS w mean"),
    ("rollout/rationale_length_mean", "length"), ("time/step_seconds", "step s"),
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="policy_options-"))
    rows = {}
    for name, overrides in RUNS.items():
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = OmegaConf.to_object(compose(config_name="train", overrides=[*COMMON, f"trainer.max_steps={args.steps}", *overrides]))
        validate(cfg)
        out = root / str(len(rows))
        train(cfg, out)
        lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        rows[name] = {key: sum(line.get(key, float("nan")) for line in lines) / len(lines) for key, _ in SHOWN}
        print(name, json.dumps(rows[name]), file=sys.stderr, flush=True)
    print("| run | " + " | ".join(label for _, label in SHOWN) + " |")
    print("|---|" + "---:|" * len(SHOWN))
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join("-" if v != v else f"{v:.4g}" for v in values.values()) + " |")


if __name__ == "__main__":
    main()
