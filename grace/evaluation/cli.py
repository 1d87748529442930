"""``grace-eval``: evaluate GRACE encoders (and reference encoders) on MTEB tasks, side by side.

    grace-eval                                        # packaged SmolLM2 with a rationale, small suite
    grace-eval eval=baselines                         # full offline suite: base, base + rationale, MiniLM
    grace-eval eval.tasks=[offline] 'eval.models=[{source: outputs/run, label: GRACE}]'
    grace-eval eval.tasks=[STSBenchmark,SciFact]      # mteb's own tasks (need the network)
    grace-eval -m eval.max_new_tokens=32,64           # a Hydra sweep: one output folder per job

Writes ``results.md`` and ``results.json`` to the run directory (``output_dir``) and mteb's raw results
under ``<output_dir>/mteb/results/<model>/<revision>/``. The config schema is ``grace.evaluation.config``:
a misspelt key, also inside a ``models`` entry, stops the run before any model loads.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf

from grace.evaluation.config import EvaluateConfig
from grace.evaluation.report import ComparisonTable
from grace.evaluation.runner import evaluate_encoders
from grace.job_names import register_resolver

CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"
SCHEMA_NAME = "evaluate_schema"

logger = logging.getLogger(__name__)

ConfigStore.instance().store(name=SCHEMA_NAME, node=EvaluateConfig)
register_resolver()  # hydra.sweep.subdir: ${grace.job_dir:...}


def run(cfg: DictConfig | EvaluateConfig) -> ComparisonTable:
    """Run an evaluation from a composed config (``main`` without Hydra's command line, for tests)."""
    if isinstance(cfg, DictConfig):
        unknown = unknown_keys(cfg)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}: see grace/evaluation/config.py for the valid ones")
        cfg = OmegaConf.to_object(cfg)  # runs the __post_init__ checks
    config = cfg
    assert isinstance(config, EvaluateConfig)
    table = evaluate_encoders(config.eval.models, config.eval.tasks, config.output_dir, config.eval.settings())
    logger.info("results.md, results.json and mteb results in %s", Path(config.output_dir).resolve())
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
def main(cfg: DictConfig) -> None:
    table = run(cfg)
    print(table.to_markdown())


if __name__ == "__main__":
    main()
