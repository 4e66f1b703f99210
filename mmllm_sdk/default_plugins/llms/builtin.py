"""Built-in LLM backbone: any transformers causal LM by hub id, local path, GGUF file or config."""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from mmllm_sdk.components import hf
from mmllm_sdk.components.llm import LLMBackbone
from mmllm_sdk.errors import SpecError
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
    tokenizer_kwargs: dict[str, Any] = {"trust_remote_code": source.trust_remote_code}
    if source.tokenizer is None:  # the tokenizer lives with the weights
        tokenizer_kwargs.update({k: v for k, v in source.pretrained_kwargs().items() if k in ("revision", "gguf_file")})
    tokenizer = hf.cached_call(what, AutoTokenizer.from_pretrained, tokenizer_source, **tokenizer_kwargs)
    if source.chat_template is not None:
        tokenizer.chat_template = source.chat_template
    model = hf.load_model(AutoModelForCausalLM, AutoConfig, source, what)
    reference = hf.reference(source)
    if source.tokenizer is not None:
        reference["tokenizer"] = source.tokenizer
    return LLMBackbone(model, tokenizer, reference=reference)


build_hf_causal_lm.Params = HFCausalLMParams  # type: ignore[attr-defined]
