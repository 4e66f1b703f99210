"""The statistics of a score: its 95 % interval, per category, and a paired test between two models on the same items.

Scores are per item, from 0 (wrong) to 1 (right). For right/wrong scores the interval is Wilson's score interval, which
stays inside [0, 1] and is honest for small counts and for scores near 0 or 1 (where the normal approximation is not);
for partial scores it is the normal approximation of the mean, clipped to [0, 1]. Two models answering the same items
are compared with McNemar's exact test on the items where exactly one of them is right.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mmllm_sdk.errors import InputError

Z95 = 1.959963984540054  # the standard normal quantile of 97.5 %: a two-sided 95 % interval


@dataclass(frozen=True)
class Score:
    """The mean of per-item scores, its 95 % interval and how many items it is over."""

    mean: float
    low: float
    high: float
    count: int

    def __str__(self) -> str:
        return f"{self.mean:.1%} [{self.low:.1%}, {self.high:.1%}] (n={self.count})"


def score(values: Sequence[float]) -> Score:
    """The mean of ``values`` with its 95 % interval (Wilson's for right/wrong values, else the normal one)."""
    if not values:
        raise InputError("There is nothing to score: no items were evaluated.")
    if any(not 0.0 <= value <= 1.0 for value in values):
        raise InputError("Per-item scores must lie between 0 (wrong) and 1 (right); a metric gave another value.")
    n, mean = len(values), math.fsum(values) / len(values)
    if all(value in (0.0, 1.0) for value in values):
        low, high = wilson(mean, n)
    else:
        spread = math.sqrt(math.fsum((value - mean) ** 2 for value in values) / max(n - 1, 1))
        low, high = max(0.0, mean - Z95 * spread / math.sqrt(n)), min(1.0, mean + Z95 * spread / math.sqrt(n))
    return Score(mean, low, high, n)


def wilson(share: float, count: int) -> tuple[float, float]:
    """Wilson's 95 % score interval of a share of right answers among ``count`` items."""
    z2 = Z95 * Z95
    centre = (share + z2 / (2 * count)) / (1 + z2 / count)
    half = Z95 * math.sqrt(share * (1 - share) / count + z2 / (4 * count * count)) / (1 + z2 / count)
    return max(0.0, centre - half), min(1.0, centre + half)


def by_category(values: Sequence[float], categories: Sequence[str]) -> dict[str, Score]:
    """The score of each category's items, categories in the order they first appear."""
    if len(values) != len(categories):
        raise InputError(f"{len(values)} scores but {len(categories)} categories; give one category per item.")
    groups: dict[str, list[float]] = {}
    for value, category in zip(values, categories, strict=True):
        groups.setdefault(category, []).append(value)
    return {category: score(group) for category, group in groups.items()}


@dataclass(frozen=True)
class Comparison:
    """Model B against model A on the same items: B's score minus A's, and McNemar's exact test."""

    difference: float
    only_a: int  # items A gets right and B wrong
    only_b: int  # items B gets right and A wrong
    p_value: float  # two-sided: how likely a split at least this uneven is when A and B are equally good


def compare(a: Sequence[float], b: Sequence[float]) -> Comparison:
    """Two models' right/wrong scores on the same items, in the same order (a score of 0.5 or more counts as right)."""
    if len(a) != len(b) or not a:
        raise InputError(f"Models compared must answer the same items: {len(a)} and {len(b)} scores.")
    right_a, right_b = [value >= 0.5 for value in a], [value >= 0.5 for value in b]
    only_a = sum(x and not y for x, y in zip(right_a, right_b, strict=True))
    only_b = sum(y and not x for x, y in zip(right_a, right_b, strict=True))
    return Comparison((math.fsum(b) - math.fsum(a)) / len(a), only_a, only_b, mcnemar(only_a, only_b))


def mcnemar(only_a: int, only_b: int) -> float:
    """McNemar's exact two-sided p-value: the binomial test of the discordant pairs against an even split."""
    pairs = only_a + only_b
    if pairs == 0:
        return 1.0
    tail = math.fsum(math.comb(pairs, i) for i in range(min(only_a, only_b) + 1)) / 2**pairs
    return min(1.0, 2 * tail)


def confusion(
    references: Sequence[str], predictions: Sequence[str], order: Sequence[str] = ()
) -> tuple[list[str], list[list[int]]]:
    """The labels (those of ``order``, then references', then other predictions', each first seen first) and
    counts[reference][prediction] for label answers."""
    labels = list(dict.fromkeys([*order, *references, *predictions]))
    index: Mapping[str, int] = {label: i for i, label in enumerate(labels)}
    counts = [[0] * len(labels) for _ in labels]
    for reference, prediction in zip(references, predictions, strict=True):
        counts[index[reference]][index[prediction]] += 1
    return labels, counts
