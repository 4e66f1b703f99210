"""PEFT on the LLM backbone: LoRA, prefix tuning and LN tuning through peft, on a tiny real Llama."""

from __future__ import annotations

import subprocess
import sys
from copy import deepcopy

import pytest
import torch

from mmllm_sdk.components.hf import skeleton_mode
from mmllm_sdk.default_plugins.llms import build_hf_causal_lm
from mmllm_sdk.errors import SpecError
from mmllm_sdk.model.peft import (
    PeftCausalLM,
    PeftSpec,
    adapter_parameter_names,
    apply_peft,
)
from mmllm_sdk.testing import tiny_llm_config
from mmllm_sdk.validation import validate

# peft hands prefix caches to the model as `past_key_values`, which transformers 5 renamed `cache`
pytestmark = pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")

METHODS = ["lora", "prefix", "ln-tuning"]
ADAPTER_MARK = {"lora": (".lora_A.", ".lora_B."), "prefix": ("model.prompt_encoder.",), "ln-tuning": ("ln_tuning",)}
SPECS = {"lora": {"method": "lora", "r": 4}, "prefix": {"method": "prefix", "num_virtual_tokens": 3}}


def make_llm(tokenizer_dir):
    torch.manual_seed(0)
    return build_hf_causal_lm({"config": tiny_llm_config(), "tokenizer": tokenizer_dir})


def peft_llm(tokenizer_dir, method, perturb=True):
    """A tiny LLM with adapters; ``perturb`` moves them off their initial values so they change the output."""
    llm = make_llm(tokenizer_dir)
    apply_peft(llm, validate(PeftSpec, SPECS.get(method, {"method": method})))
    if perturb:
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, param in llm.named_parameters():
                if name in adapter_parameter_names(llm):
                    param.add_(torch.randn(param.shape, generator=generator) * 0.5)
    return llm.eval()


def embeds(llm, batch=2, length=7, seed=2):
    ids = torch.randint(3, 400, (batch, length), generator=torch.Generator().manual_seed(seed))
    return llm.get_input_embeddings()(ids).detach()  # (B, T, D)


def logits(llm, inputs_embeds, attention_mask=None, **kwargs):
    if attention_mask is None:
        attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long)
    with torch.no_grad():
        return llm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs).logits


@pytest.mark.parametrize("method", METHODS)
def test_only_the_adapter_parameters_require_grad(tokenizer_dir, method):
    llm = peft_llm(tokenizer_dir, method, perturb=False)
    names = adapter_parameter_names(llm)
    assert names, f"{method} added no adapter parameters"
    assert all(any(mark in name for mark in ADAPTER_MARK[method]) for name in names), sorted(names)
    assert {name for name, p in llm.named_parameters() if p.requires_grad} == names


