"""Packing (``packing: true``): several conversations per row, each attending only to itself, with the loss and the
trained tensors of the same examples unpacked; recipes and LLMs where it cannot hold refuse it by name."""

from __future__ import annotations

import random

import pytest
import torch
from training_helpers import recipe, write_images, write_jsonl, write_preferences

from mmllm_sdk import build_model
from mmllm_sdk.default_plugins.datasets.files import read_examples
from mmllm_sdk.default_plugins.recipes.packing import (
    SEGMENTED,
    Pack,
    PackedCollator,
    best_fit_decreasing,
    pack,
    prepare_packing,
)
from mmllm_sdk.default_plugins.recipes.run import train
from mmllm_sdk.errors import DataError, InputError, SpecError
from mmllm_sdk.testing import tiny_spec


@pytest.fixture
def mixed(tmp_path):
    """Conversations of different lengths: one and two turns, with an image, two images or none."""
    images = write_images(tmp_path)
    red, green, blue = (str(images[name]) for name in ("red", "green", "blue"))

    def user(text, *paths):
        return {
            "role": "user",
            "content": [*({"type": "image", "path": p} for p in paths), {"type": "text", "text": text}],
        }

    records = [
        [user("What colour is it?", red), {"role": "assistant", "content": "It is red."}],
        [
            user("Compare them.", green, blue),
            {"role": "assistant", "content": "green then blue, two colours side by side"},
        ],
        [
            user("hello"),
            {"role": "assistant", "content": "hi"},
            user("And this one?", blue),
            {"role": "assistant", "content": "It is blue, like the sea on a clear day."},
        ],
        [user("count to five"), {"role": "assistant", "content": "one two three four five"}],
        [user("Name it.", red), {"role": "assistant", "content": "red"}],
    ]
    return write_jsonl(tmp_path / "mixed.jsonl", [{"messages": messages} for messages in records])


def sft(tmp_path, tokenizer_dir, data, name, **overrides):
    spec = recipe(tmp_path, tokenizer_dir, "sft", data, **overrides)
    spec["model"] = tiny_spec(tokenizer_dir, initializer_range=0.2)
    spec["training"]["output_dir"] = str(tmp_path / name)
    return spec


def test_best_fit_decreasing_fills_rows_without_cutting_an_item():
    lengths = [random.Random(seed).randint(1, 100) for seed in range(200)]
    rows = best_fit_decreasing(lengths, 128)
    assert sorted(i for row in rows for i in row) == list(range(200))
    assert all(sum(lengths[i] for i in row) <= 128 for row in rows)
    assert len(rows) <= 1.25 * sum(lengths) / 128  # first-fit-decreasing bound: at most 11/9 OPT + 1
    assert best_fit_decreasing([5, 7, 3, 4], 10) == [[1, 2], [0, 3]]  # 7+3, then 5+4 (not 7 alone, 5+3, 4)
    with pytest.raises(ValueError, match="item 1 is 11 long"):
        best_fit_decreasing([2, 11], 10)


def test_a_packed_batch_has_the_loss_and_gradients_of_the_same_examples_unpacked(tokenizer_dir, mixed):
    model = build_model(tiny_spec(tokenizer_dir, initializer_range=0.2), progress=False)
    examples = read_examples(mixed).examples
    packing = pack(model, examples, 160, "assistant", "train")
    assert len(packing.rows) < len(examples)
    projector = model.input_projectors["image"]

    def loss_and_grads(batch):
        model.zero_grad()
        loss = model(**batch, supervised_only=True).loss
        loss.backward()
        return loss.item(), [p.grad.clone() for p in projector.parameters()]

    unpacked = loss_and_grads(model.processor(examples))
    packs = [Pack(tuple(examples[i] for i in row)) for row in packing.rows]
    batch = PackedCollator(model, 160)(packs)
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == len(packs)
    masked = loss_and_grads(batch)  # SDPA with transformers' block-diagonal mask
    prepare_packing(model.llm, "sft")
    assert model.llm.model.config._attn_implementation == SEGMENTED
    segmented = loss_and_grads(batch)  # SDPA's causal kernel on each example alone
    for packed in (masked, segmented):
        assert packed[0] == pytest.approx(unpacked[0], abs=1e-5)
        for found, expected in zip(packed[1], unpacked[1], strict=True):
            torch.testing.assert_close(found, expected, atol=1e-6, rtol=1e-4)
    for key in ("position_ids", "cu_seq_lens_q", "cu_seq_lens_k"):
        del batch[key]  # one causal sequence per row: each example sees the ones before it
    assert model(**batch, supervised_only=True).loss.item() != pytest.approx(unpacked[0], abs=1e-5)  # not by chance


