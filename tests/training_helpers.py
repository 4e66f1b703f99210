"""What the training tests share: small coloured images, conversation and preference files about them, and a recipe
spec on the tiny model (imported by test_training.py and test_preference.py; not a test module)."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from mmllm_sdk.testing import tiny_spec

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def write_images(folder):
    """One 32x32 image per colour, with a little texture so that features differ: {colour: path}."""
    rng = np.random.default_rng(0)
    paths = {}
    for name, rgb in COLOURS.items():
        array = np.clip(np.array(rgb) + rng.integers(-20, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
        paths[name] = folder / f"{name}.png"
        Image.fromarray(array).save(paths[name])
    return paths


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_conversations(folder, images):
    """ "What colour is it?" about each image, answered "It is <colour>."."""
    records = [
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image", "path": str(p)}, {"type": "text", "text": "What colour is it?"}],
                },
                {"role": "assistant", "content": f"It is {name}."},
            ]
        }
        for name, p in images.items()
    ]
    return write_jsonl(folder / "sft.jsonl", records)


def write_preferences(folder, images):
    """A pair per image: the colour preferred to "I cannot tell."."""
    records = [
        {
            "prompt": [
                {"role": "user", "content": [{"type": "image", "path": str(p)}, {"type": "text", "text": "Colour?"}]}
            ],
            "chosen": f"It is {name}.",
            "rejected": "I cannot tell.",
        }
        for name, p in images.items()
    ]
    return write_jsonl(folder / "pairs.jsonl", records)


def recipe(tmp_path, tokenizer_dir, name, data_path, **overrides):
    """Recipe ``name`` on the tiny model: batches of 2, 8 steps at 1e-2, nothing saved; ``overrides`` merge into
    its sections."""
    spec = {
        "recipe": name,
        "model": tiny_spec(tokenizer_dir),
        "data": {"train": str(data_path)},
        "training": {
            "output_dir": str(tmp_path / f"run-{name}"),
            "per_device_train_batch_size": 2,
            "learning_rate": 1e-2,
            "max_steps": 8,
            "logging_steps": 4,
            "save_strategy": "no",
            "seed": 0,
            "use_cpu": True,
        },
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


def preference_margin(model, data_path):
    """Mean over pairs of (log π(chosen) - log π(rejected)), on the final answers."""
    from mmllm_sdk.default_plugins.datasets.files import read_examples
    from mmllm_sdk.model.scoring import sequence_logprobs
    from mmllm_sdk.training.recipes import PreferenceCollator

    examples = read_examples(data_path).examples
    batch = PreferenceCollator(model, None)(examples)
    with torch.no_grad():
        out = model(**batch, supervised_only=True)
    logprobs = sequence_logprobs(out.logits, out.targets)
    return (logprobs[: len(examples)] - logprobs[len(examples) :]).mean().item()
