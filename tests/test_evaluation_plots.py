"""The PNG plots of ``mmllm eval``, drawn by the real matplotlib and read back with PIL."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from mmllm_sdk.default_plugins.evaluation.plots import (
    MAX_BARS,
    OTHER,
    largest_categories,
    merge_labels,
    plot_confusion,
    plot_scores,
    shorten,
)
from mmllm_sdk.default_plugins.evaluation.stats import Score, wilson
from mmllm_sdk.errors import InputError


def scored(right: int, count: int) -> Score:
    return Score(right / count, *wilson(right / count, count), count)


def categories(number: int) -> dict[str, Score]:
    """ "all" and ``number`` categories of 1, 2, … items (so category i has i + 1 items)."""
    result = {"all": scored(number, 2 * number)}
    result.update({f"category {i}": scored((i + 1) // 2, i + 1) for i in range(number)})
    return result


def confusion_of(size: int) -> tuple[list[str], list[list[int]]]:
    """``size`` labels whose reference counts grow with their index; mostly right, some confused with the next."""
    labels = [f"label {i}" for i in range(size)]
    matrix = [[0] * size for _ in range(size)]
    for i in range(size):
        matrix[i][i], matrix[i][(i + 1) % size] = i + 2, 1
    return labels, matrix


def size_of_a_drawn_png(path: Path) -> tuple[int, int]:
    """The size of a PNG that PIL verifies and whose pixels are not all one colour."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        extrema = image.convert("RGB").getextrema()
        assert any(low != high for low, high in extrema), "the image is a single colour"
        return image.size


def test_a_score_plot_of_one_category_is_a_png(tmp_path):
    path = plot_scores(categories(1), tmp_path / "scores.png", title="VQA", metric="exact match")
    assert path == tmp_path / "scores.png"
    width, height = size_of_a_drawn_png(path)
    assert width > 0 and height > 0


def test_a_score_plot_grows_with_its_categories_up_to_a_cap(tmp_path):
    few = size_of_a_drawn_png(plot_scores(categories(1), tmp_path / "few.png", title="t", metric="m"))
    many = size_of_a_drawn_png(plot_scores(categories(60), tmp_path / "many.png", title="t", metric="m"))
    assert few[1] < many[1] <= 1400


def test_past_the_bar_limit_all_and_the_largest_categories_are_kept_in_their_order():
    scores = categories(60)
    kept = largest_categories(scores)
    assert len(kept) == MAX_BARS
    assert list(kept) == ["all"] + [f"category {i}" for i in range(60 - MAX_BARS + 1, 60)]


def test_unicode_long_and_dollar_names_are_drawn(tmp_path):
    scores = {
        "all": scored(3, 4),
        "Größe und Farbe – «été» ✓": scored(1, 2),
        "日本語のカテゴリ": scored(1, 1),
        "a category name far longer than any axis has room for": scored(0, 1),
        "costs $5 or $x^{": scored(1, 1),  # would be mathtext, and not valid mathtext
    }
    path = plot_scores(scores, tmp_path / "scores.png", title="$ scores", metric="accuracy $")
    size_of_a_drawn_png(path)
    assert shorten("a category name far longer than any axis has room for") == "a category name far longer th…"
    assert len(shorten("x" * 31)) == 30 and shorten("x" * 30) == "x" * 30


def test_a_confusion_plot_of_three_labels_is_a_png(tmp_path):
    labels, matrix = confusion_of(3)
    path = plot_confusion(labels, matrix, tmp_path / "confusion.png", title="Labels")
    assert path == tmp_path / "confusion.png"
    size_of_a_drawn_png(path)


def test_a_confusion_plot_of_thirty_long_labels_is_a_png(tmp_path):
    labels, matrix = confusion_of(30)
    labels = [f"{label}: a label with a long and unicode ñame ✓" for label in labels]
    size_of_a_drawn_png(plot_confusion(labels, matrix, tmp_path / "confusion.png", title="Labels"))


def test_merging_keeps_the_most_frequent_references_and_every_count():
    labels, matrix = confusion_of(30)
    merged_labels, merged = merge_labels(labels, matrix, 19)
    assert merged_labels == [f"label {i}" for i in range(11, 30)] + [OTHER]
    assert len(merged) == 20 and all(len(row) == 20 for row in merged)
    assert sum(map(sum, merged)) == sum(map(sum, matrix))
    assert merged[0][0] == matrix[11][11] and merged[-1][-1] == sum(matrix[i][i] for i in range(11)) + 10
    assert merged[-1][0] == 1  # label 10 answered as label 11


def test_merging_leaves_a_matrix_within_the_limit_as_it_is():
    labels, matrix = confusion_of(20)
    assert merge_labels(labels, matrix, 19) == (labels, matrix)


@pytest.mark.parametrize(
    "draw",
    [
        lambda path: plot_scores({}, path, title="t", metric="m"),
        lambda path: plot_confusion([], [], path, title="t"),
        lambda path: plot_confusion(["a", "b"], [[1, 0]], path, title="t"),
    ],
    ids=["no scores", "no labels", "matrix of the wrong shape"],
)
def test_nothing_to_plot_is_an_input_error_and_writes_nothing(tmp_path, draw):
    with pytest.raises(InputError):
        draw(tmp_path / "plot.png")
    assert list(tmp_path.iterdir()) == []


def test_writing_leaves_no_temporary_file(tmp_path):
    plot_scores(categories(3), tmp_path / "scores.png", title="t", metric="m")
    plot_confusion(*confusion_of(3), tmp_path / "confusion.png", title="t")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["confusion.png", "scores.png"]


def test_writing_over_a_png_replaces_it_whole(tmp_path):
    path = plot_scores(categories(60), tmp_path / "scores.png", title="big", metric="m")
    large = path.stat().st_size
    plot_scores(categories(1), path, title="small", metric="m")
    fresh = plot_scores(categories(1), tmp_path / "fresh.png", title="small", metric="m")
    assert path.stat().st_size < large and path.read_bytes() == fresh.read_bytes()
    size_of_a_drawn_png(path)
