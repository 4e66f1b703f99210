"""Parameter-efficient fine-tuning of the LLM backbone (LoRA, prefix tuning, LN tuning) through the peft library.

The spec of it (``llm.peft``) is :class:`mmllm_sdk.spec.PeftSpec`; here it is applied to a built LLM."""

from __future__ import annotations

import functools
import sys
import warnings
from typing import Any

import torch

from mmllm_sdk.components.llm import LLMBackbone
from mmllm_sdk.errors import SpecError
from mmllm_sdk.spec import PeftSpec


def __getattr__(name: str) -> Any:  # PEP 562: peft takes seconds to import, so it loads only when adapters are used
    if name == "PeftCausalLM":
        return _peft_causal_lm()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _peft_causal_lm() -> type:
    """The class ``PeftCausalLM`` of this module (built on first use, importing peft)."""
    from peft import PeftModelForCausalLM, PeftType

    class PeftCausalLM(PeftModelForCausalLM):
        """peft's causal-LM wrapper whose ``generate`` also takes ``inputs_embeds`` with prefix tuning.

        peft's own prefix-tuning ``generate`` rejects them (transformers cannot see that its
        ``prepare_inputs_for_generation`` forwards them). Here the base model generates from a cache that already holds
        the prefix, the prompt's positions starting after the virtual tokens: the same computation as ``forward``.
        """

        def generate(self, *args: Any, **kwargs: Any) -> torch.Tensor:
            if self.active_peft_config.peft_type != PeftType.PREFIX_TUNING:
                return super().generate(*args, **kwargs)
            base = self.get_base_model()
            if self._adapters_disabled:  # inside disable_adapter(): the base model alone
                return base.generate(*args, **kwargs)
            if args or kwargs.get("inputs_embeds") is None:
                raise TypeError(
                    "With prefix tuning, generate takes keywords inputs_embeds=… and attention_mask=… (peft's own "
                    "prefix generation from input_ids is not used); embed the ids with get_input_embeddings() first."
                )
            inputs_embeds = kwargs.pop("inputs_embeds")  # (B, T, D)
            batch, length, dim = inputs_embeds.shape
            mask = kwargs.pop("attention_mask", None)
            mask = torch.ones(batch, length, dtype=torch.long, device=inputs_embeds.device) if mask is None else mask
            virtual = self.active_peft_config.num_virtual_tokens
            cache = self.get_prompt(batch_size=batch, max_cache_len=-1)  # holds `virtual` positions per layer
            # transformers reads inputs_embeds as the whole sequence and skips the positions already cached,
            # so the virtual positions get placeholder rows that are never computed: (B, P+T, D) and (B, P+T)
            embeds = torch.cat([inputs_embeds.new_zeros(batch, virtual, dim), inputs_embeds], dim=1)
            mask = torch.cat([mask.new_ones(batch, virtual), mask], dim=1)
            return base.generate(inputs_embeds=embeds, attention_mask=mask, cache=cache, **kwargs)

    # importable (and picklable) as mmllm_sdk.model.peft.PeftCausalLM, through __getattr__ above
    PeftCausalLM.__module__, PeftCausalLM.__qualname__ = __name__, "PeftCausalLM"
    return PeftCausalLM


def apply_peft(llm: LLMBackbone, spec: PeftSpec) -> None:
    """Wrap ``llm.model`` in a peft model in place; afterwards only the adapter parameters require grad.

    Works on a skeleton (an LLM on the ``meta`` device): the adapters are created there too, so parameter counts
    include them. Apply it after the tokens the model adds are in the vocabulary and after any freezing of the LLM,
    since freezing would freeze the adapters.
    """
    if has_adapters(llm):
        raise SpecError(
            f"The LLM already has peft adapters ({llm.model.active_peft_config.peft_type.value}); "
            "apply llm.peft once, to the base model."
        )
    if spec.method == "prefix" and llm.max_positions is not None and spec.num_virtual_tokens >= llm.max_positions:
        raise SpecError(
            f"llm.peft.num_virtual_tokens is {spec.num_virtual_tokens:,}, but the LLM has positions for "
            f"{llm.max_positions:,} in all; leave room for the text (a few dozen virtual tokens is usual)."
        )
    config = spec.peft_config()
    try:
        with warnings.catch_warnings():
            # version-skew noise, not actionable: peft asks the norm layers LN tuning wraps for in/out features
            # (it never uses them), and reads transformers' deprecated `is_gradient_checkpointing`
            warnings.filterwarnings("ignore", "Unsupported layer type", UserWarning)
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            llm.model = _peft_causal_lm()(llm.model, config)
    except ValueError as exc:  # peft's words for targets it cannot find or an architecture it does not know
        raise SpecError(
            f"llm.peft: peft cannot apply method {spec.method!r} to this LLM ({type(llm.model).__name__}): "
            f"{str(exc).rstrip('.')}.{_target_hint(llm.model, spec.method)}"
        ) from exc


def has_adapters(llm: LLMBackbone) -> bool:
    """True when ``llm.model`` is wrapped by :func:`apply_peft` (or any peft model)."""
    if "peft" not in sys.modules:  # nothing can be a peft model before peft is imported
        return False
    from peft import PeftModel

    return isinstance(llm.model, PeftModel)


def adapter_parameter_names(llm: LLMBackbone) -> set[str]:
    """Names (relative to ``llm``) of the parameters peft added: LoRA A/B, the prefix encoder, tuned norms."""
    if not has_adapters(llm):
        return set()
    from peft.tuners.tuners_utils import BaseTunerLayer

    names = set()
    if llm.model.active_peft_config.is_prompt_learning:
        names.update(f"model.prompt_encoder.{name}" for name, _ in llm.model.prompt_encoder.named_parameters())
    for module_name, module in llm.model.named_modules(prefix="model"):
        if isinstance(module, BaseTunerLayer):
            for layer_name in module.adapter_layer_names:
                layer = getattr(module, layer_name)
                names.update(f"{module_name}.{layer_name}.{name}" for name, _ in layer.named_parameters())
    return names


def _target_hint(model: Any, method: str) -> str:
    """The layer names a user could put in llm.peft.target_modules for this method (empty for prefix)."""
    if method == "lora":
        what, fits = "linear", lambda module: isinstance(module, torch.nn.Linear)
    elif method == "ln-tuning":
        what, fits = "norm", lambda module: "norm" in type(module).__name__.lower()
    else:
        return ""
    names = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if name and fits(module)})
    return f" Set llm.peft.target_modules to some of its {what} layers: {', '.join(names) or '(none found)'}."
