"""Comparing models scored on the same items: each one's score, and each against the first with McNemar's test."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmllm_sdk.default_plugins.evaluation.run import EvalResult
from mmllm_sdk.default_plugins.evaluation.stats import Comparison, compare
from mmllm_sdk.errors import InputError
from mmllm_sdk.files import atomic_write

COMPARISON = "comparison.json"
SIGNIFICANT = 0.05  # the p-value below which a difference is called one


@dataclass
class ModelComparison:
    """Several models' results on the same items; ``paired[i]`` compares model ``i + 1`` with the first."""

    names: list[str]
    results: list[EvalResult]
    paired: list[Comparison]

    def table(self) -> str:
        """Lines for a terminal: each model's score with its interval, then its difference from the first."""
        width = max(len(name) for name in self.names)
        lines = [f"{self.names[0]:<{width}}  {self.results[0].score}  (baseline)"]
        for name, result, pair in zip(self.names[1:], self.results[1:], self.paired, strict=True):
            verdict = "a difference" if pair.p_value < SIGNIFICANT else "no clear difference"
            lines.append(
                f"{name:<{width}}  {result.score}  {pair.difference:+.3f}: right where the baseline is wrong on "
                f"{pair.only_b}, wrong where it is right on {pair.only_a}; McNemar p = {pair.p_value:.3g} ({verdict})"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        rows = [{"model": name, **result.to_dict()} for name, result in zip(self.names, self.results, strict=True)]
        for row, pair in zip(rows[1:], self.paired, strict=True):
            row["against_baseline"] = {
                "difference": pair.difference,
                "only_baseline_right": pair.only_a,
                "only_this_right": pair.only_b,
                "mcnemar_p": pair.p_value,
            }
        return {"baseline": self.names[0], "items": len(self.results[0].predictions), "models": rows}

    def write(self, folder: str | Path) -> Path:
        return atomic_write(Path(folder) / COMPARISON, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")


def compare_results(names: Sequence[str], results: Sequence[EvalResult]) -> ModelComparison:
    """Pair each result with the first; they must have scored the same items (same inputs and references, in order)
    with the same metric."""
    if len(results) < 2 or len(names) != len(results):
        raise InputError("A comparison needs at least two models' results, one name each.")
    first = results[0]
    for name, result in zip(names[1:], results[1:], strict=True):
        keys = lambda r: [(row["input"], row["reference"]) for row in r.predictions]  # noqa: E731
        if result.metric != first.metric or keys(result) != keys(first):
            raise InputError(
                f"{name} was scored on other items (or with another metric) than {names[0]}; models are compared "
                "on the same data, limit and metric."
            )
    paired = [
        compare([row["score"] for row in first.predictions], [row["score"] for row in result.predictions])
        for result in results[1:]
    ]
    return ModelComparison(list(names), list(results), paired)
