"""The ``synthetic-shapes`` data source: answer scoring, its params and the built-in plugin that registers it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mmllm_sdk.default_plugins.datasets.shapes import NUMBER_WORDS, PALETTE, POSITIONS, QUESTION_TYPES, SHAPES
from mmllm_sdk.default_plugins.datasets.synthetic import (
    SyntheticParams,
    build_synthetic_dataset,
    generate_examples,
    score_answer,
)
from mmllm_sdk.default_plugins.metrics import LEADING_FILLER
from mmllm_sdk.errors import InputError, SpecError

# scoring -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question_type", "generated", "expected", "right"),
    [
        ("colour", "Red.", "Red.", True),
        ("colour", "red", "Red.", True),
        ("colour", "  It is red.", "Red.", True),
        ("colour", "It's red!", "Red.", True),
        ("colour", "The shape is red.", "Red.", True),
        ("colour", "The colour is RED", "Red.", True),
        ("colour", "Red circle.", "Red.", True),
        ("colour", "Red. Or maybe blue.", "Red.", True),
        ("colour", "Blue. It is red.", "Red.", False),
        ("colour", "Dark red.", "Red.", False),
        ("colour", "I think it is red.", "Red.", False),
        ("colour", "Reddish.", "Red.", False),
        ("colour", "", "Red.", False),
        ("shape", "A circle.", "A circle.", True),
        ("shape", "circle", "A circle.", True),
        ("shape", "It is a circle.", "A circle.", True),
        ("shape", "An oval.", "A circle.", False),
        ("position", "Top left.", "Top left.", True),
        ("position", "In the top left corner.", "Top left.", True),
        ("position", "top-left", "Top left.", True),
        ("position", "Top.", "Top left.", False),
        ("position", "Left top.", "Top left.", False),
        ("position", "Centre.", "Center.", True),
        ("position", "Middle left.", "Center.", False),
        ("count", "Three.", "Three.", True),
        ("count", "3", "Three.", True),
        ("count", "There are three shapes.", "Three.", True),
        ("count", "Two.", "Three.", False),
    ],
)
def test_score_answer(question_type, generated, expected, right):
    assert score_answer(question_type, generated, expected) is right


def test_score_answer_refuses_an_unknown_question_type_or_an_empty_expectation():
    with pytest.raises(InputError, match="question_type 'size' is not one of"):
        score_answer("size", "Big.", "Big.")
    with pytest.raises(InputError, match="no content word"):
        score_answer("colour", "Red.", "It is.")


def test_no_answer_word_is_a_leading_filler_word():
    words = {w for value in (*PALETTE, *SHAPES, *POSITIONS, *NUMBER_WORDS) for w in value.split()}
    assert not words & LEADING_FILLER


def test_every_generated_answer_scores_as_right_and_every_rejected_one_as_wrong(tmp_path):
    for item in generate_examples({"task": "preference", "num_examples": 40, "out_dir": str(tmp_path)}):
        assert score_answer(item.question_type, item.answer, item.answer)
        assert not score_answer(item.question_type, item.rejected, item.answer)


# params --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"task": "qa", "num_examples": 2, "out_dir": "x", "colour": "red"}, "colour: is not a known field"),
        ({"task": "vqa", "num_examples": 2, "out_dir": "x"}, "task: Input should be 'captions', 'qa' or 'preference'"),
        ({"task": "qa", "out_dir": "x"}, "num_examples: is required but missing"),
        ({"task": "qa", "num_examples": 0, "out_dir": "x"}, "num_examples: Input should be greater than or equal to 1"),
        ({"task": "qa", "num_examples": 2}, "out_dir: is required but missing"),
        ({"task": "qa", "num_examples": 2, "out_dir": "x", "split": "test"}, "split: Input should be 'train' or"),
        ({"task": "qa", "num_examples": 2, "out_dir": "x", "image_size": 8}, "image_size: Input should be greater"),
        ({"task": "qa", "num_examples": 2, "out_dir": "x", "max_shapes": 10}, "max_shapes: Input should be less"),
        ({"task": "qa", "num_examples": 2, "out_dir": "x", "question_types": ["size"]}, "question_types.0: Input"),
        ({"task": "qa", "num_examples": 2, "out_dir": "x", "question_types": []}, "question_types is empty"),
        ({"task": "qa", "num_examples": 2, "out_dir": "x", "question_types": ["count", "count"]}, "a type twice"),
        ({"task": "captions", "num_examples": 2, "out_dir": "x", "question_types": ["count"]}, "not to 'captions'"),
    ],
)
def test_bad_params_are_refused_with_the_field_named(tmp_path, params, message):
    with pytest.raises(SpecError) as caught:
        build_synthetic_dataset(params)
    assert "synthetic-shapes.params." in str(caught.value) or "synthetic-shapes.params:" in str(caught.value)
    assert message in str(caught.value)
    assert not (tmp_path / "x").exists()


def test_the_factory_carries_its_params_model():
    assert build_synthetic_dataset.Params is SyntheticParams
    params = SyntheticParams(task="qa", num_examples=3, out_dir="x")
    assert (params.seed, params.split, params.image_size, params.max_shapes) == (0, "train", 224, 3)
    assert params.asked() == QUESTION_TYPES


# the plugin ----------------------------------------------------------------------------------------------------


def test_the_builtin_plugin_registers_synthetic_shapes_and_files():
    from mmllm_sdk.default_plugins import datasets
    from mmllm_sdk.default_plugins.datasets.files import build_files_dataset

    registered = []
    datasets.register_datasets(lambda *args: registered.append(args))
    assert registered == [("synthetic-shapes", build_synthetic_dataset), ("files", build_files_dataset)]


def test_the_plugin_module_imports_neither_torch_nor_transformers_nor_pillow():
    code = (
        "import sys, mmllm_sdk.default_plugins.datasets; "
        "print(sorted(m for m in ('torch', 'transformers', 'PIL') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
