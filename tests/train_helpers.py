"""Composing training configs in-process, exactly as ``grace-train`` does, for fast trainer tests."""
from __future__ import annotations

import json
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from grace.cli.train import CONF_DIR
from grace.config import TrainConfig

TINY = ["experiment=debug", "logger=none", "logger.progress_bar=false"]


def compose_config(*overrides: str) -> TrainConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="train", overrides=[*TINY, *overrides]))


def read_metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


def assert_resume_is_exact(tmp_path: Path, *overrides: str, compose=compose_config) -> list[dict]:
    """4 steps straight, and 2 steps + resume + 2 steps, give the same metrics (timing aside) and weights;
    returns the resumed run's metrics."""
    import torch

    from grace.embedding.encoder import GraceEncoder
    from grace.training.trainer import train

    straight, split = tmp_path / "straight", tmp_path / "split"
    train(compose(*overrides, "trainer.max_steps=4"), straight)
    train(compose(*overrides, "trainer.max_steps=2"), split)
    train(compose(*overrides, "trainer.max_steps=4", "trainer.resume=auto"), split)
    rows = read_metrics(split)
    assert without_timing(rows) == without_timing(read_metrics(straight))
    a, b = GraceEncoder.from_pretrained(straight).model.state_dict(), GraceEncoder.from_pretrained(split).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    return rows
