"""``grace-eval``: evaluate GRACE encoders (and reference encoders) on MTEB tasks, side by side.

    grace-eval                                        # packaged SmolLM2 with a rationale, small suite
    grace-eval eval=baselines                         # full offline suite: base, base + rationale, MiniLM
    grace-eval eval.tasks=[offline] 'eval.models=[{source: outputs/run, label: GRACE}]'
    grace-eval eval.tasks=[STSBenchmark,SciFact]      # mteb's own tasks (need the network)
    grace-eval -m eval.max_new_tokens=32,64           # a Hydra sweep: one output folder per job
    grace-eval eval.tasks=[mteb-eng] eval.device=cuda # a standard benchmark (grace/evaluation/benchmarks.py)

Writes ``results.md`` and ``results.json`` to the run directory (``output_dir``), mteb's raw results
under ``<output_dir>/mteb/results/<model>/<revision>/``, and (``logger=wandb``, the default, offline
unless ``logger.mode=online``) a wandb run with the scores in its summary and the table. The config schema is ``grace.evaluation.config``:
a misspelt key, also inside a ``models`` entry, stops the run before any model loads.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf

from grace.evaluation.benchmarks import DataUnavailable, check_data_available
from grace.evaluation.config import EvaluateConfig
from grace.evaluation.report import ComparisonTable
from grace.evaluation.runner import evaluate_encoders
from grace.evaluation.tasks import OFFLINE_SUITE, get_tasks
from grace.runs.console import quiet_third_party
from grace.runs.job_names import register_resolver
from grace.training.run_logger import RunLogger

CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"
SCHEMA_NAME = "evaluate_schema"

log = logging.getLogger(__name__)

ConfigStore.instance().store(name=SCHEMA_NAME, node=EvaluateConfig)
register_resolver()  # hydra.sweep.subdir: ${grace.job_dir:...}


def prepare(cfg: DictConfig | EvaluateConfig) -> EvaluateConfig:
    """The checked config, with its tasks resolved and their data reachable. Raises ``ValueError`` for a
    bad key or value or an unknown task, ``DataUnavailable`` for a benchmark whose data is not here."""
    if isinstance(cfg, DictConfig):
        unknown = unknown_keys(cfg)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}: see grace/evaluation/config.py for the valid ones")
        cfg = OmegaConf.to_object(cfg)  # runs the __post_init__ checks
    assert isinstance(cfg, EvaluateConfig)
    if cfg.logger.backend not in ("wandb", "none") or cfg.logger.mode not in ("offline", "online", "disabled"):
        raise ValueError(f"logger.backend={cfg.logger.backend!r} / logger.mode={cfg.logger.mode!r}: use wandb|none and offline|online|disabled")
    check_data_available(get_tasks(list(cfg.eval.tasks)), OFFLINE_SUITE)
    return cfg


def run(cfg: DictConfig | EvaluateConfig, *, run_name: str | None = None, run_group: str | None = None) -> ComparisonTable:
    """Run an evaluation from a composed config (``main`` without Hydra's command line, for tests).

    With ``logger.backend=wandb`` the results table also goes to a wandb run of its own (job type
    ``eval``, in ``<output_dir>/wandb``): summary keys ``eval/<row>/<task>``, ``eval/<row>/mean`` and, for the
    last row, ``eval/<task>`` and ``eval/mean``, so a sweep's dashboard can rank its jobs.
    """
    config = prepare(cfg)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    logger_cfg = config.logger
    logger = RunLogger(
        output_dir,
        backend=logger_cfg.backend,
        config=dataclasses.asdict(config),
        resumed_step=0,
        project=logger_cfg.project,
        entity=logger_cfg.entity,
        mode=logger_cfg.mode,
        name=logger_cfg.name or run_name,
        group=logger_cfg.group or run_group,
        tags=list(logger_cfg.tags),
        job_type="eval",
    )
    exit_code = 1
    try:
        table = evaluate_encoders(config.eval.models, config.eval.tasks, output_dir, config.eval.settings())
        logger.log_evaluation("eval", table)
        exit_code = 0
    finally:
        location = logger.location
        logger.close(exit_code)
    log.info("results.md, results.json and mteb results in %s", output_dir.resolve())
    if location is not None:
        log.info("wandb run: %s", location)
    return table


def unknown_keys(node: DictConfig | ListConfig, path: str = "") -> list[str]:
    """Keys the schema does not define. Struct mode already rejects ``key=value`` for a missing key, but
    Hydra's ``+key=value`` adds it anyway and ``OmegaConf.to_object`` would then drop it silently."""
    if isinstance(node, ListConfig):
        children = [(f"{path}[{i}]", node._get_node(i)) for i in range(len(node))]
    else:
        schema = OmegaConf.get_type(node)
        known = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
        unknown = [f"{path}.{key}".lstrip(".") for key in node.keys() if known is not None and key not in known]
        if unknown:
            return unknown
        children = [(f"{path}.{key}".lstrip("."), node._get_node(key)) for key in node.keys()]
    found: list[str] = []
    for child_path, child in children:
        if isinstance(child, (DictConfig, ListConfig)) and not child._is_none():
            found += unknown_keys(child, child_path)
    return found


@hydra.main(config_path=str(CONFIG_DIR), config_name="evaluate", version_base="1.3")
def _main(cfg: DictConfig) -> float | None:
    """One evaluation; returns the last row's mean score (for a sweeper), None when a task is missing."""
    quiet_third_party()
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    name = hydra_cfg.job.override_dirname or "default"
    group = "/".join(Path(hydra_cfg.sweep.dir).parts[-2:]) if multirun else None
    try:
        config = prepare(cfg)
    except (ValueError, DataUnavailable) as error:  # a setting or the data: one line, no traceback
        message = " ".join(str(error).split())
        if multirun:
            print(f"grace-eval: job {hydra_cfg.job.num} ({name}) failed: {message}", file=sys.stderr)
            raise
        print(f"grace-eval: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    table = run(config, run_name=name, run_group=group)
    print(table.to_markdown())
    return table.primary_scores().get("mean")


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
