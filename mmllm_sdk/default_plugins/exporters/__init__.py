"""Built-in export formats: ``hf-llava``, a folder transformers' LlavaForConditionalGeneration loads.

Registered lazily: listing plugins or building the ``mmllm`` parser does not import torch.
"""

from __future__ import annotations

from mmllm_sdk.hookspecs import hookimpl
from mmllm_sdk.plugins import Lazy
from mmllm_sdk.registry import Exporter

HF_LLAVA = Exporter(
    Lazy(f"{__name__}.hf_llava:export_hf_llava"),
    description="writes a folder that transformers.LlavaForConditionalGeneration.from_pretrained loads "
    "(CLIP vision encoder, linear or mlp projector, Llama-family LLM).",
    usage="load it with transformers.LlavaForConditionalGeneration.from_pretrained",
)


@hookimpl
def register_exporters(register):
    register("hf-llava", HF_LLAVA)
