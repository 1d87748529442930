"""Resuming with other settings: refused when they change the run's trajectory, unless accepted by name.

Every checkpoint records the resolved config it was trained with (``checkpoints/step-N/train_config.yaml``).
A resume compares the new config with it before anything loads, and stops with a ``ConfigError`` naming
each changed setting with its old and new value: a resumed run that silently continues its data position
in another file, with another batch size or seed, is a different experiment under the old one's name.

The comparison is deny-by-default: every setting must match except the few listed in ``FREE``, which
decide how long a run goes, what it saves and logs, and how the same computation is laid out on the
hardware. A setting added to the schema later is therefore protected without anyone remembering to list
it (a checkpoint written before it existed matches when the new setting has its default value). A change
made on purpose is accepted by naming it, e.g. ``trainer.resume_accept_changes=[seed,data.train_file]``
(a section such as ``rollout`` accepts every setting under it).

Checkpoints written before configs were recorded still resume, with a warning. ``record_start`` keeps the
config of every start of a run: ``configs/start-N.yaml``, with ``config.yaml`` the newest. ``starting_model``
pins the model the run started from (its KL reference), so a resume keeps it.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from grace.config import ConfigError, TrainConfig
from grace.model.sources import resolve_source
from grace.training.checkpoint import TRAIN_CONFIG_FILE

# The settings that may differ between the starts of one run, and why each leaves the trajectory alone.
FREE: dict[str, str] = {
    "trainer.max_steps": "how far the run goes; under trainer.schedule=cosine it also shapes the learning rate, "
    "so there it must match",
    "trainer.save_every": "when checkpoints are written",
    "trainer.keep_last": "how many checkpoints are kept",
    "trainer.resume": "where the run continues from",
    "trainer.resume_accept_changes": "which changes a resume accepts",
    "trainer.output_dir": "where the run's files go",
    "trainer.rationale_log_every": "which rationales are logged",
    "trainer.rationale_log_count": "which rationales are logged",
    # Compute layout: the same arithmetic grouped differently, equal up to floating-point rounding.
    "trainer.micro_batch_size": "gradient accumulation: the micro-batches add up to the same mini-batch gradient",
    "rollout.batch_size": "rows generated together: every row samples from its own seeded random stream",
    "model.device": "where it runs: the sampling streams are CPU generators seeded per row, on any device",
    "model.gradient_checkpointing": "recomputes activations in the backward pass instead of storing them",
    "trainer.strategy": "how the global batch is spread over processes (world size, DDP or FSDP): every rank rolls "
    "out its share with the same per-row seeds and the loss is normalised over the global batch (grace/distributed/parallel.py)",
    "generation": "how rollouts are computed (shared prefix, continuous batching, compilation), never what they are",
    "model.trust_remote_code": "permission to run the model's own code, not a setting of the model",
    "logger": "where numbers go (wandb, progress bar)",
    "final_eval": "what runs after training",
    "sweep": "which number the finished run hands to a sweeper",
    "report": "whether and what the end-of-run report shows",
    "trainer.guards": "when the run stops early and what it warns about: the detectors only read the metrics",
    "trainer.keep_best": "which checkpoints are kept",
    "trainer.max_skipped_updates": "when a run of skipped updates (non-finite loss or gradient) stops the run; each skip is the same",
    "trainer.heldout.batch_size": "texts embedded together in the held-out evaluation, which leaves training alone",
}
START_MODEL_FILE = "start_model.json"
_ABSENT = object()


@dataclass(frozen=True)
class Change:
    key: str  # dotted, e.g. "data.train_file"
    old: Any  # _ABSENT: not recorded (a setting added since the checkpoint was written)
    new: Any

    def __str__(self) -> str:
        old = "(not recorded)" if self.old is _ABSENT else repr(self.old)
        return f"{self.key}: {old} -> {self.new!r}"


def resolved_config(cfg: TrainConfig) -> dict[str, Any]:
    """The config as plain data, interpolations resolved: what a checkpoint records."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def read_checkpoint_config(checkpoint: Path) -> dict[str, Any] | None:
    """The config ``checkpoint`` was trained with; None for a checkpoint written before they were recorded."""
    path = Path(checkpoint) / TRAIN_CONFIG_FILE
    if not path.is_file():
        return None
    try:
        recorded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path} is unreadable ({error}): the settings of this checkpoint are unknown") from None
    if not isinstance(recorded, dict):
        raise ConfigError(f"{path} holds no config: the settings this checkpoint was trained with are unknown")
    return recorded


