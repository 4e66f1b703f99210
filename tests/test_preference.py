"""The preference recipes on the tiny model: dpo (sigmoid, ipo, hinge), simpo and orpo train on image-question pairs,
keep to their references, and refuse options that do not fit."""

from __future__ import annotations

import json
import math

import pytest
from training_helpers import (
    preference_margin,
    recipe,
    write_conversations,
    write_images,
    write_jsonl,
    write_preferences,
)

from mmllm_sdk import build_model
from mmllm_sdk.default_plugins.recipes.run import train
from mmllm_sdk.errors import SpecError
from mmllm_sdk.testing import tiny_spec

LORA = {"method": "lora", "r": 4}


@pytest.fixture
def images(tmp_path):
    return write_images(tmp_path)


@pytest.fixture
def preferences(tmp_path, images):
    return write_preferences(tmp_path, images)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("dpo", {"beta": 0.5}),
        ("dpo", {"beta": 0.5, "loss_type": "ipo"}),
        ("dpo", {"beta": 0.5, "loss_type": "hinge"}),
        ("dpo", {"beta": 0.5, "label_smoothing": 0.1}),
        ("simpo", {}),
        ("orpo", {}),
    ],
)
def test_a_preference_recipe_raises_the_chosen_minus_rejected_margin(
    tmp_path, tokenizer_dir, preferences, name, options
):
    spec = recipe(
        tmp_path, tokenizer_dir, name, preferences, peft=LORA, training={"max_steps": 20, "learning_rate": 5e-3}
    )
    spec["options"] = options
    before = build_model(tiny_spec(tokenizer_dir), progress=False)
    result = train(spec)
    assert math.isfinite(result.metrics["train_loss"])
    assert preference_margin(result.model, preferences) > preference_margin(before, preferences) + 1.0


@pytest.mark.parametrize("name", ["dpo", "simpo"])
def test_dpo_and_simpo_train_the_adapters_only(tmp_path, tokenizer_dir, preferences, name):
    result = train(recipe(tmp_path, tokenizer_dir, name, preferences, peft=LORA, training={"max_steps": 1}))
    trainable = {name for name, p in result.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)


def test_orpo_trains_what_sft_trains(tmp_path, tokenizer_dir, preferences):
    result = train(recipe(tmp_path, tokenizer_dir, "orpo", preferences, peft=LORA, training={"max_steps": 1}))
    trainable = {name for name, p in result.model.named_parameters() if p.requires_grad}
    assert any(name.startswith("input_projectors.") for name in trainable)
    assert any("lora_" in name for name in trainable)


@pytest.fixture
def sft_checkpoint(tmp_path, tokenizer_dir, images):
    conversations = write_conversations(tmp_path, images)
    sft = train(recipe(tmp_path / "sft", tokenizer_dir, "sft", conversations, peft=LORA, training={"max_steps": 5}))
    adapters = {name: p for name, p in sft.model.named_parameters() if "lora_B" in name}
    assert any(p.abs().sum() > 0 for p in adapters.values())  # SFT trained the adapters away from their zero start
    return sft.output_dir


@pytest.mark.parametrize(
    ("options", "loss"),
    [
        ({}, math.log(2)),  # -log σ(0)
        ({"loss_type": "ipo", "beta": 0.5}, 1.0),  # (0 - 1 / (2 β))²
        ({"loss_type": "hinge"}, 1.0),  # max(0, 1 - 0)
    ],
)
def test_dpo_after_sft_takes_the_sft_model_as_its_reference(
    tmp_path, tokenizer_dir, preferences, sft_checkpoint, options, loss
):
    spec = recipe(tmp_path / "dpo", tokenizer_dir, "dpo", preferences, training={"max_steps": 1, "learning_rate": 0.0})
    spec["model"], spec["options"] = str(sft_checkpoint), options
    dpo = train(spec)
    # with no update the policy is the reference: every margin is 0
    assert dpo.metrics["train_loss"] == pytest.approx(loss, abs=1e-5)


def test_dpo_without_adapters_says_how_to_add_them(tmp_path, tokenizer_dir, preferences):
    with pytest.raises(SpecError, match=r"recipe 'dpo' needs adapters on the LLM .* add peft: \{method: lora"):
        train(recipe(tmp_path, tokenizer_dir, "dpo", preferences))


