"""What the CLIs show on the console: their own progress bars and a one-screen summary, little else.

``quiet_third_party`` silences output that tells a user of ``grace-train`` / ``grace-eval`` nothing they
can act on: transformers' weight-loading and shard-writing bars, mteb's per-task INFO lines and its
task bar (the adapter shows one bar per task and role), huggingface_hub download bars, sklearn's
ill-defined-precision warning from mteb's classifier probe, and transformers' "Running in WANDB offline
mode" line. Other warnings and errors still show.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

# Loggers whose INFO lines narrate internals (mteb: "Running task ...", "Unloaded dataset ...").
CHATTY_LOGGERS = ("mteb", "sentence_transformers", "datasets", "httpx", "urllib3")


def quiet_third_party() -> None:
    """Call at the start of a CLI's task function (after Hydra has configured logging)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("SQLALCHEMY_SILENCE_UBER_WARNING", "1")  # optuna 2 on SQLAlchemy 1.4: not the user's code
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # "Loading weights", "Writing model shards"; its warnings stay
    disable_progress_bars()
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # A classifier probe that never predicts some class (a weak encoder): the accuracy already says so.
    warnings.filterwarnings("ignore", message="Precision is ill-defined", module="sklearn")
    if os.environ.get("WANDB_MODE") == "offline" and "transformers.integrations.integration_utils" not in sys.modules:
        # Prints "[INFO] Running in WANDB offline mode" when first imported (mteb imports it); it concerns
        # transformers' Trainer, which grace does not use.
        with contextlib.redirect_stdout(io.StringIO()):
            import transformers.integrations.integration_utils  # noqa: F401


@dataclass
class RunSummary:
    """The end of a training run in a few lines: where everything is, and the numbers that matter."""

    output_dir: Path
    steps: int
    seconds: float
    last_checkpoint: Path | None = None
    report: Path | None = None
    wandb: str | None = None  # the run's URL (online) or folder (offline)
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)  # key -> (first, last) value
    evaluation: str | None = None  # the before/after table as markdown
    evaluation_dir: Path | None = None
    sweep: str | None = None  # "final_eval/mean = 0.4321 (maximize)"
    notes: list[str] = field(default_factory=list)
    program: str = "grace-train"

    def render(self) -> str:
        minutes, seconds = divmod(round(self.seconds), 60)
        lines = [f"\n== {self.program}: {self.steps} steps in {minutes}m{seconds:02d}s ==", f"outputs: {self.output_dir}"]
        if self.last_checkpoint is not None:
            lines.append(f"last checkpoint: {self.last_checkpoint}")
        lines.append(f"metrics: {self.output_dir / 'metrics.jsonl'}")
        if self.report is not None:
            lines.append(f"report: {self.report}")
        if self.wandb is not None:
            offline = not self.wandb.startswith("http")
            lines.append(f"wandb: {self.wandb}" + (f" (offline; upload with `wandb sync {self.wandb}`)" if offline else ""))
        for key, (first, last) in self.metrics.items():
            lines.append(f"{key}: {first:.4g} at the first step, {last:.4g} at the last")
        if self.evaluation is not None:
            lines.append(f"\nbefore/after training ({self.evaluation_dir}):\n{self.evaluation}")
        if self.sweep is not None:
            lines.append(f"sweep value: {self.sweep}")
        lines.extend(self.notes)
        return "\n".join(lines)
