"""Built-in LLM backbone: any transformers causal LM by hub id, local path, GGUF file or config."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from mmllm_sdk.components import hf
from mmllm_sdk.components.llm import LLMBackbone
from mmllm_sdk.errors import SpecError
from mmllm_sdk.files import atomic_directory, cache_root
from mmllm_sdk.validation import validate


class HFCausalLMParams(hf.HFSource):
    """Params of ``hf-causal-lm``: where the weights come from, and the tokenizer."""

    tokenizer: str | None = None  # hub id or folder; defaults to ``model``; required with ``config``
    chat_template: str | None = None  # a Jinja template replacing the tokenizer's own

    reads_gguf: ClassVar[bool] = True


def build_hf_causal_lm(params: dict[str, Any]) -> LLMBackbone:
    """``hf-causal-lm``: an LLMBackbone around ``AutoModelForCausalLM`` and ``AutoTokenizer``."""
    source = validate(HFCausalLMParams, params, where="llm.params")
    what = "LLM backbone 'hf-causal-lm'"
    tokenizer_source = source.tokenizer or source.model
    if tokenizer_source is None:
        raise SpecError(
            f"{what}: with 'config' the random LLM still needs a real tokenizer and chat template; set "
            "llm.params.tokenizer to a tokenizer folder or hub id (mmllm_sdk.testing.tiny_tokenizer() makes a tiny one)."
        )
    reference = hf.reference(source)
    if source.tokenizer is not None:
        reference["tokenizer"] = source.tokenizer
    source = _dequantised_once(source, what)
    tokenizer_source = source.tokenizer or source.model
    tokenizer_kwargs: dict[str, Any] = {"trust_remote_code": source.trust_remote_code}
    if source.tokenizer is None:  # the tokenizer lives with the weights
        tokenizer_kwargs.update({k: v for k, v in source.pretrained_kwargs().items() if k in ("revision", "gguf_file")})
    tokenizer = hf.cached_call(what, AutoTokenizer.from_pretrained, tokenizer_source, **tokenizer_kwargs)
    if source.chat_template is not None:
        tokenizer.chat_template = source.chat_template
    model = hf.load_model(AutoModelForCausalLM, AutoConfig, source, what)
    return LLMBackbone(model, tokenizer, reference=reference)


def _dequantised_once(source: HFCausalLMParams, what: str) -> HFCausalLMParams:
    """A local GGUF file, dequantised once into a safetensors folder in the cache; ``source`` pointing at it.

    Dequantising a GGUF file takes seconds to minutes on every load (20 s for SmolLM2-135M);
    the safetensors copy loads in a fraction of a second. The folder is keyed by the file's
    content hash and the dtype; the checkpoint still references the GGUF file. In skeleton
    mode (``mmllm validate``) nothing is converted: the config comes from the cached folder
    if there is one, else from the GGUF file.
    """
    if not source.gguf_file or source.model is None:
        return source
    gguf_path = Path(source.model) / source.gguf_file
    if not gguf_path.is_file():
        return source  # a hub id: transformers fetches and reads the file itself
    folder = (
        cache_root() / "gguf" / f"{hf.content_hash(gguf_path)[:32]}-{str(source.torch_dtype).removeprefix('torch.')}"
    )
    converted = source.model_copy(update={"model": str(folder), "gguf_file": None})
    if (folder / "config.json").is_file():
        return converted
    if hf.is_skeleton():
        return source
    with torch.device("cpu"), atomic_directory(folder) as staging:
        model = hf.load_model(AutoModelForCausalLM, AutoConfig, source, what)
        model.hf_quantizer = None  # transformers refuses to save a model it believes quantised
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging)
        tokenizer_kwargs = {"gguf_file": source.gguf_file, "trust_remote_code": source.trust_remote_code}
        hf.hf_call(what, AutoTokenizer.from_pretrained, source.model, **tokenizer_kwargs).save_pretrained(staging)
    return converted


build_hf_causal_lm.Params = HFCausalLMParams  # type: ignore[attr-defined]
