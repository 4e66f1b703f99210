"""LLMBackbone: a Hugging Face causal LM with its tokenizer and chat template."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from transformers import AddedToken

from mmllm_sdk.errors import InputError, SpecError


class LLMBackbone(nn.Module):
    """The contract of the LLM backbone (frozen by default): a ``transformers`` causal LM that accepts
    ``inputs_embeds`` and a fast tokenizer with a chat template."""

    def __init__(self, model: Any, tokenizer: Any, reference: dict[str, Any] | None = None) -> None:
        super().__init__()
        if not getattr(tokenizer, "is_fast", False):
            raise SpecError(
                f"The LLM's tokenizer ({type(tokenizer).__name__}) is a slow tokenizer; the processor needs a "
                "fast one (offset mappings): install 'tokenizers' and load the folder's tokenizer.json."
            )
        if not tokenizer.chat_template:
            raise SpecError(
                "The LLM's tokenizer has no chat template; set llm.params.chat_template to a Jinja template "
                "or use an instruction-tuned model's tokenizer."
            )
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.model = model
        self.tokenizer = tokenizer
        self._reference = reference or {}
        try:  # a template that cannot render one exchange fails here, not in the middle of a run
            self.render_chat([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
        except InputError as exc:
            raise SpecError(f"{exc}; fix llm.params.chat_template or use a tokenizer with a working one.") from None

    @property
    def hidden_size(self) -> int:
        return self.model.config.get_text_config().hidden_size

    @property
    def max_positions(self) -> int | None:
        """How many positions the LLM can attend over (``max_position_embeddings``), when its config says."""
        return getattr(self.model.config.get_text_config(), "max_position_embeddings", None)

    def reference(self) -> dict[str, Any]:
        return self._reference

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def add_special_tokens(self, tokens: list[str]) -> list[int]:
        """Add tokens that must stay whole (placeholders, signal tokens), new rows at the mean; return their ids."""
        new = [t for t in tokens if t not in self.tokenizer.get_vocab()]
        if new:
            self.tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in new], special_tokens=True)
        ids = [self.tokenizer.convert_tokens_to_ids(t) for t in tokens]
        old_rows = self.get_input_embeddings().weight.shape[0]
        if len(self.tokenizer) > old_rows:
            self.model.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
            inputs, outputs = self.model.get_input_embeddings(), self.model.get_output_embeddings()
            tables = [inputs.weight]
            if outputs is not None and outputs.weight is not inputs.weight:  # untied LM head: its rows too
                tables.append(outputs.weight)
            with torch.no_grad():
                for weight in tables:
                    if weight.device.type != "meta":
                        weight[old_rows:] = weight[:old_rows].mean(dim=0, keepdim=True)
        return ids

    def render_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except Exception as exc:  # jinja's syntax and undefined errors, or the template's own raise_exception()
            raise InputError(
                f"The LLM's chat template cannot render these messages ({type(exc).__name__}: {exc})"
            ) from None

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        return self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)

    def logits_at(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        positions: torch.Tensor,
        shared_prefix: int = 0,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Logits ``(B, K, V)`` at sequence ``positions`` (K,) only (``logits_to_keep`` where the model takes it).
        ``shared_prefix``: the first positions are the same in every row and precede every position: they are
        computed once and their key/value cache is shared by the batch (where :meth:`can_share_prefix`).
        """
        if shared_prefix > 0 and inputs_embeds.shape[0] > 1 and self.can_share_prefix() and not kwargs:
            head = inputs_embeds[:1, :shared_prefix]  # (1, P, D)
            head_mask = None if attention_mask is None else attention_mask[:1, :shared_prefix]
            name = self._cache_argument()
            past = self.model(inputs_embeds=head, attention_mask=head_mask, use_cache=True, logits_to_keep=1)[name]
            past.batch_repeat_interleave(inputs_embeds.shape[0])  # (B, heads, P, d) in every layer
            return self.model(
                inputs_embeds=inputs_embeds[:, shared_prefix:],
                attention_mask=attention_mask,  # (B, T): the past positions and the rest
                logits_to_keep=positions - shared_prefix,
                **{name: past},
            ).logits
        keep = {"logits_to_keep": positions} if "logits_to_keep" in self._forward_parameters() else {}
        kwargs.setdefault("use_cache", False)  # no key/value cache to fill (and packed rows are masked only without)
        logits = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **keep, **kwargs).logits
        return logits if keep else logits[:, positions]

    def can_share_prefix(self) -> bool:
        """A decoder LM taking a cache and ``logits_to_keep``, without prompt-learning adapters (their own cache)."""
        peft_config = getattr(self.model, "active_peft_config", None)
        if peft_config is not None and peft_config.is_prompt_learning:
            return False
        return self._cache_argument() is not None and "logits_to_keep" in self._forward_parameters()

    def _forward_parameters(self) -> Any:
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return inspect.signature(base.forward).parameters

    def _cache_argument(self) -> str | None:
        """The forward's key/value cache argument (and output field): ``cache`` or, before 5.2x, ``past_key_values``."""
        parameters = self._forward_parameters()
        return next((name for name in ("cache", "past_key_values") if name in parameters), None)

    def end_token_ids(self) -> set[int]:
        """The generation config's ``eos_token_id`` and the tokenizer's."""
        configured = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ends = set(configured) if isinstance(configured, list) else {configured}
        ends.add(self.tokenizer.eos_token_id)
        return {token_id for token_id in ends if token_id is not None}

    def generate(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """New token ids only (the LLM's own KV-cached generation)."""
        kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        return self.model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)