def changed_settings(recorded: dict[str, Any], current: dict[str, Any]) -> list[Change]:
    """Settings of ``current`` that differ from ``recorded`` and change the trajectory (all but ``FREE``).

    A setting ``recorded`` lacks (added to the schema since) counts as unchanged when ``current`` holds its
    default; one ``current`` lacks (removed since) cannot be set any more and is not compared.
    """
    old, new = _flatten(recorded), _flatten(current)
    defaults = _flatten(resolved_config(TrainConfig()))
    cosine = current.get("trainer", {}).get("schedule") == "cosine"
    changes = []
    for key, value in new.items():
        if _is_free(key) and not (key == "trainer.max_steps" and cosine):
            continue
        before = old.get(key, _ABSENT)
        if before is _ABSENT and value == defaults.get(key, _ABSENT):
            continue
        if before != value:
            changes.append(Change(key, before, value))
    return changes


def check_resume(cfg: TrainConfig, checkpoint: Path | None) -> None:
    """Refuse (``ConfigError``) to resume ``checkpoint`` with settings that change the run's trajectory and
    are not listed in ``trainer.resume_accept_changes``; call before anything loads."""
    accepted = _accepted_keys(cfg)
    if checkpoint is None:
        return
    recorded = read_checkpoint_config(checkpoint)
    if recorded is None:
        warnings.warn(
            f"{checkpoint} records no training config (it was written before grace kept one), so this run's "
            "settings cannot be checked against the ones it was trained with: resuming as asked",
            stacklevel=2,
        )
        return
    changes = changed_settings(recorded, resolved_config(cfg))
    refused = [c for c in changes if not any(c.key == a or c.key.startswith(a + ".") for a in accepted)]
    if refused:
        raise ConfigError(
            f"resuming {checkpoint} with settings that change the run's trajectory: {'; '.join(map(str, refused))}. "
            "Set them back, start a new run in a new trainer.output_dir, or accept the changes on purpose with "
            f"trainer.resume_accept_changes=[{','.join(c.key for c in refused)}]"
        )
    if changes:
        print(f"resuming {checkpoint} with accepted changes: {'; '.join(map(str, changes))}")


def record_start(cfg: TrainConfig, output_dir: Path, resumed_from: Path | None) -> Path:
    """Keep this start's config: ``configs/start-N.yaml`` (N = 1, 2, ...) and ``config.yaml`` (the newest).

    A run directory from before per-start records holds only ``config.yaml``: it becomes ``start-1``.
    """
    starts = output_dir / "configs"
    starts.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.stem[6:]) for p in starts.glob("start-*.yaml") if p.stem[6:].isdigit()]
    latest = output_dir / "config.yaml"
    if not numbers and latest.is_file():
        (starts / "start-1.yaml").write_text(latest.read_text())
        numbers = [1]
    number = max(numbers, default=0) + 1
    how = f"resumed from {resumed_from}" if resumed_from is not None else "from step 0"
    text = OmegaConf.to_yaml(cfg)
    (starts / f"start-{number}.yaml").write_text(f"# start {number} of this run, {how}\n{text}")
    latest.write_text(text)
    return starts / f"start-{number}.yaml"


def starting_model(cfg: TrainConfig, output_dir: Path, resumed_from: Path | None) -> str:
    """The model this run started from: the policy of its first step and its KL reference for good.

    ``model.source`` resolved at the first start and pinned in ``<output_dir>/start_model.json``: a training
    run directory (e.g. an SFT run) names its newest checkpoint, which may change if that run goes on, but
    a resumed run must keep the reference it started with (not the newer checkpoint, and not its own
    checkpoint it resumes from). Sources that name fixed weights (packaged, .gguf, hub ids) are kept as given.
    """
    pin = output_dir / START_MODEL_FILE
    if resumed_from is not None and pin.is_file():
        return json.loads(pin.read_text())["source"]
    resolved = resolve_source(cfg.model.source)
    source = str(resolved.path.resolve()) if resolved.kind == "directory" else cfg.model.source
    pin.write_text(json.dumps({"model.source": cfg.model.source, "source": source}, indent=2) + "\n")
    return source


def _accepted_keys(cfg: TrainConfig) -> list[str]:
    """``trainer.resume_accept_changes``, each entry checked to name a setting or a section of settings."""
    keys = _flatten(resolved_config(cfg)).keys()
    accepted = [str(a) for a in cfg.trainer.resume_accept_changes]
    for entry in accepted:
        if not any(key == entry or key.startswith(entry + ".") for key in keys):
            raise ConfigError(
                f"trainer.resume_accept_changes names {entry!r}, which is no setting: use dotted keys as on the "
                "command line, e.g. [seed,data.train_file,trainer.batch_size]"
            )
    return accepted


def _is_free(key: str) -> bool:
    return any(key == free or key.startswith(free + ".") for free in FREE)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are values (compared whole)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
