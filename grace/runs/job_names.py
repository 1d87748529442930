"""Names of sweep jobs: one flat, readable, bounded directory per job, whatever its override values hold.

Hydra names a job from its overrides (``hydra.job.override_dirname``, "key=value,key=value"). Used raw as a
path, a value such as ``data.train_file=/x/a.jsonl`` nests the job five directories deep, a long value
overflows the file-name limit (255 bytes: the sweep then crashes when Hydra makes the directory), and
quotes, spaces or non-ASCII letters make names that shells and other tools trip over. Here a name keeps
the characters that are safe everywhere (letters, digits, ``. _ = , + -``), replaces runs of any other by
one ``-`` (accents are dropped first: "naïve" reads "naive"), is cut to a bound, and, when anything was
replaced or cut, ends with 8 hex digits of the full string's hash, so two jobs never share a name.

* ``job_dirname(num, overrides)``: ``"<num>_<name>"`` (name cut at 200 characters), a job's directory under
  the sweep directory (the ``${grace.job_dir:...}`` resolver of ``conf/train.yaml`` and
  ``conf/evaluate.yaml``) or under ``trainer.output_dir``;
* ``job_label(overrides)``: the wandb run name (cut at 100: wandb refuses names over 128 characters), and
  the start of every checkpoint's encoder name;
* ``record_job``: ``job.yaml`` in the job's directory keeps the overrides in full, since the name may not.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from grace.storage.safe_names import readable_name

DIR_CHARS = 200  # of the overrides kept in a directory name: with number and hash, below the 255-byte limit
LABEL_CHARS = 100  # in a run name: with the hash, below wandb's limit of 128 characters
JOB_FILE = "job.yaml"
RESOLVER = "grace.job_dir"


def job_label(override_dirname: str) -> str:
    """A job's readable name from its overrides ("default" for none): its wandb run name."""
    return readable_name(override_dirname or "default", LABEL_CHARS)


def job_dirname(num: int | str, override_dirname: str) -> str:
    """``"<num>_<overrides>"``: one flat directory name per job (``"<num>_"`` without overrides, as Hydra's)."""
    return f"{num}_{readable_name(override_dirname, DIR_CHARS) if override_dirname else ''}"


def register_resolver() -> None:
    """``${grace.job_dir:${hydra.job.num},${hydra.job.override_dirname}}`` for ``hydra.sweep.subdir``."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, job_dirname)


def record_job(output_dir: Path, hydra_cfg: Any) -> None:
    """Write ``job.yaml`` (job number, every override in full, the sweep directory) into ``output_dir``,
    creating it: a job whose directory cannot be made fails here, alone."""
    output_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "num": int(hydra_cfg.job.num),
        "overrides": list(hydra_cfg.overrides.task),
        "override_dirname": str(hydra_cfg.job.override_dirname),
        "sweep_dir": str(hydra_cfg.sweep.dir),
    }
    (output_dir / JOB_FILE).write_text(yaml.safe_dump(record, allow_unicode=True, sort_keys=False), encoding="utf-8")
