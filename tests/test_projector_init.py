"""A new input projector starts on standardised features; one carried from a checkpoint keeps what it learned."""

from __future__ import annotations

import json

import torch
from PIL import Image

from mmllm_sdk import build_model
from mmllm_sdk.default_plugins.recipes.run import train


def recipe(model, tmp_path, name):
    for index in range(6):
        Image.new("RGB", (32, 32), (40 * index, 200 - 30 * index, 90)).save(tmp_path / f"{index}.png")
    rows = [
        {
            "messages": [
                {"role": "user", "content": [{"type": "image", "path": f"{i}.png"}]},
                {"role": "assistant", "content": "A square."},
            ]
        }
        for i in range(6)
    ]
    (tmp_path / "captions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return {
        "recipe": "pt",
        "model": model,
        "data": {"train": str(tmp_path / "captions.jsonl")},
        "cache": {"dir": str(tmp_path / "cache")},
        "training": {"output_dir": str(tmp_path / name), "learning_rate": 1e-12, "max_steps": 1, "save_strategy": "no"},
    }


def first_layer(model):
    return model.input_projectors["image"].input_layers()[0].weight.detach().clone()


def test_a_new_projector_is_initialised_from_the_training_features_and_a_carried_one_is_not(image_spec, tmp_path):
    untouched = first_layer(build_model(image_spec, progress=False))
    fresh = train(recipe(image_spec, tmp_path, "pt"))
    assert not torch.allclose(first_layer(fresh.model), untouched, atol=1e-4)  # rescaled by the features' spread
    continued = train(recipe(str(tmp_path / "pt"), tmp_path, "pt2"))
    torch.testing.assert_close(first_layer(continued.model), first_layer(fresh.model))
