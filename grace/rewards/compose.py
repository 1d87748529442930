"""The composed reward: a weighted sum of named components, each with an optional cap and schedule.

For rollout i at step t, with components c (``reward.components`` in the config, in that order)::

    contribution_c,i = clip(w_c(t) * value_c,i, -cap_c, cap_c)     (no clip without a cap)
    total_i          = sum_c contribution_c,i

``w_c(t)`` is the component's ``weight``, times a linear ramp when it has a ``schedule``: the factor goes
from ``start_factor`` at ``start_step`` to 1 at ``start_step + steps`` and stays there. The cap bounds
what a component can add to the total whatever its weight does, so a penalty can never swamp the
embedding reward ("capped mild penalties", arXiv 2511.16073).

A component is a function ``f(inputs: RewardInputs, **params)`` returning one value per rollout: an [R]
tensor (or a sequence of R numbers), or a ``ComponentValue`` whose named parts are logged too. Built-ins
(``BUILTINS``) are named by their key; any other callable by its dotted path (``_target_``). Component
names become metric keys (``reward/<name>_mean``, ``_std``, ``_within_group_std``: the contribution), so
they are plain identifiers that do not clash with the GRACE terms.

With the default, a single ``grace`` component of weight 1 without cap or schedule, ``total`` is
bit-for-bit the GRACE reward of ``compute_rewards`` (x * 1.0 is x in floating point; tested).
"""
from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from grace.data.roles import Role
from grace.numerics.finite import NonFiniteError, describe_values, nonfinite_rows
from grace.rewards.grace_terms import trained_rows
from grace.rewards.types import ComponentValue, RewardBreakdown, RewardInputs

BUILTINS = {
    "grace": "grace.rewards.grace_terms.grace_component",  # the GRACE terms of reward.variant
    "length": "grace.rewards.length.length_cost",  # -(tokens beyond params.budget)
    "truncation": "grace.rewards.truncation.truncation_penalty",  # -1 for a rationale cut without EOS
    "degenerate": "grace.rewards.degenerate.degenerate_penalty",  # repeated n-grams, (near-)empty text, a copy of the input
}
# Metric names already taken: the total and the GRACE terms of both variants.
RESERVED = ("total", "positive", "negative", "cluster", "cross", "contrastive")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


class ComponentError(ValueError):
    """A reward component that cannot be built or returned something unusable; the message names it."""


class NonFiniteReward(ComponentError, NonFiniteError):
    """A reward component returned NaN or an infinity: named with the rollouts and the step (it would spread
    to the whole group's advantages, and through the loss to every weight)."""


@dataclass(frozen=True)
class Ramp:
    """The weight's factor over training steps: ``start_factor`` until ``start_step``, then linear to 1."""

    start_factor: float = 0.0
    start_step: int = 0
    steps: int = 1

    def factor(self, step: int) -> float:
        progress = min(max((step - self.start_step) / self.steps, 0.0), 1.0)
        return self.start_factor + (1.0 - self.start_factor) * progress


@dataclass(frozen=True)
class Component:
    name: str
    function: Callable[..., Any]
    target: str  # dotted path of `function`, for messages
    weight: float = 1.0
    cap: float | None = None  # contributions are clipped to [-cap, cap]
    ramp: Ramp | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    def weight_at(self, step: int) -> float:
        return self.weight if self.ramp is None else self.weight * self.ramp.factor(step)

    def evaluate(self, inputs: RewardInputs) -> ComponentValue:
        """The component's value on ``inputs``, checked to be one float per rollout."""
        try:
            out = self.function(inputs, **self.params)
        except ComponentError:
            raise
        except Exception as error:
            raise ComponentError(f"reward component {self.name!r} ({self.target}) failed: {type(error).__name__}: {error}") from error
        value = out if isinstance(out, ComponentValue) else ComponentValue(out)
        rows = len(inputs)
        checked = {self.name: value.value, **value.terms}
        for name, tensor in checked.items():
            what = "" if name == self.name else f" part {name!r}"
            try:
                tensor = torch.as_tensor(tensor, dtype=torch.float32, device=inputs.embeddings.device)
            except (TypeError, ValueError, RuntimeError) as error:
                raise ComponentError(
                    f"reward component {self.name!r} ({self.target}){what} returned {type(tensor).__name__}, not numbers: "
                    f"{error}; a component returns one value per rollout, shape [{rows}]"
                ) from None
            if tensor.shape != (rows,):
                raise ComponentError(
                    f"reward component {self.name!r} ({self.target}){what} returned shape {list(tensor.shape)}; a component "
                    f"returns one value per rollout, shape [{rows}]"
                )
            checked[name] = tensor
            if rows_bad := nonfinite_rows(tensor):
                raise NonFiniteReward(self._nonfinite_message(what, tensor, rows_bad, inputs))
        return ComponentValue(checked.pop(self.name), checked)

    def _nonfinite_message(self, what: str, values: torch.Tensor, rows: list[int], inputs: RewardInputs) -> str:
        """Which component, which rollouts (row, example, role, text) and which step: a judge that failed on one
        rollout is found from the message alone."""
        first = rows[0]
        role = Role(int(inputs.role[first])).name.lower()
        text = inputs.texts[first] if first < len(inputs.texts) else ""
        text = text if len(text) <= 60 else text[:57] + "..."
        return (
            f"reward component {self.name!r} ({self.target}){what} returned non-finite values at step {inputs.step} for "
            f"{len(rows)} of {len(inputs)} rollouts: {describe_values(values, rows)}; the first is rollout {first} of "
            f"example {int(inputs.group[first])}, role {role}, text {text!r}. A component returns finite numbers: make it "
            "return a finite penalty (or raise) where it cannot score a rollout"
        )