def test_label_smoothing_outside_the_sigmoid_loss_is_refused_before_weights_load(tmp_path, tokenizer_dir, preferences):
    spec = recipe(tmp_path, tokenizer_dir, "dpo", preferences, peft=LORA)
    spec["options"] = {"loss_type": "ipo", "label_smoothing": 0.1}
    with pytest.raises(SpecError, match=r"label_smoothing 0.1 applies to loss_type 'sigmoid' only, not 'ipo'"):
        train(spec)


def test_an_unknown_loss_type_names_the_ones_there_are(tmp_path, tokenizer_dir, preferences):
    spec = recipe(tmp_path, tokenizer_dir, "dpo", preferences, peft=LORA)
    spec["options"] = {"loss_type": "kto"}
    with pytest.raises(SpecError, match=r"options.loss_type.*'sigmoid', 'ipo' or 'hinge'"):
        train(spec)


@pytest.fixture
def labelled_answers(tmp_path, images):
    """Per image two unpaired answers: the colour (desirable) and "I cannot tell." (undesirable)."""
    records = []
    for name, path in images.items():
        prompt = [
            {"role": "user", "content": [{"type": "image", "path": str(path)}, {"type": "text", "text": "Colour?"}]}
        ]
        records.append({"prompt": prompt, "completion": f"It is {name}.", "label": True})
        records.append({"prompt": prompt, "completion": "I cannot tell.", "label": False})
    return write_jsonl(tmp_path / "unpaired.jsonl", records)


def test_unpaired_records_read_as_labelled_answers(labelled_answers):
    from mmllm_sdk.data.examples import LabelledAnswer
    from mmllm_sdk.default_plugins.datasets.files import read_examples

    report = read_examples(labelled_answers)
    assert report.kind == "unpaired" and report.formats == {"unpaired": 8}
    first, second = report.examples[:2]
    assert isinstance(first, LabelledAnswer) and first.desirable and not second.desirable
    assert first.completion[0].text() == "It is red." and first.prompt == second.prompt


def test_kto_raises_desirable_answers_over_undesirable_ones(tmp_path, tokenizer_dir, labelled_answers, preferences):
    spec = recipe(
        tmp_path, tokenizer_dir, "kto", labelled_answers, peft=LORA, training={"max_steps": 20, "learning_rate": 5e-3}
    )
    spec["options"] = {"beta": 0.5}
    before = build_model(tiny_spec(tokenizer_dir), progress=False)
    result = train(spec)
    trainable = {name for name, p in result.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    # the same answers as pairs: the desirable one now more likely than the undesirable one
    assert preference_margin(result.model, preferences) > preference_margin(before, preferences) + 1.0


def test_kto_at_its_reference_loses_half_of_each_answers_weight(tmp_path, tokenizer_dir, labelled_answers):
    two = write_jsonl(
        tmp_path / "two.jsonl", [json.loads(line) for line in labelled_answers.read_text().splitlines()[:2]]
    )
    spec = recipe(tmp_path, tokenizer_dir, "kto", two, peft=LORA, training={"max_steps": 1, "learning_rate": 0.0})
    spec["options"] = {"undesirable_weight": 3.0}
    # one batch: a desirable and an undesirable answer. The policy is the reference, so every reward and the KL
    # estimate are 0, and each answer loses its weight times 1 - σ(0) = 0.5
    assert train(spec).metrics["train_loss"] == pytest.approx((1.0 * 0.5 + 3.0 * 0.5) / 2, abs=1e-5)


def test_kto_with_batches_of_one_is_refused(tmp_path, tokenizer_dir, labelled_answers):
    spec = recipe(tmp_path, tokenizer_dir, "kto", labelled_answers, peft=LORA)
    spec["training"]["per_device_train_batch_size"] = 1
    with pytest.raises(SpecError, match=r"kto needs per_device_train_batch_size of at least 2 \(got 1\)"):
        train(spec)


def test_kto_on_preference_pairs_names_the_data_it_needs(tmp_path, tokenizer_dir, preferences):
    with pytest.raises(SpecError, match=r"recipe 'kto' trains on unpaired examples, but .* holds preference"):
        train(recipe(tmp_path, tokenizer_dir, "kto", preferences, peft=LORA))
