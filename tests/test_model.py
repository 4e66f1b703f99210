"""The composed model: freezing, forward, merging, generation and checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from mmllm_sdk import MMLLM, build_model
from mmllm_sdk.errors import CheckpointError, MissingPluginError, PlaceholderMismatchError
from mmllm_sdk.files import file_sha256
from mmllm_sdk.model.checkpoint import spec_digest


def conversation(image):
    return [
        {"role": "user", "content": [{"type": "image", "path": str(image)}, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": "A gradient."},
    ]


def test_only_the_projector_trains_by_default(image_model):
    counts = {row.component: row for row in image_model.parameter_counts()}
    assert counts["llm"].trainable == 0 and counts["inputs.image.encoder"].trainable == 0
    assert counts["inputs.image.projector"].trainable == counts["inputs.image.projector"].total


def test_frozen_components_stay_in_eval_mode_when_training(image_model):
    image_model.train()
    assert image_model.input_projectors["image"].training
    assert not image_model.encoders["image"].training and not image_model.llm.training


def test_the_loss_backpropagates_into_the_projector_only(image_model, image_file):
    loss = image_model(**image_model.processor([conversation(image_file)])).loss
    loss.backward()
    assert all(p.grad is not None for p in image_model.input_projectors["image"].parameters())
    assert all(p.grad is None for p in image_model.llm.parameters())
    assert all(p.grad is None for p in image_model.encoders["image"].parameters())


def test_a_spec_can_unfreeze_the_encoder(image_spec):
    image_spec["inputs"]["image"]["encoder"]["trainable"] = True
    model = build_model(image_spec, progress=False)
    counts = {row.component: row for row in model.parameter_counts()}
    assert counts["inputs.image.encoder"].trainable == counts["inputs.image.encoder"].total


def test_features_for_fewer_placeholders_are_an_error_with_both_counts(image_model, image_file):
    batch = image_model.processor([conversation(image_file)])
    batch["image"] = {"pixel_values": batch["image"]["pixel_values"].repeat(2, 1, 1, 1)}
    with pytest.raises(
        PlaceholderMismatchError,
        match=r"input_ids hold 16 image placeholder position\(s\) but the 2 image input\(s\) give 32 feature token\(s\)",
    ):
        image_model(**batch)


def test_placeholders_without_inputs_are_an_error(image_model, image_file):
    batch = image_model.processor([conversation(image_file)])
    del batch["image"]
    with pytest.raises(PlaceholderMismatchError, match="16 image placeholder position"):
        image_model(**batch)


def test_generate_returns_new_text_only(image_model, image_file):
    response = image_model.generate(conversation(image_file)[:1], max_new_tokens=6, do_sample=False)
    assert len(response.token_ids) == 6
    assert response.text == image_model.processor.decode(response.token_ids)
    assert response.outputs == {}


def test_generate_matches_a_manual_greedy_loop(image_model, image_file):
    messages = conversation(image_file)[:1]
    response = image_model.generate(messages, max_new_tokens=4, do_sample=False)
    batch = image_model.processor([messages], add_generation_prompt=True)
    ids = batch["input_ids"]
    with torch.no_grad():
        for _ in range(4):
            logits = image_model(input_ids=ids, attention_mask=torch.ones_like(ids), image=batch["image"]).logits
            ids = torch.cat([ids, logits[:, -1:].argmax(-1)], dim=1)
    assert response.token_ids == ids[0, batch["input_ids"].shape[1] :].tolist()


def test_generate_batch_gives_each_conversation_its_one_by_one_answer(image_model, image_file):
    short = [{"role": "user", "content": [{"type": "image", "path": str(image_file)}, {"type": "text", "text": "Hi"}]}]
    long = conversation(image_file)[:1]
    long[0]["content"][1]["text"] = "What is this picture of, in a few words, please?"  # more tokens: left padding
    replies = image_model.generate_batch([short, long], max_new_tokens=5, do_sample=False)
    for messages, reply in zip([short, long], replies, strict=True):
        assert reply.token_ids == image_model.generate(messages, max_new_tokens=5, do_sample=False).token_ids


def test_the_same_spec_builds_the_same_random_weights(image_spec):
    first, second = build_model(image_spec, progress=False), build_model(image_spec, progress=False)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_save_then_load_gives_equal_logits(image_model, image_file, tmp_path):
    with torch.no_grad():
        for p in image_model.input_projectors["image"].parameters():
            p.add_(0.05)  # as if trained: differs from a fresh build
    batch = image_model.processor([conversation(image_file)])
    image_model.save_pretrained(tmp_path / "ckpt")
    loaded = MMLLM.from_pretrained(tmp_path / "ckpt", progress=False)
    with torch.no_grad():
        assert torch.allclose(image_model(**batch).logits, loaded(**batch).logits, atol=0, rtol=0)


def test_a_checkpoint_holds_only_the_trainable_tensors(image_model, tmp_path):
    from safetensors.torch import load_file

    image_model.save_pretrained(tmp_path / "ckpt")
    saved = load_file(tmp_path / "ckpt" / "trainable.safetensors")
    assert set(saved) == {n for n, p in image_model.named_parameters() if p.requires_grad}
    assert all(name.startswith("input_projectors.image.") for name in saved)
    manifest = json.loads((tmp_path / "ckpt" / "mmllm.json").read_text())
    assert manifest["sdk_version"] and manifest["spec"]["inputs"]["image"]["projector"]["name"] == "mlp"
    assert manifest["components"]["inputs.image.encoder"]["plugin"] == "mmllm_sdk.default_plugins.encoders"
    assert manifest["components"]["llm"]["distribution"] == "mmllm-sdk"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no staging folder left behind


def test_saving_over_a_checkpoint_replaces_it_whole(image_model, tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    image_model.save_pretrained(target, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == ["mmllm.json", "trainable.safetensors"]


def test_loading_names_the_missing_plugin(image_model, tmp_path):
    image_model.save_pretrained(tmp_path / "ckpt")
    manifest_path = tmp_path / "ckpt" / "mmllm.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["components"]["inputs.image.encoder"].update(
        name="depth-dpt", plugin="mmllm-depth", distribution="mmllm-depth", version="0.2.0"
    )
    manifest["spec"]["inputs"]["image"]["encoder"]["name"] = "depth-dpt"
    manifest["digest"]["spec"] = spec_digest(manifest["spec"])  # as that plugin would have saved it
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(
        MissingPluginError,
        match=r"inputs.image.encoder: encoder 'depth-dpt' from plugin 'mmllm-depth' \(pip install 'mmllm-depth>=0.2.0'\)",
    ):
        MMLLM.from_pretrained(tmp_path / "ckpt")


def test_a_corrupt_weights_file_is_a_checkpoint_error(image_model, tmp_path):
    image_model.save_pretrained(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "trainable.safetensors"
    weights.write_bytes(b"not safetensors at all")
    manifest = json.loads((tmp_path / "ckpt" / "mmllm.json").read_text())
    manifest["digest"]["trainable"] = file_sha256(weights)  # corrupt when written: the digest cannot tell
    (tmp_path / "ckpt" / "mmllm.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="cannot be read .* corrupt"):
        MMLLM.from_pretrained(tmp_path / "ckpt", progress=False)


def test_a_folder_without_a_manifest_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="is not an SDK checkpoint: it has no mmllm.json"):
        MMLLM.from_pretrained(tmp_path)


def test_the_supervised_only_loss_equals_the_full_lm_loss(image_model, image_file):
    batch = image_model.processor(
        [
            conversation(image_file),
            [*conversation(image_file)[:1], {"role": "assistant", "content": "Stripes and more."}],
        ]
    )
    with torch.no_grad():
        full = image_model(**batch).loss
        supervised = image_model(**batch, supervised_only=True)
    assert torch.allclose(full, supervised.loss, atol=1e-6)
    assert supervised.logits.shape[1] < batch["input_ids"].shape[1] - 1  # the LM head skipped the prompt
    assert supervised.logits.shape[:2] == supervised.targets.shape


def test_a_batch_without_any_answer_cannot_be_trained_on(image_model, image_file):
    from mmllm_sdk.errors import InputError

    batch = image_model.processor([conversation(image_file)[:1]])
    with pytest.raises(InputError, match="no supervised tokens"):
        image_model(**batch, supervised_only=True)


def test_a_gathered_state_dict_gives_the_same_checkpoint(image_model, tmp_path):
    from safetensors.torch import load_file

    from mmllm_sdk.model.checkpoint import write_checkpoint_files

    (tmp_path / "direct").mkdir()
    (tmp_path / "gathered").mkdir()
    write_checkpoint_files(image_model, tmp_path / "direct")
    write_checkpoint_files(image_model, tmp_path / "gathered", values=image_model.state_dict())  # as FSDP hands it over
    direct, gathered = (
        load_file(tmp_path / "direct" / "trainable.safetensors"),
        load_file(tmp_path / "gathered" / "trainable.safetensors"),
    )
    assert direct.keys() == gathered.keys() and all(torch.equal(direct[k], gathered[k]) for k in direct)


def with_system(image, answer):
    return [
        {"role": "system", "content": "You answer questions about images in one short sentence."},
        *conversation(image)[:1],
        {"role": "assistant", "content": answer},
    ]


def loss_and_grads(model, batch):
    model.zero_grad()
    loss = model(**batch, supervised_only=True).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("peft", [None, {"method": "lora", "r": 4}], ids=["projector", "lora"])
def test_a_shared_system_prompt_is_computed_once_with_the_same_loss_and_gradients(
    image_spec, image_file, peft, monkeypatch
):
    if peft:
        image_spec["llm"]["peft"] = peft
    model = build_model(image_spec, progress=False).train()
    batch = model.processor(
        [with_system(image_file, "A gradient."), with_system(image_file, "Colours, left to right.")]
    )
    shared = model.shared_prefix_length(batch["input_ids"], batch["attention_mask"], limit=batch["input_ids"].shape[1])
    assert shared > 8 and model.llm.can_share_prefix()
    calls = []
    model.llm.model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(kwargs["inputs_embeds"].shape), with_kwargs=True
    )
    loss, grads = loss_and_grads(model, batch)
    assert calls[0][:2] == (1, shared)  # the prefix once, for one row
    monkeypatch.setattr(model.llm, "can_share_prefix", lambda: False)
    expected_loss, expected_grads = loss_and_grads(model, batch)
    assert torch.allclose(loss, expected_loss, atol=1e-6)
    assert grads.keys() == expected_grads.keys() and grads
    for name, grad in grads.items():
        assert torch.allclose(grad, expected_grads[name], atol=1e-6), name


def test_the_shared_prefix_stops_at_the_first_difference_placeholder_or_padding(image_model, image_file):
    batch = image_model.processor([with_system(image_file, "A."), with_system(image_file, "A much longer answer.")])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    first_placeholder = int((ids[0] == image_model.placeholder_ids["image"]).nonzero()[0])
    assert image_model.shared_prefix_length(ids, mask, limit=ids.shape[1]) == first_placeholder
    assert image_model.shared_prefix_length(ids, mask, limit=3) == 3
    mask[1, 2] = 0  # a position some row does not attend: nothing after it is shared
    assert image_model.shared_prefix_length(ids, mask, limit=ids.shape[1]) == 2
