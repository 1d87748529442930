"""Training checkpoints: ``<output_dir>/checkpoints/step-N/``, each one a loadable GRACE encoder.

A checkpoint directory holds the model (safetensors; with LoRA the merged weights, and the adapter in
``adapter/``) and tokenizer, ``grace_encoder.json`` (prompt, pooling, decoding: what
``GraceEncoder.from_pretrained`` reads), ``trainer_state.pt`` (optimizer state keyed by parameter name,
scheduler, step, data position, RNG states) and ``train_config.yaml`` (the resolved config it was trained
with, which a resume is checked against: ``grace.training.resume``). It is written into a hidden staging directory
and renamed into place only when complete, so a run killed during a save leaves the previous checkpoint
intact; the staging debris is removed by the next save. Only the newest ``keep_last`` checkpoints are kept.

Written last, ``file_manifest.json`` (``grace.storage.integrity``) lists every file's size (and the hash of the
small ones): a checkpoint damaged later (a copy cut short, a full disk while syncing) is found by
``checkpoint_problems``, and a resume falls back to the newest intact one (``newest_intact_checkpoint``). Weights
holding NaN or an infinity are never written (``NonFiniteCheckpoint``); a full disk during a save ends it with a
message, the checkpoints already written untouched.
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch
import yaml
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from grace.distributed.lora import ADAPTER_DIR
from grace.embedding.encoder_files import ENCODER_CONFIG_FILE, write_encoder_files
from grace.embedding.pipeline import EmbeddingConfig
from grace.numerics.finite import NonFiniteError, first_nonfinite_tensors
from grace.storage.integrity import check_file_manifest, is_disk_full, write_file_manifest
from grace.storage.safe_names import readable_name
from grace.storage.staging import staged_directory

STATE_FILE = "trainer_state.pt"


class NonFiniteCheckpoint(NonFiniteError):
    """Weights holding NaN or an infinity, which a checkpoint never stores."""

TRAIN_CONFIG_FILE = "train_config.yaml"
_PREFIX = "step-"
NAME_CHARS = 60  # of the run name kept in an encoder name


def encoder_name(run_name: str, step: int) -> str:
    """``"<run name>-step-N"``: the name a checkpoint's encoder is saved under.

    Run names come from Hydra override strings, easily hundreds of characters holding slashes, and
    evaluation turns the encoder name into an mteb model name and a folder (at most 255 bytes). A long
    name is cut to ``NAME_CHARS``, characters unsafe in a file name (``/`` included) become ``-``, and
    either change adds 8 hex digits of the full name's hash to keep it distinct from its siblings
    (``grace.storage.safe_names.readable_name``); the trainer state keeps the full name. No ``grace/`` prefix: the
    evaluation adapter adds it.
    """
    return f"{readable_name(run_name, NAME_CHARS)}-step-{step}"


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Finished checkpoints, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.glob(f"{_PREFIX}*") if p.name[len(_PREFIX) :].isdigit() and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX) :]))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = complete_checkpoints(output_dir)
    return found[-1] if found else None


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Adapter(Protocol):
    def save(self, directory: Path) -> None: ...


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    embedding: EmbeddingConfig,
    trainer_state: dict[str, Any],
    *,
    keep_last: int,
    name: str,
    config: dict[str, Any] | None = None,
    adapter: Adapter | None = None,
    protect: Sequence[Path] = (),
    query_embedding: EmbeddingConfig | None = None,
) -> Path:
    """Write checkpoint ``step`` (``config``: the resolved training config, recorded as ``TRAIN_CONFIG_FILE``;
    ``adapter``: a LoRA adapter, saved into ``ADAPTER_DIR``; ``protect``: older checkpoints that ``keep_last``
    must not delete, such as the best held-out one; ``query_embedding``: how queries embed when not as
    ``embedding`` does, e.g. with a rationale while documents embed as plain text; None: as ``embedding``)."""
    root = checkpoint_root(output_dir)
    target = root / f"{_PREFIX}{step}"
    names, count = first_nonfinite_tensors(model.state_dict().items())
    if count:  # never a checkpoint that loads as a model of NaNs: the previous ones stay the newest
        raise NonFiniteCheckpoint(f"refusing to write checkpoint {target}: {count} weight tensors hold NaN or infinite values, first {names}")
    root.mkdir(parents=True, exist_ok=True)
    for debris in root.glob(f".{_PREFIX}*"):  # left by a save that was killed
        shutil.rmtree(debris, ignore_errors=True)
    # Staged beside the target as ".step-N-..." (the debris pattern above) and swapped in when complete;
    # the same step saved again (a resumed run repeating it) is replaced without a moment of absence.
    try:
        with staged_directory(target) as staging:
            write_encoder_files(staging, model, tokenizer, embedding, query_embedding, name)
            torch.save(trainer_state, staging / STATE_FILE)
            if adapter is not None:
                adapter.save(staging / ADAPTER_DIR)
            if config is not None:
                (staging / TRAIN_CONFIG_FILE).write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False))
            # Last: a checkpoint with its manifest was complete when written. The settings files are the user's to edit.
            write_file_manifest(staging, editable=[ENCODER_CONFIG_FILE, TRAIN_CONFIG_FILE])
    except OSError as error:
        if not is_disk_full(error):
            raise
        raise OSError(error.errno, disk_full_message(target, error, latest_checkpoint(output_dir))) from error
    for old in complete_checkpoints(output_dir)[:-keep_last]:
        if old not in protect:
            shutil.rmtree(old, ignore_errors=True)
    return target


def disk_full_message(target: Path, error: OSError, kept: Path | None) -> str:
    return (
        f"no space left on the device while writing checkpoint {target} ({error.strerror or error}): nothing of it was "
        f"kept, and the checkpoints written before are intact ({f'newest: {kept}' if kept else 'none yet'}); free "
        "space and continue with trainer.resume=auto"
    )


def load_trainer_state(checkpoint: str | Path) -> dict[str, Any]:
    path = Path(checkpoint) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint} is not a complete training checkpoint (no {STATE_FILE})")
    return torch.load(path, map_location="cpu", weights_only=False)


def checkpoint_problems(checkpoint: Path) -> list[str]:
    """What is wrong with ``checkpoint`` by its file manifest ([] when whole). A checkpoint written before
    manifests existed (grace 0.2 and older) is judged by its trainer state and weights config being there."""
    problems = check_file_manifest(checkpoint)
    if problems is not None:
        return problems
    return [f"{name} is missing" for name in (STATE_FILE, "config.json") if not (checkpoint / name).is_file()]


def newest_intact_checkpoint(output_dir: str | Path) -> tuple[Path | None, list[tuple[Path, list[str]]]]:
    """(the newest checkpoint whose files match its manifest, the newer ones that do not, with their problems)."""
    broken = []
    for checkpoint in reversed(complete_checkpoints(output_dir)):
        problems = checkpoint_problems(checkpoint)
        if not problems:
            return checkpoint, broken
        broken.append((checkpoint, problems))
    return None, broken
