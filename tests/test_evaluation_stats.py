"""The statistics of a score against values computed by hand from their formulas."""

from __future__ import annotations

import math

import pytest

from mmllm_sdk.default_plugins.evaluation.stats import by_category, compare, confusion, mcnemar, score, wilson
from mmllm_sdk.errors import InputError


def test_wilsons_interval_of_8_right_out_of_10():
    low, high = wilson(0.8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)


def test_an_all_right_score_has_an_interval_below_one_that_narrows_with_more_items():
    few, many = score([1.0] * 10), score([1.0] * 100)
    assert few.mean == 1.0 and few.high == pytest.approx(1.0) and few.low == pytest.approx(0.7225, abs=1e-4)
    assert many.low == pytest.approx(0.9630, abs=1e-4)


def test_partial_scores_get_the_normal_interval_of_their_mean():
    result = score([0.5, 1.0, 0.0, 0.5])
    half = 1.959963984540054 * math.sqrt(((0.0) ** 2 + 0.5**2 + 0.5**2 + 0.0) / 3) / 2
    assert result.mean == 0.5 and result.low == pytest.approx(0.5 - half) and result.high == pytest.approx(0.5 + half)


def test_scores_per_category_keep_the_order_categories_first_appear():
    groups = by_category([1, 0, 1, 1], ["shape", "colour", "shape", "colour"])
    assert list(groups) == ["shape", "colour"] and groups["shape"].mean == 1.0 and groups["colour"].mean == 0.5


def test_mcnemars_exact_test_of_10_against_2():
    assert mcnemar(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert mcnemar(0, 0) == 1.0 and mcnemar(3, 3) == 1.0


def test_compare_counts_the_items_only_one_model_gets_right():
    result = compare([1, 1, 0, 0, 1], [1, 0, 1, 1, 1])
    assert (result.only_a, result.only_b) == (1, 2) and result.difference == pytest.approx(0.2)


def test_a_confusion_matrix_counts_each_reference_against_each_prediction():
    labels, counts = confusion(["red", "blue", "red"], ["red", "red", "green"])
    assert labels == ["red", "blue", "green"] and counts == [[1, 0, 1], [1, 0, 0], [0, 0, 0]]


def test_a_confusion_matrix_lists_the_labels_in_the_order_given_first():
    labels, counts = confusion(["red", "blue"], ["red", "(other)"], order=["blue", "red"])
    assert labels == ["blue", "red", "(other)"] and counts == [[0, 0, 1], [0, 1, 0], [0, 0, 0]]


@pytest.mark.parametrize("values", [[], [1.5], [-0.1]])
def test_nothing_to_score_or_a_score_out_of_range_is_an_input_error(values):
    with pytest.raises(InputError, match=r"nothing to score|between 0 \(wrong\) and 1 \(right\)"):
        score(values)
