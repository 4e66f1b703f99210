"""``training.torch_compile``: the SDK compiles the LLM's decoder (not the whole model), the run's losses are the eager
run's, and the trained model answers uncompiled."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters
from training_helpers import recipe, write_conversations, write_images
from transformers import TrainerCallback

from mmllm_sdk.default_plugins.recipes.run import train


class Losses(TrainerCallback):
    def __init__(self):
        self.losses = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


@pytest.fixture
def conversations(tmp_path):
    return write_conversations(tmp_path, write_images(tmp_path))


def test_torch_compile_compiles_the_llm_decoder_and_trains_as_eager(tmp_path, tokenizer_dir, conversations):
    losses, graphs = {}, {}
    for backend in (None, "aot_eager"):  # aot_eager: dynamo's tracing and autograd, without building C++ kernels
        compiled = {"torch_compile_backend": backend} if backend else {}
        spec = recipe(tmp_path, tokenizer_dir, "sft", conversations, training={"logging_steps": 1, **compiled})
        spec["training"]["output_dir"] = str(tmp_path / f"run-{backend}")
        torch._dynamo.reset()
        counters.clear()
        logged = Losses()
        result = train(spec, callbacks=[logged])
        losses[backend], graphs[backend] = logged.losses, counters["stats"]["unique_graphs"]
        decoder = result.model.llm.model.get_decoder()
        assert decoder._compiled_call_impl is None  # back to eager once trained
    assert graphs[None] == 0 and graphs["aot_eager"] > 0
    assert len(losses["aot_eager"]) == 8 and losses["aot_eager"] == pytest.approx(losses[None], rel=1e-4)
