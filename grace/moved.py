"""Module paths from before the package layout (0.1, when every module sat flat in ``grace/``) still import.

``import grace.rollout``, ``from grace.encoder import GraceEncoder``, ``python -m grace.train`` and the like
keep working for outside code and scripts: each old path is an alias of the module that now holds the
code (the same module object, so ``isinstance`` and monkeypatching see one thing), with a
``DeprecationWarning`` naming the new path. CHANGELOG.md lists every move. The aliases go in a later release.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType

# Old path -> new path: every module that moved as a whole. Old modules that are packages now
# (grace.embedding, grace.retrieval) re-export their old names in their __init__ instead.
MOVED = {
    "grace.advantages": "grace.objectives.policy_gradient.advantages",
    "grace.cache": "grace.embedding.cache",
    "grace.checkpoint": "grace.training.checkpoint",
    "grace.compiled": "grace.generation.compiled",
    "grace.console": "grace.runs.console",
    "grace.demonstrations": "grace.training.demonstrations",
    "grace.embedding_loss": "grace.objectives.policy_gradient.embedding_loss",
    "grace.encoder": "grace.embedding.encoder",
    "grace.engine": "grace.generation.engine",
    "grace.finish": "grace.runs.epilogue",
    "grace.forward": "grace.model.forward",
    "grace.gguf": "grace.model.gguf",
    "grace.guards": "grace.training.guards",
    "grace.heldout": "grace.training.heldout",
    "grace.infonce": "grace.objectives.infonce",
    "grace.job_names": "grace.runs.job_names",
    "grace.kv_slots": "grace.generation.kv_slots",
    "grace.lora": "grace.distributed.lora",
    "grace.loss": "grace.objectives.policy_gradient.ppo_loss",
    "grace.models": "grace.model.loading",
    "grace.optim": "grace.objectives.optimizer",
    "grace.parallel": "grace.distributed.parallel",
    "grace.pooling": "grace.model.pooling",
    "grace.ppo": "grace.objectives.policy_gradient.ppo_update",
    "grace.prefix": "grace.generation.prefix",
    "grace.prompts": "grace.model.prompts",
    "grace.resume": "grace.training.resume",
    "grace.rollout": "grace.generation.rollout",
    "grace.run_plots": "grace.runs.plots",
    "grace.run_report": "grace.runs.report",
    "grace.sampling": "grace.generation.sampling",
    "grace.sft": "grace.cli.sft",
    "grace.sft_loss": "grace.objectives.sft_loss",
    "grace.shared_rollout": "grace.objectives.policy_gradient.global_batch",
    "grace.sources": "grace.model.sources",
    "grace.staging": "grace.storage.staging",
    "grace.sweep": "grace.runs.sweep_value",
    "grace.texts": "grace.embedding.texts",
    "grace.tracking": "grace.training.run_logger",
    "grace.train": "grace.cli.train",
    "grace.trainer": "grace.training.trainer",
    "grace.validation": "grace.training.validation",
}


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path and loads it as the module at its new path."""

    def __init__(self) -> None:
        self._specs: dict[str, object] = {}

    def find_spec(self, fullname: str, path: object = None, target: object = None):
        if fullname not in MOVED:
            return None
        # The new file as origin, for ``python -m <old path>`` (runpy sets ``__file__`` from it).
        return importlib.util.spec_from_loader(fullname, self, origin=importlib.util.find_spec(MOVED[fullname]).origin)

    def create_module(self, spec) -> ModuleType:
        warnings.warn(f"{spec.name} moved to {MOVED[spec.name]}; import it from there", DeprecationWarning, stacklevel=2)
        module = importlib.import_module(MOVED[spec.name])
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system stamped the alias's spec on the real module: give it its own back.
        module.__spec__ = self._specs.pop(module.__spec__.name, module.__spec__)

    def get_code(self, fullname: str):
        """For ``python -m <old path>`` (runpy): the new module's code, run as ``__main__``."""
        new = MOVED[fullname]
        return importlib.util.find_spec(new).loader.get_code(new)


def install() -> None:
    """Put the old-path finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, _OldPaths) for finder in sys.meta_path):
        sys.meta_path.append(_OldPaths())


def old_names(package: str, target: str, names: tuple[str, ...]):
    """A module ``__getattr__`` for a package that was a module before the layout: ``package.<name>`` for
    each of ``names`` is looked up in ``target`` on first use (so importing the package stays light)."""

    def __getattr__(name: str):
        if name in names:
            return getattr(importlib.import_module(target), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
