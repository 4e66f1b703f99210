"""The PNG plots of ``mmllm eval``: each category's score with its 95 % interval, and the confusion matrix of labels.

Each plot is a ``matplotlib.figure.Figure`` drawn by the Agg canvas into memory, never through pyplot, so no global
state changes and nothing opens a window; the PNG is then written whole or not at all. matplotlib is imported only when
a plot is drawn (the ``plots`` extra). User text (names, titles) is drawn as is: a ``$`` never starts mathtext.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmllm_sdk.default_plugins.evaluation.stats import Score
from mmllm_sdk.errors import InputError
from mmllm_sdk.files import atomic_write

OVERALL = "all"  # the entry of every item: drawn in its own colour and always kept
MAX_BARS = 40  # bars in a score plot; categories with the fewest items beyond it are left out
MAX_LABELS = 20  # rows and columns of a confusion plot; the least frequent references beyond it become OTHER
OTHER = "(other)"
MAX_NAME = 30  # characters of a name on an axis; longer ones end in "…"
DPI = 100


def shorten(name: str, limit: int = MAX_NAME) -> str:
    """``name`` cut to ``limit`` characters, its end replaced by "…" when cut."""
    return name if len(name) <= limit else name[: limit - 1] + "…"


def largest_categories(scores: Mapping[str, Score], keep: int = MAX_BARS) -> dict[str, Score]:
    """``OVERALL`` and the categories of most items, ``keep`` entries in all, in their given order (ties: first
    given first)."""
    others = [name for name in scores if name != OVERALL]
    ranked = sorted(others, key=lambda name: -scores[name].count)[: keep - 1 if OVERALL in scores else keep]
    chosen = set(ranked) | ({OVERALL} & scores.keys())
    return {name: value for name, value in scores.items() if name in chosen}


def merge_labels(
    labels: Sequence[str], matrix: Sequence[Sequence[int]], keep: int
) -> tuple[list[str], list[list[int]]]:
    """The ``keep`` reference labels of most items (largest row sums; in their given order) and one ``OTHER`` label
    whose row and column sum those of all the others, so that every count stays in the matrix. Up to ``keep + 1``
    labels are returned as they are: merging a single label into ``OTHER`` would only rename it."""
    if len(labels) <= keep + 1:
        return list(labels), [list(row) for row in matrix]
    ranked = sorted(range(len(labels)), key=lambda i: -sum(matrix[i]))[:keep]
    slot = {i: position for position, i in enumerate(sorted(ranked))}  # the rest go to the last slot, OTHER
    merged = [[0] * (keep + 1) for _ in range(keep + 1)]
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            merged[slot.get(i, keep)][slot.get(j, keep)] += count
    return [labels[i] for i in sorted(ranked)] + [OTHER], merged


def plot_scores(scores: Mapping[str, Score], path: str | os.PathLike[str], *, title: str, metric: str) -> Path:
    """A bar per entry (top to bottom in the given order): its mean, its 95 % interval as an error bar, and its
    mean and item count on the right. ``OVERALL`` is drawn in its own colour. Beyond ``MAX_BARS`` entries the
    categories of fewest items are left out, and the title says how many."""
    if not scores:
        raise InputError("There are no scores to plot; evaluate at least one item first.")
    shown = largest_categories(scores)
    if left_out := len(scores) - len(shown):
        title = f"{title} ({left_out} smallest categories left out)"
    figure_class = _matplotlib()
    names, values = list(shown), list(shown.values())
    rows = range(len(values))
    figure = figure_class(figsize=(8, min(max(1.2 + 0.32 * len(values), 2.5), 14)), layout="constrained")
    axes = figure.add_subplot()
    means = [value.mean for value in values]
    errors = [[max(v.mean - v.low, 0.0) for v in values], [max(v.high - v.mean, 0.0) for v in values]]
    colours = ["tab:orange" if name == OVERALL else "tab:blue" for name in names]
    axes.barh(rows, means, xerr=errors, color=colours, ecolor="black", capsize=3)
    axes.set_xlim(0, 1)
    axes.set_ylim(len(values) - 0.5, -0.5)  # the first entry on top
    axes.set_yticks(rows, [shorten(name) for name in names], parse_math=False)
    axes.set_xlabel(f"{metric} (95 % interval)", parse_math=False)
    axes.set_title(title, parse_math=False)
    axes.grid(axis="x", alpha=0.3)
    notes = axes.secondary_yaxis("right")
    notes.set_yticks(rows, [f"{value.mean:.2f} (n={value.count})" for value in values])
    notes.tick_params(length=0)
    return _save(figure, path)


def plot_confusion(
    labels: Sequence[str], matrix: Sequence[Sequence[int]], path: str | os.PathLike[str], *, title: str
) -> Path:
    """A heatmap of ``matrix[reference][prediction]`` counts, each cell annotated, with a colour bar. Beyond
    ``MAX_LABELS`` labels the least frequent references are merged into ``OTHER`` (:func:`merge_labels`)."""
    if not labels:
        raise InputError("There are no labels to plot a confusion matrix of; evaluate at least one item first.")
    if len(matrix) != len(labels) or any(len(row) != len(labels) for row in matrix):
        raise InputError(f"A confusion matrix of {len(labels)} labels must have {len(labels)} rows of as many counts.")
    merged = len(labels) > MAX_LABELS
    labels, matrix = merge_labels(labels, matrix, MAX_LABELS - 1)
    figure_class = _matplotlib()
    from matplotlib.ticker import MaxNLocator

    size = len(labels)
    # colours span the named labels' counts, so that a large OTHER corner does not wash them out (it clips dark)
    top = max([1, *(count for row in matrix[: size - merged] for count in row[: size - merged])])
    side = min(max(2.5 + 0.45 * size, 5), 13)
    figure = figure_class(figsize=(side + 1, side), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap="Blues", vmin=0, vmax=top, aspect="auto")
    extend = "max" if max(map(max, matrix)) > top else "neither"
    figure.colorbar(image, ax=axes, label="items", extend=extend, ticks=MaxNLocator(integer=True))
    font = 10 if size <= 10 else 7
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            colour = "white" if image.norm(count) > 0.5 else "black"
            axes.text(j, i, str(count), ha="center", va="center", color=colour, fontsize=font)
    names = [shorten(label) for label in labels]
    axes.set_xticks(range(size), names, rotation=45, ha="right", rotation_mode="anchor", parse_math=False)
    axes.set_yticks(range(size), names, parse_math=False)
    axes.set_xlabel("prediction")
    axes.set_ylabel("reference")
    axes.set_title(title, parse_math=False)
    return _save(figure, path)


def _matplotlib() -> Any:
    """matplotlib's ``Figure`` class, or an error saying how to install matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise InputError("Plots need matplotlib, which is not installed; run pip install 'mmllm-sdk[plots]'.") from None
    return Figure


def _save(figure: Any, path: str | os.PathLike[str]) -> Path:
    """Draw ``figure`` with the Agg canvas into PNG bytes (no timestamp or version: the same input gives the same
    bytes) and write them to ``path`` whole or not at all."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # a glyph the font lacks (CJK, emoji) is drawn as a box; say nothing per glyph
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return atomic_write(path, buffer.getvalue())