def test_sft_with_packing_trains_the_tensors_the_unpacked_run_trains(tmp_path, tokenizer_dir, mixed, capfd):
    """One optimizer step over all five examples, twice: packed in rows, or one padded batch; same tensors."""
    results = {}
    for packing in (False, True):
        spec = sft(tmp_path, tokenizer_dir, mixed, f"run-{packing}", packing=packing, peft={"method": "lora", "r": 4})
        spec["training"].update(per_device_train_batch_size=5, max_steps=2)
        spec["data"]["max_length"] = 200
        result = train(spec)
        assert result.cache_stats.hits > 0  # the feature cache serves packed rows' images
        results[packing] = {n: p.detach().clone() for n, p in result.model.named_parameters() if p.requires_grad}
    assert "train packing: 5 examples in 2 rows of at most 200 tokens" in capfd.readouterr().err
    assert results[True].keys() == results[False].keys() and any("lora" in key for key in results[True])
    for key, expected in results[False].items():
        torch.testing.assert_close(results[True][key], expected, atol=1e-6, rtol=1e-4, msg=key)


@pytest.mark.parametrize("name", ["dpo", "kto", "grpo", "align-output"])
def test_recipes_that_score_whole_examples_refuse_packing_before_any_weight_loads(tmp_path, tokenizer_dir, name):
    spec = recipe(tmp_path, tokenizer_dir, name, write_preferences(tmp_path, write_images(tmp_path)), packing=True)
    spec["model"] = str(tmp_path / "absent.yaml")  # never read: the recipe is refused first
    with pytest.raises(
        SpecError,
        match=f"packing: recipe '{name}' does not train on packed rows.*use a recipe that packs \\(pt, sft\\)",
    ):
        train(spec)


def test_an_example_longer_than_a_row_is_named(tmp_path, tokenizer_dir, mixed):
    spec = sft(tmp_path, tokenizer_dir, mixed, "run", packing=True)
    spec["data"]["max_length"] = 40
    with pytest.raises(DataError, match=r"mixed\.jsonl:1 takes 50 tokens .* more than a packed row's 40"):
        train(spec)


def test_prefix_adapters_refuse_packing(tmp_path, tokenizer_dir, mixed):
    spec = sft(tmp_path, tokenizer_dir, mixed, "run", packing=True, peft={"method": "prefix", "num_virtual_tokens": 2})
    with pytest.raises(SpecError, match="packing: recipe 'sft' trains prefix_tuning adapters"):
        train(spec)


def test_an_llm_whose_attention_ignores_restarting_positions_refuses_packing(tmp_path, tokenizer_dir, mixed):
    """transformers' OPT builds its causal mask without position_ids: with eager attention (no variable-length path)
    a packed example would see the one before it."""
    spec = sft(tmp_path, tokenizer_dir, mixed, "run", packing=True)
    opt = {
        "model_type": "opt",
        "vocab_size": 400,
        "hidden_size": 32,
        "ffn_dim": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 512,
        "word_embed_proj_dim": 32,
        "attn_implementation": "eager",
    }
    spec["model"] = tiny_spec(tokenizer_dir)
    spec["model"]["llm"]["params"]["config"] = opt
    with pytest.raises(
        SpecError,
        match=r"packing: the LLM \(OPTForCausalLM, attention 'eager'\) lets a packed example "
        "attend to the one before it",
    ):
        train(spec)


def test_the_collator_refuses_a_pack_longer_than_a_row(tokenizer_dir, mixed):
    model = build_model(tiny_spec(tokenizer_dir), progress=False)
    examples = read_examples(mixed).examples
    with pytest.raises(InputError, match=r"A pack takes \d+ tokens, more than a packed row's 100"):
        PackedCollator(model, 100)([Pack(tuple(examples))])
