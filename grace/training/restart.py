"""Where a run starts: a fresh output directory, or the checkpoint it continues.

``trainer.resume=none`` starts at step 0 in a directory that holds no earlier run; ``auto`` continues the newest
checkpoint whose files match its manifest (``grace.training.checkpoint.checkpoint_problems``), naming each newer
damaged one it passes over; a checkpoint directory continues that checkpoint, refused when damaged. A run
directory left by a preempted run continues under ``none`` too (``grace.training.preemption.resume_setting``).
"""
from __future__ import annotations

import sys
from pathlib import Path

from grace.config import ConfigError, TrainConfig
from grace.training.checkpoint import checkpoint_problems, checkpoint_root, complete_checkpoints, newest_intact_checkpoint
from grace.training.run_logger import METRICS_FILE


def check_output_dir(cfg: TrainConfig, output_dir: Path, resume: str | None = None) -> None:
    """A fresh run must not write into an earlier run's directory: keep_last would delete its new step-1
    checkpoint at once (the old, higher steps are newer by number) and its metrics would be mixed in.
    ``resume``: trainer.resume as it applies (``resume_setting``); default as set."""
    if (resume or cfg.trainer.resume) != "none":
        return
    earlier = ["checkpoints"] if complete_checkpoints(output_dir) else []
    earlier += [METRICS_FILE] if (output_dir / METRICS_FILE).is_file() else []
    if earlier:
        raise ConfigError(
            f"{output_dir} already holds {' and '.join(earlier)} of an earlier run, which trainer.resume=none would "
            "overwrite: use trainer.resume=auto to continue, or a new trainer.output_dir"
        )


def find_resume_checkpoint(cfg: TrainConfig, output_dir: Path, resume: str | None = None) -> Path | None:
    """The checkpoint to continue (``resume``: trainer.resume as it applies, default as set). ``auto`` takes the
    newest intact one, naming each newer one whose files do not match its manifest; a named checkpoint that is
    damaged is refused (``ConfigError``)."""
    resume = resume or cfg.trainer.resume
    if resume == "none":
        return None
    if resume == "auto":
        found, broken = newest_intact_checkpoint(output_dir)
        for checkpoint, problems in broken:  # a copy cut short, a full disk while syncing: not trained from
            print(f"trainer.resume=auto: skipping damaged checkpoint {checkpoint} ({'; '.join(problems)})", file=sys.stderr)
        if found is None:  # fine for a first run, but a mistyped directory must not pass for one
            print(
                f"trainer.resume=auto: no {'intact ' if broken else ''}checkpoint in {checkpoint_root(output_dir)}, starting "
                "from step 0 (to continue an earlier run, set trainer.output_dir to its directory)"
            )
        return found
    if problems := checkpoint_problems(Path(resume)):
        raise ConfigError(f"trainer.resume={resume}: the checkpoint is damaged ({'; '.join(problems)}); use an older one, or trainer.resume=auto")
    return Path(resume)
