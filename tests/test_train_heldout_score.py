"""A recipe's ``data.eval`` is scored with the task's metric at each evaluation, and the run ends with that score next to
the linear probe's ceiling on the same items."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from transformers import TrainerCallback

from mmllm_sdk.default_plugins.recipes.run import train
from mmllm_sdk.errors import SpecError

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 220)}


def write_split(folder, name, count, first):
    rows = []
    for index in range(first, first + count):
        colour = list(COLOURS)[index % 3]
        noise = np.random.default_rng(index).normal(0, 20, (32, 32, 3))
        image = Image.fromarray(np.clip(np.array(COLOURS[colour]) + noise, 0, 255).astype(np.uint8))
        image.save(folder / f"{index}.png")
        content = [{"type": "image", "path": f"{index}.png"}, {"type": "text", "text": "What colour is it?"}]
        rows.append({"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": colour}]})
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def recipe(image_spec, tmp_path, **data):
    return {
        "recipe": "sft",
        "model": image_spec,
        "data": {
            "train": write_split(tmp_path, "train", 30, 0),
            "eval": write_split(tmp_path, "heldout", 9, 100),
            **data,
        },
        "peft": {"method": "lora", "r": 4},
        "cache": {"dir": str(tmp_path / "cache")},
        "training": {
            "output_dir": str(tmp_path / "run"),
            "per_device_train_batch_size": 10,
            "num_train_epochs": 2,
            "eval_strategy": "epoch",
            "save_strategy": "no",
            "report_to": "none",
        },
    }


class Logs(TrainerCallback):
    def __init__(self):
        self.entries = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.entries.append(dict(logs or {}))


def test_each_evaluation_logs_the_answers_score_and_the_run_ends_with_it_next_to_the_probe(
    image_spec, tmp_path, capsys
):
    logs = Logs()
    result = train(recipe(image_spec, tmp_path, metric="prefix"), callbacks=[logs])
    evaluations = [entry for entry in logs.entries if "eval_loss" in entry]
    assert len(evaluations) == 2
    assert all(0 <= e["eval_score_low"] <= e["eval_score"] <= e["eval_score_high"] <= 1 for e in evaluations)
    err = capsys.readouterr().err
    assert "held-out score (prefix, 9 items): " in err
    assert "linear probe on the frozen encoder features (the ceiling, mmllm probe): " in err
    assert result.metrics["heldout_score"] == evaluations[-1]["eval_score"] and result.metrics["probe_score"] >= 2 / 3


def test_the_metric_is_checked_before_any_weight_loads(image_spec, tmp_path):
    with pytest.raises(SpecError, match=r"data\.metric.*'exactly'"):
        train(recipe(image_spec, tmp_path, metric="exactly"))


def test_metric_none_keeps_the_loss_only(image_spec, tmp_path, capsys):
    result = train(recipe(image_spec, tmp_path, metric="none"))
    assert "eval_score" not in capsys.readouterr().err and "heldout_score" not in result.metrics


def test_free_text_answers_are_scored_only_when_a_metric_is_named():
    from mmllm_sdk.data.formats import CONVERSATION, DataReport
    from mmllm_sdk.default_plugins.evaluation.heldout import answer_metric

    def report(answers, metric=None):
        examples = [
            {"messages": [{"role": "user", "content": "Say it."}, {"role": "assistant", "content": a}]} for a in answers
        ]
        return DataReport(examples, [], CONVERSATION, metric=metric)

    captions = report([f"A caption of scene {n}." for n in range(80)])
    labels = report(["Red.", "Blue."] * 40, metric="prefix")
    assert answer_metric(captions, None) is None and answer_metric(captions, "contains") == "contains"
    assert answer_metric(labels, None) == "prefix" and answer_metric(report(["Red."]), None) == "exact"


def test_early_stopping_ends_the_run_when_the_score_stops_improving(image_spec, tmp_path):
    logs, spec = Logs(), recipe(image_spec, tmp_path, metric="prefix")
    spec["training"]["num_train_epochs"] = 6
    spec["early_stopping"] = {"patience": 1, "threshold": 2.0}  # no change of a score is that large
    result = train(spec, callbacks=[logs])
    assert len([entry for entry in logs.entries if "eval_score" in entry]) == 2  # the first, then one without gain
    assert result.steps_trained == 6  # 2 of 6 epochs of 3 steps


def test_early_stopping_without_heldout_data_is_refused_before_anything_loads(image_spec, tmp_path):
    spec = recipe(image_spec, tmp_path)
    del spec["data"]["eval"], spec["training"]["eval_strategy"]
    spec["early_stopping"] = {"patience": 2}
    with pytest.raises(SpecError, match=r"early_stopping needs held-out data to watch: add data\.eval"):
        train(spec)
