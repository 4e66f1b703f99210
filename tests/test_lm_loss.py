"""The training loss without the logits (``skip_logits``): the LM head runs a chunk of supervised tokens at a time,
and the loss and every gradient equal those of the (B, K, V) logits; an LLM whose logits are more than its head on
its decoder's states keeps the logits path. Each answer token's log-probability without the logits
(``token_logprobs``, what the preference and RL recipes take): the head runs a chunk at a time and again in the
backward, and the values and every gradient, through any function of them, equal those of the logits. And a CPU run
keeps the memory it frees for its next step."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from mmllm_sdk import build_model
from mmllm_sdk.components import llm as llm_module
from mmllm_sdk.default_plugins.recipes.host import _glibc
from mmllm_sdk.errors import InputError
from mmllm_sdk.model.scoring import target_logprobs
from mmllm_sdk.testing import tiny_spec


def conversations(image_file):
    def turn(question, answer):
        content = [{"type": "image", "path": str(image_file)}, {"type": "text", "text": question}]
        return [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]

    return [
        turn("What is this?", "A gradient from dark to light."),
        turn("Colours?", "Red and green, mostly."),
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there, how are you today?"}],
        turn("And now?", "Still a gradient."),
    ]


def loss_and_grads(model, batch, **kwargs):
    model.zero_grad()
    out = model(**batch, supervised_only=True, **kwargs)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return out, grads


@pytest.fixture
def small_chunks(monkeypatch):
    """Three supervised tokens a chunk (the tiny vocabulary fits whole in the default chunk)."""
    monkeypatch.setattr(llm_module, "CHUNK_LOGITS", 3 * 402)


@pytest.mark.parametrize("divisor", [None, 50])
def test_the_chunked_loss_and_its_gradients_equal_the_loss_over_the_logits(
    image_model, image_file, small_chunks, divisor
):
    batch = image_model.processor(conversations(image_file))
    full, expected = loss_and_grads(image_model, batch, num_items_in_batch=divisor)
    chunked, found = loss_and_grads(image_model, batch, num_items_in_batch=divisor, skip_logits=True)
    assert image_model.llm.head_splits(image_model.llm.get_input_embeddings()(batch["input_ids"]))
    assert chunked.logits is None and full.logits is not None
    assert torch.allclose(chunked.loss, full.loss, rtol=1e-6, atol=0)
    assert expected.keys() == found.keys() and expected
    for name in expected:
        assert torch.allclose(found[name], expected[name], rtol=1e-5, atol=1e-8), name


def test_a_trained_lm_head_gets_the_gradients_of_the_logits_path(tokenizer_dir, image_file, small_chunks):
    spec = tiny_spec(tokenizer_dir)
    spec["llm"]["peft"] = {"method": "lora", "r": 4, "target_modules": ["lm_head", "q_proj"]}
    model = build_model(spec, progress=False)
    batch = model.processor(conversations(image_file))
    _, expected = loss_and_grads(model, batch)
    _, found = loss_and_grads(model, batch, skip_logits=True)
    head = [name for name in expected if "lm_head" in name]
    assert head, sorted(expected)
    for name in expected:
        assert torch.allclose(found[name], expected[name], rtol=1e-5, atol=1e-8), name


def test_without_gradients_the_chunked_loss_is_the_same_number(image_model, image_file, small_chunks):
    batch = image_model.processor(conversations(image_file))
    with torch.no_grad():
        full = image_model(**batch, supervised_only=True).loss
        chunked = image_model(**batch, supervised_only=True, skip_logits=True)
    assert torch.allclose(chunked.loss, full, rtol=1e-6, atol=0) and not chunked.loss.requires_grad


def test_an_llm_with_soft_capped_logits_keeps_the_logits_path(tokenizer_dir, image_file):
    spec = tiny_spec(tokenizer_dir)
    config = spec["llm"]["params"]["config"]
    config.update(model_type="gemma2", final_logit_softcapping=2.0, head_dim=8, query_pre_attn_scalar=8)
    model = build_model(spec, progress=False)
    batch = model.processor(conversations(image_file))
    _, expected = loss_and_grads(model, batch)
    out, found = loss_and_grads(model, batch, skip_logits=True)
    assert not model.llm.head_splits(model.llm.get_input_embeddings()(batch["input_ids"]))
    assert out.logits is not None  # Gemma 2 caps its logits after the head: the head alone would give others
    for name in expected:
        assert torch.allclose(found[name], expected[name], rtol=1e-6, atol=0), name


def objective(logprobs):
    """Something like DPO's loss: nonlinear in each row's sum, so each token's gradient differs."""
    sums = logprobs.sum(dim=-1)
    return -F.logsigmoid(0.1 * (sums[0] - sums[1])) - F.logsigmoid(0.3 * (sums[2] - sums[3])) + 1e-3 * sums.pow(2).sum()