@pytest.mark.parametrize("method", METHODS)
def test_backward_gives_gradients_to_the_adapters_only(tokenizer_dir, method):
    llm = peft_llm(tokenizer_dir, method).train()
    inputs_embeds = embeds(llm)
    labels = torch.randint(3, 400, inputs_embeds.shape[:2])
    out = llm(inputs_embeds=inputs_embeds, attention_mask=torch.ones_like(labels), labels=labels)
    assert out.logits.shape == (*labels.shape, 400)
    out.loss.backward()
    with_grad = {name for name, p in llm.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == adapter_parameter_names(llm)


@pytest.mark.parametrize("method", METHODS)
def test_logits_to_keep_gives_the_full_logits_at_those_positions(tokenizer_dir, method):
    llm = peft_llm(tokenizer_dir, method)
    inputs_embeds = embeds(llm)
    keep = torch.tensor([1, 4, 6])
    full = logits(llm, inputs_embeds)
    kept = logits(llm, inputs_embeds, logits_to_keep=keep)
    assert kept.shape == (2, 3, 400)
    torch.testing.assert_close(kept, full[:, keep])


@pytest.mark.parametrize("method", METHODS)
def test_cached_generate_from_embeddings_matches_greedy_full_forwards(tokenizer_dir, method):
    llm = peft_llm(tokenizer_dir, method)
    inputs_embeds = embeds(llm, batch=1)
    new = llm.generate(inputs_embeds=inputs_embeds, attention_mask=torch.ones(1, 7, dtype=torch.long), max_new_tokens=6)
    assert 1 <= new.shape[1] <= 6
    sequence = inputs_embeds
    for token in new[0].tolist():  # greedy decoding without a KV cache, one full forward per token
        assert logits(llm, sequence)[0, -1].argmax().item() == token
        sequence = torch.cat([sequence, llm.get_input_embeddings()(torch.tensor([[token]])).detach()], dim=1)


@pytest.mark.parametrize("method", METHODS)
def test_adapters_disabled_computes_the_base_model(tokenizer_dir, method):
    inputs_embeds = embeds(make_llm(tokenizer_dir))
    base = logits(make_llm(tokenizer_dir), inputs_embeds)
    llm = peft_llm(tokenizer_dir, method)
    adapted = logits(llm, inputs_embeds)
    assert not torch.allclose(adapted, base, atol=1e-4)
    with llm.model.disable_adapter():  # peft's own: the base model, and PeftCausalLM.generate's base branch
        torch.testing.assert_close(logits(llm, inputs_embeds), base)
        disabled_new = llm.generate(
            inputs_embeds=inputs_embeds[:1], attention_mask=torch.ones(1, 7).long(), max_new_tokens=4
        )
    torch.testing.assert_close(logits(llm, inputs_embeds), adapted)  # enabled again on leaving
    base_new = make_llm(tokenizer_dir).generate(
        inputs_embeds=inputs_embeds[:1], attention_mask=torch.ones(1, 7).long(), max_new_tokens=4
    )
    assert disabled_new.tolist() == base_new.tolist()


@pytest.mark.parametrize("method", ["lora", "ln-tuning"])
def test_lora_and_ln_tuning_start_as_the_base_model(tokenizer_dir, method):
    inputs_embeds = embeds(make_llm(tokenizer_dir))
    base = logits(make_llm(tokenizer_dir), inputs_embeds)
    torch.testing.assert_close(logits(peft_llm(tokenizer_dir, method, perturb=False), inputs_embeds), base)


def test_lora_starts_with_zero_b_and_targets_the_named_layers(tokenizer_dir):
    llm = make_llm(tokenizer_dir)
    apply_peft(llm, validate(PeftSpec, {"method": "lora", "target_modules": ["q_proj", "v_proj"]}))
    names = adapter_parameter_names(llm)
    assert {name.split(".")[-4] for name in names} == {"q_proj", "v_proj"}
    assert all(p.abs().sum() == 0 for name, p in llm.named_parameters() if ".lora_B." in name)


def test_all_linear_lora_leaves_the_lm_head_alone(tokenizer_dir):
    llm = peft_llm(tokenizer_dir, "lora", perturb=False)
    assert not any("lm_head" in name for name in adapter_parameter_names(llm))


def test_prefix_tuning_pads_each_row_of_a_right_padded_batch_like_a_single_row(tokenizer_dir):
    llm = peft_llm(tokenizer_dir, "prefix")
    inputs_embeds = embeds(llm)  # (2, 7, D)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    batch = logits(llm, inputs_embeds, mask)
    torch.testing.assert_close(batch[0], logits(llm, inputs_embeds[:1])[0])
    torch.testing.assert_close(batch[1, :4], logits(llm, inputs_embeds[1:, :4])[0])


def test_embeddings_and_hidden_size_reach_the_base_model_through_the_wrapper(tokenizer_dir):
    for method in METHODS:
        llm = peft_llm(tokenizer_dir, method, perturb=False)
        assert llm.hidden_size == 32
        assert llm.get_input_embeddings().weight.shape == (400, 32)


@pytest.mark.parametrize("method", METHODS)
def test_skeleton_mode_wraps_on_meta_with_the_real_trainable_count(tokenizer_dir, method):
    real = peft_llm(tokenizer_dir, method, perturb=False)
    with skeleton_mode():
        skeleton = build_hf_causal_lm({"config": tiny_llm_config(), "tokenizer": tokenizer_dir})
        apply_peft(skeleton, validate(PeftSpec, SPECS.get(method, {"method": method})))
    assert {p.device.type for p in skeleton.parameters()} == {"meta"}

    def trainable(llm):
        return sum(p.numel() for p in llm.parameters() if p.requires_grad)

    assert trainable(skeleton) == trainable(real) > 0
    assert adapter_parameter_names(skeleton) == adapter_parameter_names(real)


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"method": "prefix", "r": 4}, ["'r'", "'prefix'", "'lora'"]),
        ({"method": "lora", "num_virtual_tokens": 4}, ["'num_virtual_tokens'", "'lora'"]),
        ({"method": "prefix", "target_modules": ["q_proj"]}, ["'target_modules'", "'prefix'"]),
        ({"method": "ln-tuning", "dropout": 0.1}, ["'dropout'", "'ln-tuning'"]),
        ({"method": "ln-tuning", "target_modules": "all-linear"}, ["all-linear", "'ln-tuning'"]),
        ({"method": "adapters"}, ["llm.peft.method", "'lora', 'prefix' or 'ln-tuning'"]),
        ({"method": "lora", "rank": 4}, ["llm.peft.rank", "not a known field"]),
        ({"method": "lora", "r": 0}, ["llm.peft.r"]),
    ],
)
def test_spec_errors_name_the_field_and_the_method(fields, words):
    with pytest.raises(SpecError) as error:
        validate(PeftSpec, fields, where="llm.peft")
    for word in words:
        assert word in str(error.value)


def test_spec_dumps_only_its_methods_fields_and_validates_again():
    lora = validate(PeftSpec, {"method": "lora", "r": 4})
    assert lora.model_dump() == {
        "method": "lora",
        "r": 4,
        "alpha": 16,
        "dropout": 0.0,
        "target_modules": "all-linear",
    }
    for spec in (lora, validate(PeftSpec, {"method": "prefix"}), validate(PeftSpec, {"method": "ln-tuning"})):
        assert validate(PeftSpec, spec.model_dump(mode="json")) == spec


def test_lora_targets_that_do_not_exist_are_a_spec_error_listing_the_layers(tokenizer_dir):
    with pytest.raises(SpecError, match=r"target_modules.*q_proj"):
        apply_peft(make_llm(tokenizer_dir), validate(PeftSpec, {"method": "lora", "target_modules": ["qkv"]}))


def test_adapters_cannot_be_applied_twice(tokenizer_dir):
    llm = peft_llm(tokenizer_dir, "lora", perturb=False)
    with pytest.raises(SpecError, match="already has peft adapters"):
        apply_peft(llm, validate(PeftSpec, {"method": "lora"}))


def test_the_wrapped_llm_deep_copies(tokenizer_dir):
    llm = peft_llm(tokenizer_dir, "prefix")
    inputs_embeds = embeds(llm)
    copy = deepcopy(llm)
    assert type(copy.model) is PeftCausalLM
    torch.testing.assert_close(logits(copy, inputs_embeds), logits(llm, inputs_embeds))


def test_importing_the_module_does_not_import_peft():
    code = "import sys, mmllm_sdk.model.peft, mmllm_sdk.spec; assert 'peft' not in sys.modules, 'peft was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
