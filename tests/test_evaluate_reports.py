"""``mmllm eval`` beyond the score: options picked by likelihood, categories from records, the feature cache, the
plots, and comparing models on the same items."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import mmllm_sdk
from mmllm_sdk.cli import main
from mmllm_sdk.errors import DataError, InputError
from mmllm_sdk.model.scoring import answer_logprobs

COLOURS = ["red", "green", "blue"]


@pytest.fixture
def colours_file(tmp_path):
    """Six one-colour images, each asked about with its options and a category."""
    rows = []
    for index, colour in enumerate(COLOURS * 2):
        Image.new("RGB", (24, 24), colour).save(tmp_path / f"{index}.png")
        rows.append(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "path": f"{index}.png"},
                            {"type": "text", "text": "What colour is it?"},
                        ],
                    },
                    {"role": "assistant", "content": colour},
                ],
                "choices": COLOURS,
                "category": "warm" if colour == "red" else "cool",
            }
        )
    path = tmp_path / "colours.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_loglik_choice_answers_with_the_option_of_the_highest_log_likelihood(image_model, colours_file):
    result = mmllm_sdk.evaluate(image_model, str(colours_file), metric="loglik-choice", progress=False)
    first = result.predictions[0]
    asked = [
        {
            "role": "user",
            "content": [
                {"type": "image", "path": str(colours_file.parent / "0.png")},
                {"type": "text", "text": "What colour is it?"},
            ],
        }
    ]
    expected = [
        s.logprob
        for s in answer_logprobs(image_model, [[*asked, {"role": "assistant", "content": c}] for c in COLOURS])
    ]
    assert first["choices"] == COLOURS and first["logprobs"] == pytest.approx(expected, abs=1e-4)
    assert first["prediction"] == COLOURS[expected.index(max(expected))]
    assert result.score.mean == sum(row["prediction"] == row["reference"] for row in result.predictions) / 6


def test_a_record_without_options_is_named_when_the_metric_picks_among_them(image_model, qa_file_without_choices):
    with pytest.raises(InputError, match=r"q\.jsonl:1 lists no options, and metric 'loglik-choice'"):
        mmllm_sdk.evaluate(image_model, str(qa_file_without_choices), metric="loglik-choice")


@pytest.fixture
def qa_file_without_choices(tmp_path):
    row = {"messages": [{"role": "user", "content": "Say red."}, {"role": "assistant", "content": "red"}]}
    (tmp_path / "q.jsonl").write_text(json.dumps(row) + "\n")
    return tmp_path / "q.jsonl"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("choices", "red", r"'choices' lists an item's options .* got a JSON string"),
        ("choices", ["red"], r"'choices' .* got a list of 1"),
        ("choices", ["red", "red"], r"'choices' .* 2 to 64 different texts"),
        ("choices", ["red", 3], r"'choices' .* got a list of 2"),
        ("category", ["a"], r"'category' groups items .* got a JSON array"),
        ("category", "x" * 1001, r"'category' .* got 1,001 characters"),
    ],
)
def test_malformed_options_and_categories_name_the_record_and_field(image_model, tmp_path, field, value, message):
    row = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "red"}], field: value}
    (tmp_path / "q.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=r"q\.jsonl:1: " + message):
        mmllm_sdk.evaluate(image_model, str(tmp_path / "q.jsonl"))


def test_records_categories_give_scores_per_category(image_model, colours_file):
    result = mmllm_sdk.evaluate(image_model, str(colours_file), max_new_tokens=2, progress=False)
    assert {name: s.count for name, s in result.categories.items()} == {"warm": 2, "cool": 4}


def test_cached_features_give_the_same_answers_as_encoding_each_time(image_model, colours_file, tmp_path):
    cached = mmllm_sdk.evaluate(image_model, str(colours_file), max_new_tokens=4, cache_dir=tmp_path / "cache")
    assert len([p for p in (tmp_path / "cache").rglob("*") if p.is_file()]) == 3  # one per distinct image
    again = mmllm_sdk.evaluate(image_model, str(colours_file), max_new_tokens=4, cache_dir=tmp_path / "cache")
    fresh = mmllm_sdk.evaluate(image_model, str(colours_file), max_new_tokens=4, cache=False)
    assert [r["prediction"] for r in cached.predictions] == [r["prediction"] for r in fresh.predictions]
    assert [r["prediction"] for r in again.predictions] == [r["prediction"] for r in fresh.predictions]


def test_the_plots_are_pngs_and_a_label_metric_adds_a_confusion_matrix(image_model, colours_file, tmp_path):
    result = mmllm_sdk.evaluate(image_model, str(colours_file), metric="exact", output_dir=tmp_path / "ev")
    for name in ("scores.png", "confusion.png"):
        with Image.open(tmp_path / "ev" / name) as image:
            assert image.format == "PNG" and image.width > 100
    labels, counts = result.confusion
    assert labels[:3] == sorted(COLOURS) and sum(map(sum, counts)) == 6
    saved = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert saved["plots"] == ["scores.png", "confusion.png"] and saved["confusion"]["counts"] == counts


def test_a_rerun_without_a_confusion_matrix_removes_the_earlier_one(image_model, colours_file, tmp_path):
    mmllm_sdk.evaluate(image_model, str(colours_file), metric="exact", max_new_tokens=1, output_dir=tmp_path / "ev")
    mmllm_sdk.evaluate(
        image_model, str(colours_file), metric="contains", max_new_tokens=1, output_dir=tmp_path / "ev", overwrite=True
    )
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == ["predictions.jsonl", "results.json", "scores.png"]


def test_a_model_lacking_an_items_modality_is_refused_before_answering(tokenizer_dir, colours_file):
    from mmllm_sdk.default_plugins.datasets.files import read_examples
    from mmllm_sdk.testing import tiny_spec

    text_model = mmllm_sdk.build_model(tiny_spec(tokenizer_dir, inputs=("audio",)), progress=False)
    with pytest.raises(InputError, match=r"colours\.jsonl:1 gives image inputs, but the model takes only audio"):
        mmllm_sdk.evaluate(text_model, read_examples(colours_file))


def test_compare_scores_each_model_on_the_same_items_with_mcnemars_test(image_spec, colours_file, tmp_path, capsys):
    first = mmllm_sdk.build_model(image_spec, progress=False)
    first.save_pretrained(tmp_path / "a")
    first.save_pretrained(tmp_path / "b")
    argv = [
        "eval",
        str(tmp_path / "a"),
        str(colours_file),
        "--metric",
        "loglik-choice",
        "--compare",
        str(tmp_path / "b"),
    ]
    assert main([*argv, "--output-dir", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert "+0.000: right where the baseline is wrong on 0, wrong where it is right on 0; McNemar p = 1" in out
    saved = json.loads((tmp_path / "ev" / "comparison.json").read_text())
    assert [m["model"] for m in saved["models"]] == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert saved["models"][1]["against_baseline"]["mcnemar_p"] == 1.0
    assert (tmp_path / "ev" / "0-a" / "results.json").is_file() and (tmp_path / "ev" / "1-b" / "results.json").is_file()


def test_compare_refuses_an_earlier_comparison_without_overwrite(image_spec, colours_file, tmp_path, capsys):
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "comparison.json").write_text("earlier")
    assert main(["eval", "a", str(colours_file), "--compare", "b", "--output-dir", str(tmp_path / "ev")]) == 2
    assert "comparison.json exists from an earlier run; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "ev" / "comparison.json").read_text() == "earlier"


def test_a_run_that_stops_midway_leaves_the_earlier_results_whole(image_model, colours_file, tmp_path):
    from mmllm_sdk.registry import Metric

    mmllm_sdk.evaluate(image_model, str(colours_file), metric="exact", max_new_tokens=1, output_dir=tmp_path / "ev")
    before = {p.name: p.read_bytes() for p in (tmp_path / "ev").iterdir()}
    calls = []

    def breaks_on_the_fourth(prediction, reference):
        calls.append(prediction)
        if len(calls) == 4:
            raise RuntimeError("the metric broke")
        return 1.0

    with pytest.raises(RuntimeError, match="the metric broke"):
        mmllm_sdk.evaluate(
            image_model,
            str(colours_file),
            metric=Metric(breaks_on_the_fourth),
            max_new_tokens=1,
            batch_size=2,
            output_dir=tmp_path / "ev",
            overwrite=True,
        )
    assert {p.name: p.read_bytes() for p in (tmp_path / "ev").iterdir()} == before  # no half-written or temporary file
