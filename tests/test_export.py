"""Interop: the hf-llava export loads in transformers and gives our logits, adapters merged; it replaces nothing."""

from __future__ import annotations

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from mmllm_sdk import build_model
from mmllm_sdk.cli import main
from mmllm_sdk.default_plugins.exporters.hf_llava import export_hf_llava
from mmllm_sdk.errors import ExportError
from mmllm_sdk.model.peft import adapter_parameter_names
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


def with_adapters(tokenizer_dir, peft):
    """A tiny model whose LLM has peft adapters moved off their initial values (LoRA's B starts at zero)."""
    spec = tiny_spec(tokenizer_dir)
    spec["llm"]["peft"] = peft
    model = trained(build_model(spec, progress=False))
    generator = torch.Generator().manual_seed(1)
    names = {f"llm.{name}" for name in adapter_parameter_names(model.llm)}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in names:
                param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    return model.eval()


def logits_of(model, llava, batch):
    with torch.no_grad():
        ours = model(**batch).logits
        theirs = llava(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["image"]["pixel_values"],
        ).logits
    return ours, theirs


@pytest.mark.parametrize("projector", ["mlp", "linear"])
def test_the_exported_llava_gives_our_logits(tokenizer_dir, image_file, tmp_path, projector):
    model = trained(build_model(tiny_spec(tokenizer_dir, projector=projector), progress=False)).eval()
    model.save_pretrained(tmp_path / "ckpt")
    assert main(["export", str(tmp_path / "ckpt"), "--format", "hf-llava", str(tmp_path / "llava")]) == 0

    llava = LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava").eval()
    batch = model.processor([conversation(image_file)])
    assert llava.config.image_token_id == model.placeholder_ids["image"]
    ours, theirs = logits_of(model, llava, batch)
    assert (ours - theirs).abs().max().item() < 1e-4


@pytest.mark.parametrize("peft", [{"method": "lora", "r": 4}, {"method": "ln-tuning"}], ids=lambda peft: peft["method"])
def test_a_checkpoint_with_adapters_exports_them_merged_with_our_logits(tokenizer_dir, image_file, tmp_path, peft):
    model = with_adapters(tokenizer_dir, peft)
    model.save_pretrained(tmp_path / "ckpt")
    assert main(["export", str(tmp_path / "ckpt"), "--format", "hf-llava", str(tmp_path / "llava")]) == 0

    llava = LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava").eval()
    batch = model.processor([conversation(image_file)])
    ours, theirs = logits_of(model, llava, batch)
    with torch.no_grad(), model.llm.model.disable_adapter():
        base = model(**batch).logits
    assert (ours - base).abs().max().item() > 1e-2  # the adapters matter, so the export carries them
    assert (ours - theirs).abs().max().item() < 1e-4


def test_exporting_merges_adapters_without_changing_the_model_in_memory(tokenizer_dir, image_file, tmp_path):
    model = with_adapters(tokenizer_dir, {"method": "lora", "r": 4})
    batch = model.processor([conversation(image_file)])
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with torch.no_grad():
        logits_before = model(**batch).logits
    export_hf_llava(model, tmp_path / "llava")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, logits_before)
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], before[name]) for name in before)
    assert not any(getattr(m, "merged", False) for m in model.modules())


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
