"""Interop: the hf-llava export loads in transformers and gives our logits."""

from __future__ import annotations

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from mmllm_sdk import build_model
from mmllm_sdk.cli import main
from mmllm_sdk.default_plugins.exporters.hf_llava import export_hf_llava
from mmllm_sdk.errors import ExportError
from mmllm_sdk.testing import tiny_spec


def conversation(image):
    return [
        {"role": "user", "content": [{"type": "image", "path": str(image)}, {"type": "text", "text": "Describe it."}]},
        {"role": "assistant", "content": "A gradient."},
    ]


def trained(model):
    with torch.no_grad():
        for p in model.input_projectors["image"].parameters():
            p.add_(torch.randn_like(p) * 0.1)  # as if aligned: not the deterministic init
    return model


@pytest.mark.parametrize("projector", ["mlp", "linear"])
def test_the_exported_llava_gives_our_logits(tokenizer_dir, image_file, tmp_path, projector):
    model = trained(build_model(tiny_spec(tokenizer_dir, projector=projector), progress=False)).eval()
    model.save_pretrained(tmp_path / "ckpt")
    assert main(["export", str(tmp_path / "ckpt"), "--format", "hf-llava", str(tmp_path / "llava")]) == 0

    llava = LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava").eval()
    batch = model.processor([conversation(image_file)])
    assert llava.config.image_token_id == model.placeholder_ids["image"]
    with torch.no_grad():
        ours = model(**batch).logits
        theirs = llava(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["image"]["pixel_values"],
        ).logits
    assert (ours - theirs).abs().max().item() < 1e-4


def test_a_model_llava_cannot_express_is_refused_with_the_reasons(tokenizer_dir, tmp_path):
    model = build_model(tiny_spec(tokenizer_dir, projector="qformer"), progress=False)
    with pytest.raises(
        ExportError,
        match=r"cannot be exported as hf-llava: the projector must be 'linear' or a 2-layer 'mlp' \(it is qformer\)",
    ):
        export_hf_llava(model, tmp_path / "out")


def test_the_exported_processor_builds_the_same_inputs_as_ours(tokenizer_dir, image_file, tmp_path):
    from PIL import Image
    from transformers import AutoProcessor

    model = build_model(tiny_spec(tokenizer_dir), progress=False)
    export_hf_llava(model, tmp_path / "llava")
    processor = AutoProcessor.from_pretrained(tmp_path / "llava")
    messages = conversation(image_file)
    ours = model.processor([messages])
    text = processor.apply_chat_template(
        [
            {"role": m["role"], "content": "<image>\nDescribe it." if m["role"] == "user" else m["content"]}
            for m in messages
        ],
        tokenize=False,
    )
    theirs = processor(text=text, images=[Image.open(image_file)], return_tensors="pt")
    assert theirs["input_ids"].tolist() == ours["input_ids"].tolist()
    assert torch.equal(theirs["pixel_values"], ours["image"]["pixel_values"])


def test_exported_files_are_readable_by_others(tokenizer_dir, tmp_path):
    import os
    import stat

    model = build_model(tiny_spec(tokenizer_dir), progress=False)
    export_hf_llava(model, tmp_path / "llava")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "llava").stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((tmp_path / "llava" / "model.safetensors").stat().st_mode) == 0o666 & ~umask
