"""The built-in metrics on hand-made answers: case, punctuation, articles, "The answer is B", numbers with units."""

from __future__ import annotations

import pytest

from mmllm_sdk.default_plugins.metrics import chosen_letter, first_number
from mmllm_sdk.registry import Metric, get_registry


def score(name: str, prediction: str, reference: str) -> float:
    return get_registry().get("metrics", name).value(prediction, reference)


@pytest.mark.parametrize(
    ("prediction", "reference", "right"),
    [
        ("Red.", "red", True),
        ("  THE Red circle!  ", "red circle", True),
        ("a red, circle", "Red circle.", True),
        ("Red circle", "red", False),
        ("", "red", False),
    ],
)
def test_exact_compares_normalised_text(prediction, reference, right):
    assert score("exact", prediction, reference) == float(right)


@pytest.mark.parametrize(
    ("prediction", "reference", "right"),
    [
        ("It is red.", "Red.", True),
        ("Red circle.", "Red.", True),
        ("In the top left.", "Top left.", True),
        ("There are 3 shapes.", "Three.", True),
        ("Dark red.", "Red.", False),
        ("Left top.", "Top left.", False),
        ("", "Red.", False),
    ],
)
def test_prefix_is_the_demos_rule(prediction, reference, right):
    assert score("prefix", prediction, reference) == float(right)


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("B", "B"),
        ("(b)", "B"),
        ("B. Paris", "B"),
        ("The answer is C", "C"),
        ("Answer: (D).", "D"),
        ("I think the answer is a", "A"),
        ("Paris", None),
        ("Because of that", None),
    ],
)
def test_the_letter_an_answer_picks(text, letter):
    assert chosen_letter(text) == letter


@pytest.mark.parametrize(
    ("prediction", "reference", "right"),
    [
        ("The answer is B.", "B", True),
        ("(b) Paris", "(B)", True),
        ("A", "B", False),
        ("Paris.", "Paris", True),
        ("paris, the capital", "Paris", True),
        ("Parisian", "Paris", False),
    ],
)
def test_choice_takes_a_letter_or_the_options_text(prediction, reference, right):
    assert score("choice", prediction, reference) == float(right)


@pytest.mark.parametrize(
    ("text", "value"),
    [("12 cm", 12.0), ("1,000 people", 1000.0), ("It is -3.5 degrees", -3.5), ("about seven", 7.0), ("none", None)],
)
def test_the_first_number_of_an_answer(text, value):
    assert first_number(text) == value


@pytest.mark.parametrize(
    ("prediction", "reference", "right"),
    [
        ("There are 3 cats.", "3", True),
        ("three", "3", True),
        ("3.0 kg", "3 kg", True),
        ("4", "3", False),
        ("", "3", False),
    ],
)
def test_number_compares_the_first_numbers(prediction, reference, right):
    assert score("number", prediction, reference) == float(right)


@pytest.mark.parametrize(
    ("prediction", "reference", "right"),
    [("It is a red circle.", "red circle", True), ("Reddish circle", "red circle", False), ("anything", "", False)],
)
def test_contains_finds_whole_words(prediction, reference, right):
    assert score("contains", prediction, reference) == float(right)


def test_loglik_choice_scores_the_picked_option_without_generating():
    metric = get_registry().get("metrics", "loglik-choice").value
    assert metric.by_likelihood and metric.labels and metric("Paris", "paris") == 1.0


def test_a_plugin_metric_function_is_wrapped_as_a_metric(plugin):
    from mmllm_sdk import hookimpl

    class Lenient:
        @hookimpl
        def register_metrics(self, register):
            register("always", lambda prediction, reference: 1)

    plugin(Lenient(), "mmllm-lenient")
    metric = get_registry().get("metrics", "always").value
    assert isinstance(metric, Metric) and metric("x", "y") == 1.0 and not metric.by_likelihood


def test_an_unknown_metric_names_the_registered_ones():
    from mmllm_sdk.errors import UnknownComponentError

    with pytest.raises(UnknownComponentError, match=r"'exactly' is not a registered metric\. Did you mean 'exact'\?"):
        get_registry().get("metrics", "exactly")
