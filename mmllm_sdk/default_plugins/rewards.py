"""The built-in rewards of the ``grpo`` recipe, registered through ``register_rewards`` as a plugin's would be:

- ``exact``, ``prefix``, ``choice``, ``number``, ``contains``: the metrics of ``mmllm eval`` as rewards, 1 when the
  completion scores right against its prompt's reference answer, else 0 (they need a reference);
- ``format``: 1 when the completion (spaces around it stripped) matches a regular expression, ``params: {pattern:
  ...}``, whole (``match: full``, the default) or anywhere (``match: search``); no reference needed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from mmllm_sdk.default_plugins.metrics import METRICS
from mmllm_sdk.errors import PluginError, SpecError
from mmllm_sdk.hookspecs import hookimpl
from mmllm_sdk.registry import Metric, Reward, get_registry
from mmllm_sdk.validation import StrictModel, validate

METRIC_REWARDS = ("exact", "prefix", "choice", "number", "contains")
MAX_PATTERN = 1000  # characters of a format reward's regular expression


class NoParams(StrictModel):
    """A reward without parameters."""


class FormatParams(StrictModel):
    pattern: str  # a Python regular expression the completion must match
    match: Literal["full", "search"] = "full"  # the whole completion, or anywhere in it


def metric_reward(name: str, metric: Metric) -> Callable[[dict[str, Any]], Reward]:
    """The factory of the reward that scores each completion with ``metric`` against its reference."""

    def score(completions: Sequence[str], references: Sequence[str], **_: Any) -> list[float]:
        return [metric(completion, reference) for completion, reference in zip(completions, references, strict=True)]

    def factory(params: dict[str, Any]) -> Reward:
        validate(NoParams, params, where=f"rewards: {name}: params")
        return Reward(score, needs_reference=True, description=f"{metric.description}: 1, else 0")

    return factory


def format_reward(params: dict[str, Any]) -> Reward:
    """1 when the completion matches ``params["pattern"]`` (whole, or anywhere with ``match: search``), else 0."""
    options = validate(FormatParams, params, where="rewards: format: params")
    if len(options.pattern) > MAX_PATTERN:
        raise SpecError(
            f"rewards: format: params.pattern has {len(options.pattern):,} characters; at most {MAX_PATTERN}."
        )
    try:
        compiled = re.compile(options.pattern, re.DOTALL)
    except re.error as exc:
        raise SpecError(
            f"rewards: format: params.pattern {options.pattern!r} is not a regular expression ({exc}); write it in "
            "Python's re syntax (in YAML, inside single quotes, a backslash is written once)."
        ) from None
    find = compiled.fullmatch if options.match == "full" else compiled.search

    def score(completions: Sequence[str], **_: Any) -> list[float]:
        return [float(find(completion.strip()) is not None) for completion in completions]

    return Reward(score, needs_reference=False, description="is 1 when the answer matches a regular expression")


@hookimpl
def register_rewards(register):
    for name in METRIC_REWARDS:
        register(name, metric_reward(name, METRICS[name]))
    register("format", format_reward)


class RewardSpec(StrictModel):
    """One reward of a ``grpo`` recipe: a registered reward's name, its weight in the sum, and its parameters."""

    name: str
    weight: float = 1.0  # the reward's share of each completion's total (TRL's reward_weights)
    params: dict[str, Any] = Field(default_factory=dict)  # what the reward's factory takes (format: {pattern: ...})


@dataclass(frozen=True)
class WeightedReward:
    name: str
    weight: float
    reward: Reward
    plugin: str  # who registered it (named when it fails)


def resolve_rewards(specs: Sequence[str | RewardSpec | dict[str, Any]]) -> list[WeightedReward]:
    """The rewards a recipe names (a name, or ``{name, weight, params}``), each made by its registered factory."""
    registry, resolved = get_registry(), []
    for spec in specs:
        spec = validate(RewardSpec, {"name": spec} if isinstance(spec, str) else spec, where="rewards")
        entry = registry.get("rewards", spec.name)
        made = entry.build(dict(spec.params))
        if not isinstance(made, Reward):
            if not callable(made):
                raise PluginError(
                    f"Plugin {entry.plugin!r}: the factory of reward {spec.name!r} returned {made!r}, which is neither "
                    "a Reward nor a function score(completions, **kwargs)."
                )
            made = Reward(made)
        resolved.append(WeightedReward(spec.name, spec.weight, made, entry.plugin))
    names = [reward.name for reward in resolved]
    if len(set(names)) < len(names):
        raise SpecError(f"rewards: {names} names a reward twice; give each once, with its weight.")
    return resolved
