"""The hf-causal-lm backbone: config, local folders, chat templates and placeholder tokens."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from mmllm_sdk import MMLLM, build_model
from mmllm_sdk.default_plugins.llms import build_hf_causal_lm
from mmllm_sdk.errors import SpecError
from mmllm_sdk.testing import tiny_llm_config


@pytest.fixture
def llm_folder(tmp_path, tokenizer_dir):
    """A pretrained-style folder: config, safetensors weights and tokenizer, as save_pretrained writes it."""
    fields = dict(tiny_llm_config())
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(3)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "llm")
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(tmp_path / "llm")
    return tmp_path / "llm"


def test_a_random_llm_is_built_from_a_config(tokenizer_dir):
    llm = build_hf_causal_lm({"config": tiny_llm_config(), "tokenizer": tokenizer_dir})
    assert llm.hidden_size == 32
    assert type(llm.model).__name__ == "LlamaForCausalLM"


def test_a_local_folder_loads_its_weights_and_tokenizer(llm_folder):
    llm = build_hf_causal_lm({"model": str(llm_folder)})
    saved = AutoModelForCausalLM.from_pretrained(llm_folder)
    assert torch.equal(llm.model.lm_head.weight, saved.lm_head.weight)
    assert llm.tokenizer.chat_template


def test_a_config_without_model_type_says_what_is_missing(tokenizer_dir):
    config = tiny_llm_config()
    del config["model_type"]
    with pytest.raises(SpecError, match="'config' needs a 'model_type'"):
        build_hf_causal_lm({"config": config, "tokenizer": tokenizer_dir})


def test_an_unreachable_model_id_suggests_a_local_path_or_config():
    with pytest.raises(SpecError, match=r"(?s)could not load 'no-such-org/no-such-model' .* Pass a local folder"):
        build_hf_causal_lm({"model": "no-such-org/no-such-model"})


def test_a_tokenizer_without_chat_template_is_refused_unless_one_is_given(tokenizer_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(tmp_path / "plain")
    (tmp_path / "plain" / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(SpecError, match="has no chat template; set llm.params.chat_template"):
        build_hf_causal_lm({"config": tiny_llm_config(), "tokenizer": str(tmp_path / "plain")})
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    llm = build_hf_causal_lm(
        {"config": tiny_llm_config(), "tokenizer": str(tmp_path / "plain"), "chat_template": template}
    )
    assert llm.render_chat([{"role": "user", "content": "hi"}]) == "[user] hi\n"


def test_placeholder_tokens_are_whole_tokens_with_mean_embeddings(image_model):
    tokenizer = image_model.processor.tokenizer
    image_id = image_model.placeholder_ids["image"]
    assert tokenizer("a <image> b", add_special_tokens=False)["input_ids"].count(image_id) == 1
    weight = image_model.llm.get_input_embeddings().weight
    assert torch.allclose(weight[image_id], weight[:image_id].mean(dim=0), atol=1e-6)


def test_a_checkpoint_references_a_local_base_by_path_and_hash(llm_folder, image_spec, tmp_path):
    image_spec["llm"]["params"] = {"model": str(llm_folder)}
    model = build_model(image_spec, progress=False)
    model.save_pretrained(tmp_path / "ckpt")
    base = json.loads((tmp_path / "ckpt" / "mmllm.json").read_text())["components"]["llm"]["base"]
    assert base["model"] == str(llm_folder) and len(base["sha256"]) == 64
    assert (tmp_path / "ckpt" / "trainable.safetensors").stat().st_size < 100_000  # the LLM is referenced, not copied
    loaded = MMLLM.from_pretrained(tmp_path / "ckpt", progress=False)
    assert torch.equal(loaded.llm.model.lm_head.weight, model.llm.model.lm_head.weight)


def test_a_changed_base_is_reported_on_load(llm_folder, image_spec, tmp_path):
    image_spec["llm"]["params"] = {"model": str(llm_folder)}
    build_model(image_spec, progress=False).save_pretrained(tmp_path / "ckpt")
    model = AutoModelForCausalLM.from_pretrained(llm_folder)
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    model.save_pretrained(llm_folder)
    with pytest.warns(UserWarning, match="The frozen base of llm .* has changed since the checkpoint was saved"):
        MMLLM.from_pretrained(tmp_path / "ckpt", progress=False)


def test_files_read_twice_in_one_build_are_read_once_and_copied(tokenizer_dir):
    from mmllm_sdk.components.hf import cached_call, reuse_loaded_files

    reads = []

    def load(path):
        reads.append(path)
        return AutoTokenizer.from_pretrained(path)

    with reuse_loaded_files():
        first, second = cached_call("test", load, tokenizer_dir), cached_call("test", load, tokenizer_dir)
    assert reads == [tokenizer_dir]
    first.add_tokens(["<only-in-first>"])
    assert len(first) == len(second) + 1  # each caller owns its copy
    cached_call("test", load, tokenizer_dir)
    assert len(reads) == 2  # outside the block nothing is kept


@pytest.fixture
def gguf_llm(tmp_path, tokenizer_dir):
    from mmllm_sdk.testing import tiny_gguf

    path = tiny_gguf(tmp_path / "gguf", tokenizer_dir)
    return {"model": str(tmp_path / "gguf"), "gguf_file": "tiny-llama.gguf"}, path


def test_a_gguf_file_loads_with_its_tokenizer_and_chat_template(gguf_llm, image_spec, image_file):
    params, _ = gguf_llm
    image_spec["llm"]["params"] = params
    model = build_model(image_spec, progress=False)
    assert type(model.llm.model).__name__ == "LlamaForCausalLM" and model.llm.tokenizer.chat_template
    conversation = [
        {"role": "user", "content": [{"type": "image", "path": str(image_file)}]},
        {"role": "assistant", "content": "A gradient."},
    ]
    assert torch.isfinite(model(**model.processor([conversation])).loss)


def test_a_gguf_file_is_dequantised_once_and_read_from_the_cache_after(gguf_llm, tmp_path, monkeypatch):
    monkeypatch.setenv("MMLLM_CACHE", str(tmp_path / "cache"))
    params, _ = gguf_llm
    direct = AutoModelForCausalLM.from_pretrained(params["model"], gguf_file=params["gguf_file"])
    first = build_hf_causal_lm(params)
    cached = list((tmp_path / "cache" / "gguf").iterdir())
    assert len(cached) == 1 and (cached[0] / "model.safetensors").is_file()
    second = build_hf_causal_lm(params)  # from the safetensors copy
    assert torch.equal(second.model.lm_head.weight, direct.lm_head.weight)
    assert torch.equal(first.model.model.embed_tokens.weight, second.model.model.embed_tokens.weight)
    assert second.reference()["gguf_file"] == "tiny-llama.gguf" and len(second.reference()["sha256"]) == 64


def test_validating_a_gguf_spec_converts_nothing(gguf_llm, image_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("MMLLM_CACHE", str(tmp_path / "cache"))
    image_spec["llm"]["params"] = gguf_llm[0]
    build_model(image_spec, skeleton=True, progress=False)
    assert not (tmp_path / "cache").exists()
