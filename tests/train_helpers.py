"""Composing training configs in-process, exactly as ``grace-train`` does, for fast trainer tests."""
from __future__ import annotations

import json
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from grace.config import TrainConfig
from grace.train import CONF_DIR

TINY = ["experiment=debug", "logger=none", "logger.progress_bar=false"]


def compose_config(*overrides: str) -> TrainConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="train", overrides=[*TINY, *overrides]))


def read_metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]
