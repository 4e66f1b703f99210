"""A system prompt every row shares: computed once per batch, and kept from batch to batch while the LLM is frozen."""

from __future__ import annotations

import pytest
import torch

from mmllm_sdk import build_model

SYSTEM = "You answer questions about images in one short sentence."


def chat(image, answer, system=SYSTEM):
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": [{"type": "image", "path": str(image)}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": answer},
    ]


def batches(model, image, system=SYSTEM):
    first = model.processor([chat(image, "A gradient.", system), chat(image, "Colours, left to right.", system)])
    second = model.processor([chat(image, "Stripes.", system), chat(image, "A smooth blend of colours.", system)])
    return first, second


def loss_and_grads(model, batch):
    """The Trainer's loss (no logits) and the gradients it gives."""
    model.zero_grad()
    loss = model(**batch, supervised_only=True, skip_logits=True).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def prefix_runs(model):
    """The decoder calls on one row (the shared prefix), and whether each ran with gradients on, as they happen."""
    runs = []

    def seen(module, args, kwargs):
        if kwargs["inputs_embeds"].shape[0] == 1 and kwargs.get("use_cache"):  # not the head's one-time check
            runs.append(torch.is_grad_enabled())

    model.llm._base().get_decoder().register_forward_pre_hook(seen, with_kwargs=True)
    return runs


def assert_same(found, expected):
    (loss, grads), (expected_loss, expected_grads) = found, expected
    assert torch.allclose(loss, expected_loss, atol=1e-6)
    assert grads.keys() == expected_grads.keys() and grads
    for name, grad in grads.items():
        assert torch.allclose(grad, expected_grads[name], atol=1e-6), name


def unshared(model, batch, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(model.llm, "can_share_prefix", lambda: False)
        return loss_and_grads(model, batch)


def test_a_frozen_llm_computes_a_system_prompt_once_for_every_batch_that_shares_it(
    image_model, image_file, monkeypatch
):
    model = image_model.train()
    first, second = batches(model, image_file)
    runs = prefix_runs(model)
    results = [loss_and_grads(model, first), loss_and_grads(model, second)]
    assert runs == [False]  # once, without a backward: nothing before the image depends on a trained weight
    for batch, found in zip((first, second), results, strict=True):
        assert_same(found, unshared(model, batch, monkeypatch))


def test_a_changed_weight_or_system_prompt_computes_the_prefix_again(image_model, image_file, monkeypatch):
    model = image_model.train()
    first, second = batches(model, image_file)
    runs = prefix_runs(model)
    loss_and_grads(model, first)
    layer = model.llm._base().get_decoder().layers[0].mlp.up_proj
    with torch.no_grad():
        layer.weight.mul_(1.5)  # in place: a load_state_dict, a merge
    assert_same(loss_and_grads(model, second), unshared(model, second, monkeypatch))
    layer.weight.data = layer.weight.data * 0.5  # a new tensor under the same parameter
    assert_same(loss_and_grads(model, first), unshared(model, first, monkeypatch))
    other, _ = batches(model, image_file, system="Describe the picture in one word.")
    assert_same(loss_and_grads(model, other), unshared(model, other, monkeypatch))
    assert len(runs) == 4  # the first batch, then after each change


@pytest.mark.parametrize(
    "trainable", [{"llm": {"trainable": True}}, {"peft": {"method": "lora", "r": 4}}], ids=["full", "lora"]
)
def test_a_trained_llm_computes_the_prefix_with_its_gradients_for_every_batch(
    image_spec, image_file, trainable, monkeypatch
):
    if "peft" in trainable:
        image_spec["llm"]["peft"] = trainable["peft"]
    else:
        image_spec["llm"].update(trainable["llm"])
    model = build_model(image_spec, progress=False).train()
    first, second = batches(model, image_file)
    runs = prefix_runs(model)
    results = [loss_and_grads(model, first), loss_and_grads(model, second)]
    assert runs == [True, True]
    assert any(name.startswith("llm.") for name in results[0][1])
    for batch, found in zip((first, second), results, strict=True):
        assert_same(found, unshared(model, batch, monkeypatch))
