"""``grace-sft``: supervised fine-tuning of the policy, and ``grace-sft sample``: demonstrations to tune on.

    grace-sft sample sample.output=demos.jsonl sample.num_examples=64     # best-of-k rationales of the policy
    grace-sft data.train_file=demos.jsonl trainer.output_dir=outputs/sft  # fine-tune on them (objective=sft)
    grace-train model.source=outputs/sft algorithm.kl_coef=0.05           # then GRACE, anchored to the SFT model

``grace-sft`` is ``grace-train`` on ``conf/sft.yaml`` (the training config with ``objective=sft``): the
same job, outputs, checkpoints, resume, logging, held-out evaluation, sweeps and report
(``grace.cli.train.run_job``). ``grace-sft sample`` composes ``conf/sample.yaml`` (the training settings plus
``sample.*``) and runs ``grace.training.demonstrations``. ``python -m grace.cli.sft [sample] ...`` works too.
"""
from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from grace.cli.train import CONF_DIR, join_ranks, run_job
from grace.config import ConfigError, SampleConfig
from grace.data.errors import DataError
from grace.distributed.launch import launched_by_torchrun
from grace.runs.console import quiet_third_party

SUBCOMMAND = "sample"


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="sft")
def _train(dict_cfg: DictConfig) -> float | None:
    return run_job(dict_cfg, "grace-sft")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="sample")
def _sample(dict_cfg: DictConfig) -> None:
    quiet_third_party()
    from grace.training.demonstrations import write_demonstrations  # heavy imports after Hydra has parsed the command line

    cfg: SampleConfig = OmegaConf.to_object(dict_cfg)
    try:
        write_demonstrations(cfg)
    except (ConfigError, DataError, OSError) as error:
        kind = "invalid configuration: " if isinstance(error, ConfigError) else ""
        print(f"grace-sft sample: {kind}{' '.join(str(error).split())}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == SUBCOMMAND:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        if launched_by_torchrun():
            raise SystemExit("grace-sft sample runs in one process: start it without torchrun")
        del sys.argv[1]  # Hydra parses the rest as overrides of conf/sample.yaml
        _sample()
    else:
        join_ranks()  # grace-sft is grace-train's job: it runs under torchrun the same way
        _train()


if __name__ == "__main__":
    main()
