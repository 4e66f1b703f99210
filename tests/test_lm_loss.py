"""The training loss without the logits (``skip_logits``): the LM head runs a chunk of supervised tokens at a time,
and the loss and every gradient equal those of the (B, K, V) logits; an LLM whose logits are more than its head on
its decoder's states keeps the logits path. And a CPU run keeps the memory it frees for its next step."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import pytest
import torch

from mmllm_sdk import build_model
from mmllm_sdk.components import llm as llm_module
from mmllm_sdk.default_plugins.recipes.host import _glibc
from mmllm_sdk.testing import tiny_spec


def conversations(image_file):
    def turn(question, answer):
        content = [{"type": "image", "path": str(image_file)}, {"type": "text", "text": question}]
        return [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]

    return [
        turn("What is this?", "A gradient from dark to light."),
        turn("Colours?", "Red and green, mostly."),
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there, how are you today?"}],
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
