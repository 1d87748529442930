"""The Hydra sweeper plugin of ``hparams_search=grace_optuna`` and the errors a search ends with.

Light on purpose (Hydra only; optuna loads when a search starts): ``grace-train`` registers the plugin at
every start, before Hydra reads the config. Hydra instantiates a sweeper only by a ``_target_`` inside the
``hydra_plugins`` namespace that its plugin registry knows; ``register_sweeper`` puts the class there under
``TARGET``, which ``conf/hparams_search/grace_optuna.yaml`` names. The loop itself:
``grace.runs.optuna_search``.
"""
from __future__ import annotations

from typing import Any

from hydra.errors import CompactHydraException
from hydra.plugins.sweeper import Sweeper

TARGET = "hydra_plugins.grace.GraceOptunaSweeper"


class SearchSpaceChanged(CompactHydraException):
    """A resumed study's parameter whose space Optuna cannot change; the message names it and what to do.
    Hydra prints a ``CompactHydraException`` as its one-line message, with no traceback."""


class SearchFailed(CompactHydraException):
    """More trials failed than ``hydra.sweeper.max_failure_rate`` allows, or none completed."""


class GraceOptunaSweeper(Sweeper):
    """Hydra's ``OptunaSweeper`` interface over ``grace.runs.optuna_search.GraceOptunaSweeperImpl``; it takes
    the settings of ``hydra/sweeper=optuna`` (``OptunaSweeperConf``)."""

    def __init__(self, **settings: Any) -> None:
        try:
            from grace.runs.optuna_search import GraceOptunaSweeperImpl
        except ImportError as error:
            raise ImportError(f"{error}: Optuna searches need the search extra: pip install 'grace-embed[search]'") from None
        self.sweeper = GraceOptunaSweeperImpl(**settings)

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        return self.sweeper.sweep(arguments)


def register_sweeper() -> None:
    """Make ``TARGET`` instantiable by Hydra (idempotent): Hydra's public ``Plugins.register`` files the
    class under its own module name, which Hydra refuses as a ``_target_`` outside ``hydra_plugins``, so the
    registry also gets the ``TARGET`` alias."""
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()
    plugins.register(GraceOptunaSweeper)
    plugins.class_name_to_class[TARGET] = GraceOptunaSweeper
