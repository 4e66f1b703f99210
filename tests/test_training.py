"""Training recipes on tiny random models: PT, SFT with each PEFT method, DPO, resume, data-parallel."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from mmllm_sdk import MMLLM
from mmllm_sdk.testing import tiny_spec
from mmllm_sdk.training.run import train

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


@pytest.fixture
def images(tmp_path):
    """One 32x32 image per colour, with a little texture so that features differ."""
    rng = np.random.default_rng(0)
    paths = {}
    for name, rgb in COLOURS.items():
        array = np.clip(np.array(rgb) + rng.integers(-20, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
        paths[name] = tmp_path / f"{name}.png"
        Image.fromarray(array).save(paths[name])
    return paths


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def captions(tmp_path, images):
    return write_jsonl(
        tmp_path / "captions.jsonl", [{"image": str(p), "text": f"A {name} square."} for name, p in images.items()]
    )


@pytest.fixture
def conversations(tmp_path, images):
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
    return write_jsonl(tmp_path / "sft.jsonl", records)


def recipe(tmp_path, tokenizer_dir, name, data, **overrides):
    spec = {
        "recipe": name,
        "model": tiny_spec(tokenizer_dir),
        "data": {"train": str(data)},
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


def parameters(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def caption_loss(model, data_path):
    records = [json.loads(line) for line in data_path.read_text().splitlines()]
    conversations = [
        [
            {"role": "user", "content": [{"type": "image", "path": r["image"]}]},
            {"role": "assistant", "content": r["text"]},
        ]
        for r in records
    ]
    with torch.no_grad():
        return model(**model.processor(conversations), supervised_only=True).loss.item()


def test_pt_lowers_the_caption_loss_and_changes_only_the_projector(tmp_path, tokenizer_dir, captions):
    from mmllm_sdk import build_model

    before_model = build_model(tiny_spec(tokenizer_dir), progress=False)
    before = parameters(before_model)
    result = train(recipe(tmp_path, tokenizer_dir, "pt", captions, training={"max_steps": 40}))
    after = parameters(result.model)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {name for name in before if name.startswith("input_projectors.image.")}
    # a frozen random 2-layer LLM leaves the projector little room: ln(vocab) ≈ 5.99 is where it starts
    assert caption_loss(result.model, captions) < caption_loss(before_model, captions) - 0.05


@pytest.mark.parametrize(
    ("peft", "adapter_marker"),
    [
        ({"method": "lora", "r": 4}, "lora_"),
        ({"method": "prefix", "num_virtual_tokens": 4}, "prompt_encoder"),
        ({"method": "ln-tuning"}, "ln_tuning"),
    ],
)
def test_sft_with_peft_trains_the_projector_and_the_adapters_only(
    tmp_path, tokenizer_dir, conversations, peft, adapter_marker
):
    result = train(recipe(tmp_path, tokenizer_dir, "sft", conversations, peft=peft))
    trainable = {name for name, p in result.model.named_parameters() if p.requires_grad}
    assert any(adapter_marker in name for name in trainable)
    assert all(name.startswith("input_projectors.") or adapter_marker in name for name in trainable)
    saved = load_file(result.output_dir / "trainable.safetensors")
    assert set(saved) == trainable
    reloaded = MMLLM.from_pretrained(result.output_dir, progress=False)
    for name, tensor in saved.items():
        assert torch.equal(dict(reloaded.named_parameters())[name], tensor)
