"""``learning_rates``: a component trains at its own rate (LLaVA's projector rate next to the adapters')."""

from __future__ import annotations

import json

import pytest
from transformers import TrainerCallback

from mmllm_sdk.default_plugins.recipes.run import train
from mmllm_sdk.errors import SpecError


class Rates(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        names = {id(p): n for n, p in model.named_parameters()}
        self.rates = {
            names[id(p)]: group.get("initial_lr", group["lr"])
            for group in optimizer.param_groups
            for p in group["params"]
        }


def recipe(image_spec, tmp_path, learning_rates):
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "a.png")
    row = {
        "messages": [
            {"role": "user", "content": [{"type": "image", "path": "a.png"}, {"type": "text", "text": "Colour?"}]},
            {"role": "assistant", "content": "Red."},
        ]
    }
    (tmp_path / "train.jsonl").write_text(json.dumps(row) + "\n")
    return {
        "recipe": "sft",
        "model": image_spec,
        "data": {"train": str(tmp_path / "train.jsonl")},
        "peft": {"method": "lora", "r": 4},
        "learning_rates": learning_rates,
        "cache": {"enabled": False},
        "training": {"output_dir": str(tmp_path / "run"), "learning_rate": 1e-4, "max_steps": 1, "save_strategy": "no"},
    }


def test_the_projector_trains_at_its_own_rate_and_the_adapters_at_the_runs(image_spec, tmp_path):
    rates = Rates()
    train(recipe(image_spec, tmp_path, {"inputs.*.projector": 1e-2}), callbacks=[rates])
    projector = {r for n, r in rates.rates.items() if n.startswith("input_projectors.")}
    adapters = {r for n, r in rates.rates.items() if "lora_" in n}
    assert projector == {1e-2} and adapters == {1e-4}


def test_a_rate_for_a_component_that_does_not_train_is_refused_naming_what_trains(image_spec, tmp_path):
    with pytest.raises(
        SpecError,
        match=r"learning_rates: 'inputs\.\*\.encoder' names no component this run trains; it trains inputs\.image\.projector, llm",
    ):
        train(recipe(image_spec, tmp_path, {"inputs.*.encoder": 1e-2}))


def test_sft_trains_at_its_default_rate_when_the_spec_names_none(image_spec, tmp_path):
    rates, spec = Rates(), recipe(image_spec, tmp_path, {})
    del spec["training"]["learning_rate"]
    train(spec, callbacks=[rates])
    assert set(rates.rates.values()) == {1e-3}  # not the Trainer's 5e-5


@pytest.mark.parametrize("section", ["optimizer", "scheduler"])
def test_rates_with_a_deepspeed_optimizer_or_scheduler_are_refused_naming_both(image_spec, tmp_path, section):
    spec = recipe(image_spec, tmp_path, {"inputs.*.projector": 1e-2})
    spec["training"]["deepspeed"] = {"zero_optimization": {"stage": 2}, section: {"type": "AdamW", "params": {}}}
    with pytest.raises(SpecError, match=rf"learning_rates .*'inputs\.\*\.projector'.* training\.deepspeed's {section}"):
        train(spec)


def test_a_deepspeed_config_file_is_read_for_the_same_check(image_spec, tmp_path):
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 2}, "optimizer": {"type": "AdamW"}}))
    spec = recipe(image_spec, tmp_path, {"inputs.*.projector": 1e-2})
    spec["training"]["deepspeed"] = str(config)
    with pytest.raises(SpecError, match=r"training\.deepspeed's optimizer"):
        train(spec)
    spec["training"]["deepspeed"] = str(tmp_path)  # a folder is not read
    with pytest.raises(SpecError, match=r"training\.deepspeed file .* is a folder, not a regular file"):
        train(spec)
