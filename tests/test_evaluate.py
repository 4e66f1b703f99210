"""``mmllm_sdk.evaluate`` and ``mmllm eval`` on a tiny model, end to end: scores, files, and bad input."""

from __future__ import annotations

import json

import pytest

import mmllm_sdk
from mmllm_sdk.cli import main
from mmllm_sdk.errors import InputError, SpecError, UnknownComponentError
from mmllm_sdk.registry import get_registry


@pytest.fixture
def qa_file(tmp_path, image_file):
    rows = [
        {
            "messages": [
                {"role": "user", "content": [{"type": "image", "path": str(image_file)}, {"type": "text", "text": q}]},
                {"role": "assistant", "content": a},
            ]
        }
        for q, a in [("What is it?", "Stripes."), ("Which colour?", "Red."), ("How many?", "Three.")]
    ]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_the_score_is_the_metrics_mean_over_the_answers_and_both_files_are_written(image_model, qa_file, tmp_path):
    result = mmllm_sdk.evaluate(
        image_model, str(qa_file), metric="contains", max_new_tokens=3, output_dir=tmp_path / "ev"
    )
    contains = get_registry().get("metrics", "contains").value
    rows = [json.loads(line) for line in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    assert [row["reference"] for row in rows] == ["Stripes.", "Red.", "Three."]
    assert result.score.mean == pytest.approx(sum(contains(r["prediction"], r["reference"]) for r in rows) / 3)
    assert rows[0]["input"] == "user: <image> What is it?" and rows[0]["source"] == f"{qa_file}:1"
    saved = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert (
        saved["metric"] == "contains" and saved["score"]["count"] == 3 and saved["sdk_version"] == mmllm_sdk.__version__
    )
    assert saved["data"]["files"] == [str(qa_file)] and "mmllm_sdk.default_plugins.encoders" in saved["plugins"]


def test_a_data_source_gives_its_categories_and_its_default_metric(image_model, tmp_path):
    source = {
        "dataset": "synthetic-shapes",
        "params": {
            "task": "qa",
            "num_examples": 4,
            "split": "heldout",
            "image_size": 32,
            "out_dir": str(tmp_path / "s"),
        },
    }
    result = mmllm_sdk.evaluate(image_model, source, max_new_tokens=2, progress=False)
    assert result.metric == "prefix" and list(result.categories) == ["colour", "shape", "position", "count"]
    assert "colour" in result.table() and result.score.count == 4


def test_unpaired_answers_score_against_the_desirable_ones_only(image_model, tmp_path, image_file):
    prompt = [{"role": "user", "content": [{"type": "image", "path": str(image_file)}, {"type": "text", "text": "Q?"}]}]
    rows = [
        {"prompt": prompt, "completion": "Red.", "label": True},
        {"prompt": prompt, "completion": "Blue.", "label": False},
        {"prompt": prompt, "completion": "Round.", "label": True},
    ]
    path = tmp_path / "feedback.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = mmllm_sdk.evaluate(image_model, str(path), max_new_tokens=1)
    assert [row["reference"] for row in result.predictions] == ["Red.", "Round."]


def test_limit_scores_the_first_items_only(image_model, qa_file):
    assert len(mmllm_sdk.evaluate(image_model, str(qa_file), limit=2, max_new_tokens=1).predictions) == 2


def test_data_without_reference_answers_names_the_record_and_writes_nothing(image_model, tmp_path):
    (tmp_path / "q.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}]}) + "\n")
    with pytest.raises(InputError, match=r"q\.jsonl:1: The conversation has no assistant message"):
        mmllm_sdk.evaluate(image_model, str(tmp_path / "q.jsonl"), output_dir=tmp_path / "ev")
    assert not (tmp_path / "ev").exists()


def test_an_unknown_metric_lists_the_registered_ones_and_writes_nothing(image_model, qa_file, tmp_path):
    with pytest.raises(UnknownComponentError, match=r"'exatc' is not a registered metric\. Did you mean 'exact'\?"):
        mmllm_sdk.evaluate(image_model, str(qa_file), metric="exatc", output_dir=tmp_path / "ev")
    assert not (tmp_path / "ev").exists()


def test_data_of_a_modality_the_model_lacks_is_a_spec_error(image_model, tmp_path, wav_file):
    row = {
        "messages": [
            {"role": "user", "content": [{"type": "audio", "path": str(wav_file)}]},
            {"role": "assistant", "content": "A tone."},
        ]
    }
    (tmp_path / "a.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises((SpecError, InputError), match=r"audio"):
        mmllm_sdk.evaluate(image_model, str(tmp_path / "a.jsonl"))


def test_results_of_an_earlier_run_are_replaced_only_with_overwrite(image_model, qa_file, tmp_path):
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "results.json").write_text("earlier")
    with pytest.raises(InputError, match=r"results\.json exist from an earlier run; pass --overwrite"):
        mmllm_sdk.evaluate(image_model, str(qa_file), output_dir=tmp_path / "ev")
    assert (tmp_path / "ev" / "results.json").read_text() == "earlier"
    mmllm_sdk.evaluate(image_model, str(qa_file), max_new_tokens=1, output_dir=tmp_path / "ev", overwrite=True)
    assert json.loads((tmp_path / "ev" / "results.json").read_text())["score"]["count"] == 3


def test_mmllm_eval_prints_the_table_and_writes_the_files(image_model, qa_file, tmp_path, capsys):
    image_model.save_pretrained(tmp_path / "ckpt")
    argv = ["eval", str(tmp_path / "ckpt"), str(qa_file), "--metric", "exact", "--max-new-tokens", "2"]
    assert main([*argv, "--output-dir", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("exact on 3 items:\nall  ") and f"Wrote {tmp_path / 'ev' / 'results.json'}" in out
    saved = json.loads((tmp_path / "ev" / "results.json").read_text())["checkpoint"]
    manifest = json.loads((tmp_path / "ckpt" / "mmllm.json").read_text())
    assert saved == {"path": str((tmp_path / "ckpt").resolve()), "digest": manifest["digest"]}


def test_mmllm_eval_refuses_a_data_param_without_a_value(capsys, tmp_path):
    assert main(["eval", "model.yaml", "synthetic-shapes", "--data-param", "split"]) == 2
    assert "--data-param 'split' must look like KEY=VALUE" in capsys.readouterr().err


def test_an_example_without_an_answer_from_a_data_source_names_it(image_model):
    from mmllm_sdk.data.examples import Conversation, Message, TextPart
    from mmllm_sdk.data.formats import DataReport

    asked = Conversation((Message("user", (TextPart("Hi"),)),), source="my-source:7")
    with pytest.raises(InputError, match=r"my-source:7 has no reference answer"):
        mmllm_sdk.evaluate(image_model, DataReport(examples=[asked], skipped=[], kind="conversation"))