def values_and_grads(model, batch, chunked, temperature=1.0):
    model.zero_grad()
    if chunked:
        out = model(**batch, supervised_only=True, token_logprobs=True, temperature=temperature)
        assert out.logits is None
        logprobs = out.logprobs
    else:
        out = model(**batch, supervised_only=True)
        logprobs = target_logprobs(out.logits, out.targets, temperature)
    objective(logprobs).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return logprobs.detach(), grads


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_and_their_gradients_equal_those_over_the_logits(
    image_model, image_file, small_chunks, temperature
):
    batch = image_model.processor(conversations(image_file))
    expected, expected_grads = values_and_grads(image_model, batch, chunked=False, temperature=temperature)
    found, found_grads = values_and_grads(image_model, batch, chunked=True, temperature=temperature)
    assert torch.allclose(found, expected, rtol=1e-6, atol=1e-6)
    assert (found != 0).sum() == (batch["labels"][:, 1:] != -100).sum()  # a value for each supervised token only
    assert expected_grads.keys() == found_grads.keys() and expected_grads
    for name in expected_grads:
        assert torch.allclose(found_grads[name], expected_grads[name], rtol=1e-4, atol=1e-7), name


def test_a_trained_lm_head_gets_the_token_logprobs_gradients_of_the_logits_path(
    tokenizer_dir, image_file, small_chunks
):
    spec = tiny_spec(tokenizer_dir)
    spec["llm"]["peft"] = {"method": "lora", "r": 4, "target_modules": ["lm_head", "q_proj"]}
    model = build_model(spec, progress=False)
    batch = model.processor(conversations(image_file))
    _, expected = values_and_grads(model, batch, chunked=False)
    _, found = values_and_grads(model, batch, chunked=True)
    assert [name for name in found if "lm_head" in name and found[name].abs().sum() > 0]
    for name in expected:
        assert torch.allclose(found[name], expected[name], rtol=1e-5, atol=1e-8), name


def test_without_gradients_the_token_logprobs_are_the_same_numbers(image_model, image_file, small_chunks):
    batch = image_model.processor(conversations(image_file))
    with torch.no_grad():
        out = image_model(**batch, supervised_only=True)
        found = image_model(**batch, supervised_only=True, token_logprobs=True)
    assert not found.logprobs.requires_grad
    assert torch.allclose(found.logprobs, target_logprobs(out.logits, out.targets), rtol=1e-6, atol=1e-6)
    assert torch.allclose(found.loss, out.loss, rtol=1e-6)  # the mean NLL, as the logits path's loss


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"supervised_only": True, "token_logprobs": True, "temperature": 0.0}, r"temperature is 0\.0; .* above 0"),
        ({"token_logprobs": True}, r"token_logprobs work with supervised_only=True"),
    ],
)
def test_token_logprobs_refuse_a_temperature_of_zero_and_a_batch_without_supervision(
    image_model, image_file, kwargs, message
):
    batch = image_model.processor(conversations(image_file))
    with pytest.raises(InputError, match=message):
        image_model(**batch, **kwargs)


glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or _glibc() is None, reason="mallopt is glibc's (Linux)"
)

# In a fresh interpreter: the allocator's state is the process's, and a test run before this one (a training run
# that kept memory, then trimmed it) leaves holes in the heap that serve large blocks without faulting again.
ALLOCATOR = """
import json, resource, sys, torch
from mmllm_sdk.default_plugins.recipes.host import freed_memory_kept

def faults():  # minor page faults of five 64 MiB buffers, each written and freed: above glibc's mmap threshold
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.ones(16 << 20)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def resident_mib():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**20

if sys.argv[1] == "reuse":
    outside = faults()  # glibc's default: mmap, munmap, fault again
    with freed_memory_kept() as kept:
        faults()  # the heap grows once
        print(json.dumps({"outside": outside, "inside": faults(), "kept": kept}))
else:
    with freed_memory_kept():
        start = resident_mib()
        torch.ones(64 << 20)  # 256 MiB, written and freed
        held = resident_mib() - start
    print(json.dumps({"held": held, "after": resident_mib() - start}))
"""


def fresh_interpreter(case):
    done = subprocess.run(
        [sys.executable, "-c", ALLOCATOR, case], capture_output=True, text=True, timeout=300, check=True
    )
    return json.loads(done.stdout.splitlines()[-1])


@glibc
def test_a_cpu_run_reuses_the_memory_it_frees_instead_of_faulting_it_in_again():
    pages = (64 << 20) // resource.getpagesize()
    found = fresh_interpreter("reuse")
    assert found["outside"] >= 4 * pages
    assert found["kept"] and found["inside"] < pages // 10


@glibc
def test_the_memory_a_cpu_run_kept_goes_back_to_the_kernel_when_it_ends():
    found = fresh_interpreter("return")
    assert found["held"] > 200 and found["after"] < 50
