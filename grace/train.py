"""``grace-train``: the Hydra entry point of the trainer (``python -m grace.train`` works too).

Everything Hydra-specific lives here: composing ``conf/train.yaml`` with the typed schema, naming the
job's output directory and wandb run from its overrides, and making sure a multirun job that fails
still closes its wandb run (the trainer does that in a ``finally``) without taking the sweep down.

A user's mistake (a setting, the data, a model that cannot be loaded) ends a single run with one line
``grace-train: ...`` and exit code 2. Under multirun the same line is printed and the error re-raised:
Hydra records the job as failed, runs the remaining jobs and reports the failure at the end (a
SystemExit would escape Hydra's per-job handling and stop the sweep).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from grace.config import ConfigError, TrainConfig, register_configs
from grace.data.errors import DataError

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
register_configs()


def _job_identity(cfg: TrainConfig) -> tuple[Path, str, str | None]:
    """(output directory, run name, run group) for this Hydra job."""
    hydra_cfg = HydraConfig.get()
    overrides = hydra_cfg.job.override_dirname or "default"
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if cfg.trainer.output_dir is None:
        output_dir = Path(hydra_cfg.runtime.output_dir)
    elif multirun:  # an explicit directory shared by a sweep: one sub-directory per job
        output_dir = Path(cfg.trainer.output_dir) / f"{hydra_cfg.job.num}_{overrides}"
    else:
        output_dir = Path(cfg.trainer.output_dir)
    # The sweep directory's last two parts, "2025-01-31/14-02-11" by default: the time alone repeats daily.
    group = "/".join(Path(hydra_cfg.sweep.dir).parts[-2:]) if multirun else None
    return output_dir, overrides, group


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _main(dict_cfg: DictConfig) -> None:
    from grace.trainer import train  # heavy imports after Hydra has parsed the command line

    cfg: TrainConfig = OmegaConf.to_object(dict_cfg)
    output_dir, name, group = _job_identity(cfg)
    try:
        result = train(cfg, output_dir, run_name=name, run_group=group)
    except (ConfigError, DataError, OSError) as error:
        kind = "invalid configuration: " if isinstance(error, ConfigError) else ""
        message = " ".join(str(error).split())  # one line: transformers' messages span several
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            print(f"grace-train: job {HydraConfig.get().job.num} ({name}) failed: {kind}{message}", file=sys.stderr)
            raise
        print(f"grace-train: {kind}{message}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"outputs: {result.output_dir}\nlast checkpoint: {result.last_checkpoint}")
    if cfg.final_eval.enabled:
        _before_after(cfg, result.last_checkpoint, result.output_dir / "eval")


def _before_after(cfg: TrainConfig, checkpoint: Path, output_dir: Path) -> None:
    """The base model without and with a rationale, then the trained checkpoint, on a quick task subset."""
    from dataclasses import replace

    from grace.evaluation.runner import QUICK_SETTINGS, before_after
    from grace.trainer import resolve_device

    settings = replace(
        QUICK_SETTINGS,
        max_new_tokens=cfg.final_eval.max_new_tokens,
        batch_size=cfg.final_eval.batch_size,
        device=str(resolve_device(cfg.model.device)),  # where the run trained, GPU included
        dtype=cfg.model.dtype,
        generation=cfg.generation,
    )
    table = before_after(checkpoint, output_dir, base=cfg.model.source, tasks=list(cfg.final_eval.tasks), settings=settings)
    print(f"\nbefore/after training ({output_dir}):\n{table.to_markdown()}")


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # weight loading/saving bars would bury the step bar
    _main()


if __name__ == "__main__":
    main()