def locate(path: str) -> Any:
    """The object at dotted ``path`` (``package.module.function``); ImportError saying what is missing."""
    parts = path.split(".")
    if len(parts) < 2 or not all(part.isidentifier() for part in parts):
        raise ImportError(f"{path!r} is not a dotted path such as my_package.rewards.my_component")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=1):
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        module = ".".join(parts[: i + 1])
        try:
            obj = importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:  # the module exists but imports something that does not
                raise
            raise ImportError(f"{'.'.join(parts[:i])} has no attribute or submodule {part!r}") from None
    return obj


def build_component(
    name: str,
    *,
    target: str | None = None,
    weight: float = 1.0,
    cap: float | None = None,
    ramp: Ramp | None = None,
    params: Mapping[str, Any] | None = None,
    injected: Mapping[str, Any] | None = None,
) -> Component:
    """Resolve and check one component (``ComponentError`` naming it): a known name or an importable
    callable, parameters its signature accepts, a finite weight, a positive cap, a sane ramp.
    ``injected``: parameters the composed reward supplies itself (the ``grace`` component's reward.*)."""
    where = f"reward.components.{name}"
    if not _NAME.fullmatch(name) or name in RESERVED:
        raise ComponentError(f"{where}: a component name must be a plain identifier other than {list(RESERVED)} (it names metrics)")
    path = target or BUILTINS.get(name)
    if path is None:
        raise ComponentError(f"{where}: no built-in component is called {name!r} (built-ins: {list(BUILTINS)}); give _target_: a dotted path to your function")
    try:
        function = locate(path)
    except Exception as error:  # ImportError, or whatever importing the user's module raised
        raise ComponentError(f"{where}._target_={path!r} cannot be imported: {type(error).__name__}: {error}") from None
    if not callable(function):
        raise ComponentError(f"{where}._target_={path!r} is a {type(function).__name__}, not a function")
    params = dict(params or {})
    if injected and params:
        raise ComponentError(f"{where}.params={params}: the {name} component takes its settings from reward.* ({', '.join(injected)})")
    try:
        inspect.signature(function).bind(None, **params, **(injected or {}))
    except TypeError as error:
        raise ComponentError(f"{where}: {path} cannot be called as f(inputs, **params) with params={params}: {error}") from None
    except ValueError:  # a callable without an inspectable signature: it will be checked when called
        pass
    if not torch.isfinite(torch.tensor(float(weight))):
        raise ComponentError(f"{where}.weight={weight} must be finite")
    if cap is not None and not cap > 0:
        raise ComponentError(f"{where}.cap={cap} must be positive (or null for no cap)")
    if ramp is not None and (ramp.steps < 1 or ramp.start_step < 0):
        raise ComponentError(f"{where}.schedule: steps={ramp.steps} must be >= 1 and start_step={ramp.start_step} >= 0")
    return Component(name, function, path, float(weight), cap, ramp, {**params, **(injected or {})})


class RewardFunction:
    """The composed reward of a run: ``reward_function(inputs) -> RewardBreakdown``."""

    def __init__(self, components: list[Component], variant: str) -> None:
        if not components:
            raise ComponentError("reward.components is empty: the reward needs at least one component (e.g. grace)")
        self.components = components
        self.variant = variant  # decides which roles are trained (grace_terms.trained_rows)

    @classmethod
    def from_config(cls, components: Mapping[str, Any], reward: Any, mode: str) -> "RewardFunction":
        """From ``grace.config.reward_components(cfg)`` (name -> ``ComponentConfig``), ``cfg.reward`` (the GRACE
        component's variant, tau and weights) and ``cfg.mode``."""
        grace_settings = {
            "variant": reward.variant, "mode": mode, "tau": reward.tau, "w_cluster": reward.w_cluster,
            "w_cross": reward.w_cross, "rank_truncated_last": reward.rank_truncated_last,
        }  # fmt: skip
        built = []
        for name, spec in components.items():
            target = getattr(spec, "_target_")
            schedule = spec.schedule
            ramp = None if schedule is None else Ramp(schedule.start_factor, schedule.start_step, schedule.steps)
            is_grace = (target or BUILTINS.get(name)) == BUILTINS["grace"]
            built.append(
                build_component(
                    name, target=target, weight=spec.weight, cap=spec.cap, ramp=ramp, params=dict(spec.params),
                    injected=grace_settings if is_grace else None,
                )  # fmt: skip
            )
        return cls(built, reward.variant)

    def __call__(self, inputs: RewardInputs) -> RewardBreakdown:
        contributions: dict[str, torch.Tensor] = {}
        terms: dict[str, torch.Tensor] = {}
        weights: dict[str, float] = {}
        capped: dict[str, torch.Tensor] = {}
        for component in self.components:
            value = component.evaluate(inputs)
            clash = set(value.terms) & (set(terms) | {c.name for c in self.components} | {"total"})
            if clash:
                raise ComponentError(f"reward component {component.name!r} ({component.target}) logs part(s) {sorted(clash)}, a name already taken")
            terms.update(value.terms)
            weight = component.weight_at(inputs.step)
            contribution = value.value * weight
            if component.cap is not None:
                capped[component.name] = contribution.abs() > component.cap
                contribution = contribution.clamp(-component.cap, component.cap)
            contributions[component.name] = contribution
            if component.ramp is not None:
                weights[component.name] = weight
        parts = list(contributions.values())
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return RewardBreakdown(total, terms, trained_rows(inputs.role, self.variant), contributions, weights, capped)
