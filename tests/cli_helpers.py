"""Running the real ``grace-train`` command in a subprocess (Hydra, wandb offline), for end-to-end tests."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SMALL = ["rollout.max_new_tokens=8", "trainer.batch_size=2", "data.limit=16", "logger.progress_bar=false"]


def grace_train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}
    command = [sys.executable, "-m", "grace.cli.train", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
