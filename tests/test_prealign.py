"""``prealign``: soft tokens pulled towards their captions' token embeddings, without running the LLM."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from mmllm_sdk.data.formats import as_example
from mmllm_sdk.default_plugins.recipes.prealign import caption_targets
from mmllm_sdk.default_plugins.recipes.run import train
from mmllm_sdk.errors import InputError

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}


def captions(folder, images_per_row=1):
    rows = []
    for name, rgb in COLOURS.items():
        Image.new("RGB", (32, 32), rgb).save(folder / f"{name}.png")
        content = [{"type": "image", "path": f"{name}.png"}] * images_per_row
        rows.append(
            {"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": f"A {name} square."}]}
        )
    (folder / "captions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(folder / "captions.jsonl")


def recipe(image_spec, tmp_path, data, steps):
    return {
        "recipe": "prealign",
        "model": image_spec,
        "data": {"train": data},
        "cache": {"dir": str(tmp_path / "cache")},
        "training": {
            "output_dir": str(tmp_path / "run"),
            "learning_rate": 1e-2,
            "max_steps": steps,
            "per_device_train_batch_size": 4,
            "save_strategy": "no",
        },
    }


def distance(model, data):
    """Each image's mean soft token against its caption's mean embedding: the mean squared distance over the target's."""
    batch = model.processor([as_example(row) for row in data])
    targets = caption_targets(model, batch["input_ids"], batch["labels"])
    with torch.no_grad():
        soft = model.get_modality_features("image", **batch["image"]).float().mean(dim=1)
    return float(((soft - targets) ** 2).mean() / (targets**2).mean())


def test_prealign_trains_only_the_projector_and_brings_soft_tokens_to_their_captions(image_spec, tmp_path):
    data = captions(tmp_path)
    rows = [json.loads(line) for line in open(data)]
    for row in rows:
        row["messages"][0]["content"][0]["path"] = str(tmp_path / row["messages"][0]["content"][0]["path"])
    before = train(recipe(image_spec, tmp_path / "a", data, 1))
    after = train(recipe(image_spec, tmp_path / "b", data, 60))
    assert distance(after.model, rows) < 0.5 * distance(before.model, rows)
    trained = {name.split(".")[0] for name, p in after.model.named_parameters() if p.requires_grad}
    assert trained == {"input_projectors"}


def test_a_row_with_two_items_is_refused(image_spec, tmp_path):
    with pytest.raises(InputError, match=r"prealign pairs each image item with its caption"):
        train(recipe(image_spec, tmp_path, captions(tmp_path, images_per_row=2), 1))
