"""Hostile and careless recipes: wrong training values, output folders to keep, encoders that output NaN or give an
infinite gradient. Each is refused (or stopped) with a sentence naming the field, value, file or component; nothing
that was there is changed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from mmllm_sdk.cli import main
from mmllm_sdk.components.encoder import ModalityEncoder
from mmllm_sdk.default_plugins.recipes.run import train
from mmllm_sdk.errors import CheckpointError, DataError, SpecError, TrainingError
from mmllm_sdk.hookspecs import hookimpl
from mmllm_sdk.testing import tiny_spec
from mmllm_sdk.training.spec import load_recipe, parse_recipe


def spec_with(**training):
    """A recipe whose model spec does not exist: the training values must be refused before anything loads."""
    return {"recipe": "pt", "model": "missing.yaml", "data": {"train": "x.jsonl"}, "training": training}


# training values, checked against TrainingArguments' types before the Trainer sees them -----------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("learning_rate", "abc", r"training.learning_rate: Input should be a valid number, .* \(got 'abc'\)"),
        ("learning_rate", [0.1, 0.2], r"training.learning_rate: Input should be a valid number \(got \[0.1, 0.2\]\)"),
        ("learning_rate", float("nan"), r"training.learning_rate: Input should be a finite number \(got nan\)"),
        ("bf16", "maybe", r"training.bf16: Input should be a valid boolean, .* \(got 'maybe'\)"),
        ("max_steps", "ten", r"training.max_steps: Input should be a valid integer, .* \(got 'ten'\)"),
        ("report_to", 5, r"training.report_to: Input should be a valid string or a valid list \(got 5\)"),
        (
            "lr_scheduler_type",
            "sawtooth",
            r"training.lr_scheduler_type: Input should be 'linear', 'cosine', .*'sawtooth'",
        ),
        ("optim", "sgd-please", r"training.optim: Input should be 'adamw_torch', .* \(got 'sgd-please'\)"),
        (
            "per_device_train_batch_size",
            0,
            r"training.per_device_train_batch_size: .* greater than or equal to 1 \(got 0\)",
        ),
        ("per_device_train_batch_size", -4, r"training.per_device_train_batch_size: .* than or equal to 1 \(got -4\)"),
        ("gradient_accumulation_steps", 0, r"training.gradient_accumulation_steps: .* than or equal to 1 \(got 0\)"),
        ("num_train_epochs", -1, r"training.num_train_epochs: Input should be greater than or equal to 0 \(got -1\)"),
        (
            "seed",
            2**70,
            r"training.seed: Input should be less than or equal to 4294967295 \(got 1180591620717411303424\)",
        ),
        (
            "learning_rate",
            "-1e-3",
            r"training.learning_rate: Input should be greater than or equal to 0 \(got '-1e-3'\)",
        ),
        ("learning_rat", 0.1, r"training.learning_rat: is not a TrainingArguments field; did you mean 'learning_rate'"),
    ],
)
def test_a_training_value_of_the_wrong_type_or_range_names_field_value_and_type(field, value, message):
    with pytest.raises(SpecError, match=message):
        train(spec_with(output_dir="o", **{field: value}))


def test_every_wrong_training_value_is_named_at_once():
    with pytest.raises(SpecError) as caught:
        parse_recipe(spec_with(output_dir="o", learning_rate="fast", bf16="maybe", seed=-3))
    assert [line.split(":")[0].strip() for line in str(caught.value).splitlines()[1:]] == [
        "training.learning_rate",
        "training.bf16",
        "training.seed",
    ]


@pytest.mark.parametrize("training", [{"learning_rate": 0.1}, {"output_dir": None}])
def test_a_recipe_without_output_dir_says_it_is_required(training):
    with pytest.raises(SpecError, match=r"training.output_dir: is required but missing"):
        parse_recipe(spec_with(**training))


def test_numbers_written_as_text_are_taken_as_the_numbers_they_spell(tmp_path):
    (tmp_path / "pt.yaml").write_text(
        "recipe: pt\nmodel: ./model.yaml\ndata: {train: ./c.jsonl}\n"
        "training: {output_dir: ./runs/pt, learning_rate: 1e-3, num_train_epochs: '5', max_steps: '20', bf16: 'no', "
        "lr_scheduler_type: cosine, report_to: [tensorboard]}\n"
    )
    training = load_recipe(tmp_path / "pt.yaml").training
    assert training["learning_rate"] == 0.001 and training["num_train_epochs"] == 5.0 and training["max_steps"] == 20
    assert training["bf16"] is False and training["lr_scheduler_type"] == "cosine"
    assert training["report_to"] == ["tensorboard"]


def test_training_that_is_not_a_mapping_is_refused():
    spec = spec_with()
    spec["training"] = ["output_dir", "o"]
    with pytest.raises(SpecError, match=r"training: Input should be a valid dictionary"):
        parse_recipe(spec)


def test_an_unknown_recipe_name_lists_the_registered_ones(tmp_path):
    spec = {**spec_with(output_dir=str(tmp_path / "run")), "recipe": "ppo"}
    with pytest.raises(SpecError, match=r"recipe: 'ppo' is not a registered recipe\. Did you mean 'dpo'\?.* pt, sft"):
        train(spec)
    assert not (tmp_path / "run").exists()


def test_a_recipe_whose_model_spec_is_missing_names_the_file(tmp_path):
    missing = tmp_path / "nowhere" / "model.yaml"
    spec = {**spec_with(output_dir=str(tmp_path / "run")), "model": str(missing)}
    with pytest.raises(SpecError, match=rf"The spec file '{re.escape(str(missing))}' does not exist"):
        train(spec)
    assert not (tmp_path / "run").exists()


def test_an_unknown_recipe_field_lists_the_fields(tmp_path):
    spec = {**spec_with(output_dir="o"), "traning": {"learning_rate": 0.1}}
    with pytest.raises(SpecError, match=r"traning: is not a known field; the fields here are: recipe, model, data"):
        parse_recipe(spec)


# the output folder: never a file, never an earlier run without --overwrite or --resume -------------------------------


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (links not followed) by relative path: its sha256."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


@pytest.mark.parametrize("kind", ["a file", "a link to a file", "inside a file", "a dangling link"])
def test_an_output_dir_that_is_not_a_folder_names_it_and_changes_nothing(tmp_path, kind):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    output_dir = {
        "a file": notes,
        "a link to a file": tmp_path / "link",
        "inside a file": notes / "run",
        "a dangling link": tmp_path / "dangling",
    }[kind]
    (tmp_path / "link").symlink_to(notes)
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    before = snapshot(tmp_path)
    shown = re.escape(str(notes if kind == "inside a file" else output_dir))
    message = rf"training.output_dir '{re.escape(str(output_dir))}': '{shown}' is not a folder this process may write"
    with pytest.raises(SpecError, match=message):
        train(spec_with(output_dir=str(output_dir)))
    assert snapshot(tmp_path) == before and notes.read_text() == "keep me"
    assert not (tmp_path / "gone").exists()


@pytest.mark.parametrize("earlier", ["checkpoint-3", "mmllm.json", "trainable.safetensors", "data_report.json", ".x"])
def test_an_output_dir_holding_an_earlier_run_is_refused_before_anything_is_written(tmp_path, earlier):
    run = tmp_path / "run"
    target = run / earlier
    if earlier.startswith("checkpoint-"):
        target.mkdir(parents=True)
        target = target / "trainable.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"an earlier run's bytes")
    before = snapshot(run)
    message = rf"'{re.escape(str(run))}' is not empty \({re.escape(earlier)}: an earlier run\?\); continue the run"
    with pytest.raises(TrainingError, match=message):
        train(spec_with(output_dir=str(run)))
    assert snapshot(run) == before


def test_mmllm_train_on_an_output_dir_that_is_a_file_prints_a_sentence_not_a_traceback(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    recipe = tmp_path / "pt.yaml"
    recipe.write_text(yaml.safe_dump(spec_with(output_dir=str(notes))))
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: training.output_dir") and f"'{notes}' is not a folder" in err
    assert "Traceback" not in err and notes.read_text() == "keep me"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([], r"is not empty \(checkpoint-3: an earlier run\?\); continue the run in it with --resume, write over it"),
        (["--overwrite"], r"The spec file '.*missing.yaml' does not exist"),
    ],
)
def test_mmllm_train_refuses_an_earlier_run_unless_overwrite_is_given(tmp_path, capsys, flags, message):
    (tmp_path / "run" / "checkpoint-3").mkdir(parents=True)
    recipe = tmp_path / "pt.yaml"
    recipe.write_text(yaml.safe_dump(spec_with(output_dir=str(tmp_path / "run"))))
    assert main(["train", str(recipe), *flags]) == 2
    assert re.search(message, capsys.readouterr().err)  # --overwrite: past the folder, to the next check


# a loss or gradient that is not finite stops the run, naming the step and the component -----------------------------


class FaultyEncoder(ModalityEncoder):
    """A tiny image encoder (4 tokens of 8) with a fault: ``nan`` outputs NaN features; ``gate`` scales its features
    by 1 + sqrt(gate), a trainable gate that starts at 0: the same features, but the gate's gradient is infinite
    (the derivative of sqrt at 0) while the loss is finite."""

    def __init__(self, params):
        super().__init__()
        self.modality, self.num_tokens, self.output_dim = "image", 4, 8
        self.fault = params.get("fault")
        self.embed = nn.Linear(3, 8)
        self.gate = nn.Parameter(torch.zeros(1))

    def preprocess(self, items):
        pixels = [
            np.asarray(item.convert("RGB").resize((2, 2)), dtype=np.float32).reshape(4, 3) / 255 for item in items
        ]
        return {"pixels": torch.from_numpy(np.stack(pixels))}  # (B, 4, 3)

    def forward(self, pixels):
        features = self.embed(pixels.to(self.embed.weight.dtype))  # (B, 4, 8)
        if self.fault == "nan":
            return features * float("nan")
        return features * (1 + self.gate.sqrt()) if self.fault == "gate" else features


class FaultyPlugin:
    @staticmethod
    @hookimpl
    def register_encoders(register):
        register("image", "faulty", FaultyEncoder)


@pytest.fixture
def faulty(plugin, tmp_path, tokenizer_dir):
    """``faulty(fault, recipe="pt", **training)``: a recipe spec whose image encoder has that fault (or none)."""
    plugin(FaultyPlugin(), "faulty-encoder")
    images = []
    for i, rgb in enumerate([(220, 30, 30), (30, 40, 220), (30, 200, 40), (230, 220, 30)]):
        images.append(tmp_path / f"{i}.png")
        Image.new("RGB", (8, 8), rgb).save(images[-1])
    captions = tmp_path / "captions.jsonl"
    captions.write_text(
        "".join(json.dumps({"image": str(p), "text": f"Square {i}."}) + "\n" for i, p in enumerate(images))
    )
    prompt = [
        {"role": "user", "content": [{"type": "image", "path": str(images[0])}, {"type": "text", "text": "Hue?"}]}
    ]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": prompt, "chosen": "Red.", "rejected": "Blue."}) + "\n")

    def make(fault, recipe="pt", **training):
        spec = tiny_spec(tokenizer_dir, encoders={"image": {"name": "faulty", "params": {"fault": fault}}})
        return {
            "recipe": recipe,
            "model": spec,
            "data": {"train": str(pairs if recipe == "dpo" else captions)},
            "cache": {"enabled": False},
            "training": {
                "output_dir": str(tmp_path / "run"),
                "per_device_train_batch_size": 2,
                "learning_rate": 1e-2,
                "max_steps": 3,
                "save_strategy": "steps",
                "save_steps": 1,
                "seed": 0,
                "use_cpu": True,
                **training,
            },
            **({"peft": {"method": "lora", "r": 2}} if recipe == "dpo" else {}),
        }

    return make


@pytest.mark.parametrize("recipe", ["pt", "dpo"])
def test_an_encoder_that_outputs_nan_stops_training_at_step_1_naming_it(faulty, tmp_path, recipe):
    with pytest.raises(TrainingError, match=r"at step 1: the loss is nan; the output of inputs.image.encoder is the"):
        train(faulty("nan", recipe))
    run = tmp_path / "run"
    assert not list(run.glob("checkpoint-*")) and not (run / "trainable.safetensors").exists()


def test_settings_the_trainer_refuses_for_this_data_are_a_spec_error_naming_training(faulty, tmp_path):
    with pytest.raises(SpecError, match=r"training: the Trainer of recipe 'pt' refuses these settings: .*eval_dataset"):
        train(faulty(None, eval_strategy="steps"))  # evaluation asked for, but the recipe has no data.eval
    assert not list((tmp_path / "run").glob("checkpoint-*"))


def test_an_example_too_long_for_the_llm_is_refused_before_training_naming_file_and_line(faulty, tmp_path):
    spec = faulty(None)
    captions = tmp_path / "captions.jsonl"
    long = json.dumps({"image": str(tmp_path / "0.png"), "text": "A" * 20_000})  # positions 512 x 32 = 16,384 chars
    captions.write_text(captions.read_text() + long + "\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(captions))}:5 holds 20,00\d characters of text, more than"):
        train(spec)
    assert not list((tmp_path / "run").glob("checkpoint-*")) and not (tmp_path / "run" / "data_report.json").exists()


def test_nan_features_never_enter_the_feature_cache_and_training_does_not_start(faulty, tmp_path):
    spec = faulty("nan")
    spec["cache"] = {"dir": str(tmp_path / "cache")}
    with pytest.raises(
        TrainingError, match=r"The image encoder FaultyEncoder gave features that are not finite .*0\.png"
    ):
        train(spec)
    assert not list((tmp_path / "cache").rglob("*.safetensors"))
    assert not list((tmp_path / "run").glob("checkpoint-*"))


def test_an_infinite_gradient_under_a_finite_loss_stops_training_naming_the_component(faulty, tmp_path):
    spec = faulty("gate")
    spec["trainable"] = ["inputs.image.encoder", "inputs.image.projector"]
    with pytest.raises(
        TrainingError,
        match=r"at step 1: the gradient of inputs.image.encoder is not finite \(NaN or inf, in encoders.image.gate\) "
        r"while the loss is \d",
    ):
        train(spec)
    assert not list((tmp_path / "run").glob("checkpoint-*"))


@pytest.mark.parametrize("how", ["resume", "overwrite"])
def test_a_failing_run_leaves_an_earlier_runs_checkpoints_byte_identical(faulty, tmp_path, how):
    train(faulty(None, save_steps=3))  # the earlier run: checkpoint-3 and the final checkpoint
    run = tmp_path / "run"
    kept = {"checkpoint-3": snapshot(run / "checkpoint-3"), "final": (run / "trainable.safetensors").read_bytes()}
    assert kept["checkpoint-3"]
    step = 4 if how == "resume" else 1
    with pytest.raises(TrainingError, match=rf"at step {step}: the loss is nan"):
        train(faulty("nan", max_steps=6, save_steps=1), **{how: True})
    assert snapshot(run / "checkpoint-3") == kept["checkpoint-3"]
    assert (run / "trainable.safetensors").read_bytes() == kept["final"]
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-3"]


@contextlib.contextmanager
def deadline(seconds):
    """Raise TimeoutError in this (main) thread when the block runs longer than ``seconds``: a hang fails the test."""

    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_resuming_from_a_checkpoint_holding_a_fifo_is_refused_without_hanging(faulty, tmp_path):
    train(faulty(None, max_steps=2, save_steps=2))
    fifo = tmp_path / "run" / "checkpoint-2" / "optimizer.pt"
    fifo.unlink()
    os.mkfifo(fifo)  # the Trainer's torch.load would wait for a writer forever
    with (
        deadline(60),
        pytest.raises(CheckpointError, match=rf"--resume: '{re.escape(str(fifo))}' is not a regular file"),
    ):
        train(faulty(None, max_steps=4, save_steps=2), resume=True)
