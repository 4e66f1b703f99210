"""LLMBackbone: a Hugging Face causal LM with its tokenizer and chat template."""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
from torch import nn
from transformers import AddedToken

from mmllm_sdk.errors import InputError, SpecError

CHUNK_LOGITS = 1 << 23  # float32 logits a chunk of chunked_loss computes at once (32 MB)


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Cross-entropy of ``head(states)``, summed and divided by ``divisor``, a chunk of rows at a time: each chunk's
    gradients (to the states and to the head's trained tensors) are taken in the forward, so no chunk's logits
    outlive it."""

    @staticmethod
    def forward(ctx: Any, states: torch.Tensor, targets: torch.Tensor, head: Any, rows: int, divisor: Any, *trained):
        wanted = ctx.needs_input_grad[0] or bool(trained)
        grads = [torch.zeros_like(t) for t in (states, *trained)] if wanted else []
        total = torch.zeros((), device=states.device, dtype=torch.float32)
        for start in range(0, states.shape[0], rows):
            piece = states[start : start + rows].detach().requires_grad_(wanted)
            with torch.set_grad_enabled(wanted):
                logits = head(piece).float()  # the sum over the chunk, divided as the logits path divides it
                loss = nn.functional.cross_entropy(logits, targets[start : start + rows], reduction="sum") / divisor
            if wanted:
                piece_grad, *head_grads = torch.autograd.grad(loss, [piece, *trained], allow_unused=True)
                grads[0][start : start + rows] = piece_grad
                for grad, found in zip(grads[1:], head_grads, strict=True):
                    grad += 0 if found is None else found
            total += loss.detach()
        ctx.save_for_backward(*grads)
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> Any:
        grads = [grad * grad_output.to(grad.dtype) for grad in ctx.saved_tensors] or [None] * (
            len(ctx.needs_input_grad) - 4
        )
        return grads[0] if ctx.needs_input_grad[0] else None, None, None, None, None, *grads[1:]


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Each target token's log-probability under ``logits / temperature``, 0 where the target is -100 (IGNORE_INDEX):
    (..., V), (...) -> (...). One place for what the chunked head and the logits path compute."""
    flat = logits.float().flatten(0, -2)
    flat = flat / temperature if temperature != 1 else flat
    return -nn.functional.cross_entropy(flat, targets.flatten(), reduction="none").view_as(targets)


class _ChunkedLogprobs(torch.autograd.Function):
    """Each row's log-probability of its target under ``head(states) / temperature``, a chunk of rows at a time: no
    chunk's logits outlive it. The backward computes each chunk's logits again (the gradient that reaches a row is
    known only then), as activation checkpointing does."""

    @staticmethod
    def forward(
        ctx: Any, states: torch.Tensor, targets: torch.Tensor, head: Any, rows: int, temperature: float, *trained
    ):
        ctx.save_for_backward(states, targets)
        ctx.head, ctx.rows, ctx.temperature, ctx.trained = head, rows, temperature, trained
        with torch.no_grad():
            pieces = [
                target_logprobs(head(states[start : start + rows]), targets[start : start + rows], temperature)
                for start in range(0, states.shape[0], rows)
            ]
        return torch.cat(pieces) if pieces else states.new_zeros(0, dtype=torch.float32)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> Any:
        states, targets = ctx.saved_tensors
        wanted = ctx.needs_input_grad[0]
        state_grad = torch.zeros_like(states) if wanted else None
        trained_grads = [torch.zeros_like(t) for t in ctx.trained]
        for start in range(0, states.shape[0], ctx.rows):
            chunk = slice(start, start + ctx.rows)
            piece = states[chunk].detach().requires_grad_(wanted)
            with torch.enable_grad():
                picked = target_logprobs(ctx.head(piece), targets[chunk], ctx.temperature)
            inputs = [piece] * wanted + list(ctx.trained)
            found = torch.autograd.grad(picked, inputs, grad_output[chunk], allow_unused=True)
            if wanted:
                state_grad[chunk] = found[0]
            for grad, part in zip(trained_grads, found[wanted:], strict=True):
                if part is not None:
                    grad += part
        return state_grad, None, None, None, None, *trained_grads


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
        self._split: tuple[Any, bool] = (None, False)  # (the model it was checked on, head_splits())
        self._prefix: tuple[Any, torch.Tensor, Any] | None = None  # (its key, a shared prefix, its cache)
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
        states: bool = False,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Logits ``(B, K, V)`` at sequence ``positions`` (K,) only (``logits_to_keep`` where the model takes it); with
        ``states``, the decoder's last hidden states ``(B, K, D)`` there instead (what the head takes: :meth:`head_splits`).
        ``shared_prefix``: the first positions are the same in every row and precede every position: they are
        computed once and their key/value cache is shared by the batch (where :meth:`can_share_prefix`); while nothing
        of the LLM trains, they need no backward and the cache is kept for the next batch with the same prefix.
        """
        module = self._base().get_decoder() if states else self.model
        if shared_prefix > 0 and inputs_embeds.shape[0] > 1 and self.can_share_prefix() and not kwargs:
            name = self._cache_argument()
            past = self._prefix_cache(module, inputs_embeds[:1, :shared_prefix], states)  # (1, P, D) in
            past.batch_repeat_interleave(inputs_embeds.shape[0])  # (B, heads, P, d) in every layer
            inputs_embeds, positions = inputs_embeds[:, shared_prefix:], positions - shared_prefix
            kwargs = {name: past}  # attention_mask (B, T): the past positions and the rest
        else:
            kwargs.setdefault("use_cache", False)  # no key/value cache to fill (packed rows are masked only without)
        if states:
            return module(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs).last_hidden_state[
                :, positions
            ]
        keep = {"logits_to_keep": positions} if "logits_to_keep" in self._forward_parameters() else {}
        logits = module(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **keep, **kwargs).logits
        return logits if keep else logits[:, positions]

    def _prefix_cache(self, module: Any, prefix: torch.Tensor, states: bool) -> Any:
        """The key/value cache of a shared ``prefix`` (1, P, D) of text embeddings, every position attended. While
        nothing of the LLM trains it is a constant: computed without a backward, and kept for the next batch with
        the same prefix (a system prompt) until a weight, the mode or the module changes (not with PEFT adapters,
        which can be switched off without a weight changing). Returns a cache of its own to extend."""
        name, keep = self._cache_argument(), {} if states else {"logits_to_keep": 1}  # the decoder has no head
        if any(p.requires_grad for p in self.model.parameters()):
            return module(inputs_embeds=prefix, use_cache=True, **keep)[name]
        try:  # where each weight is, its in-place changes, its dtype (a sharded tensor has no pointer: not kept)
            weights = [(p.data_ptr(), p._version, p.dtype) for p in self.model.parameters()]
        except RuntimeError:
            weights = None
        key, kept = (module, self.model.training, prefix.shape, weights), self._prefix
        if weights is None or kept is None or kept[0] != key or not torch.equal(kept[1], prefix):
            with torch.no_grad():
                past = module(inputs_embeds=prefix.detach(), use_cache=True, **keep)[name]
            if weights is None or hasattr(self.model, "peft_config"):
                return past
            self._prefix = kept = (key, prefix.detach().clone(), past)
        return copy.deepcopy(kept[2])

    def head_splits(self, sample: torch.Tensor) -> bool:
        """Whether the LM's logits are its output embedding applied to its decoder's last hidden states (no
        soft-capping or scaling between them, no prompt-learning adapter): checked once per wrapped model, on the
        first positions of ``sample`` (B, T, D) embeddings, in eval mode."""
        if self._split[0] is not self.model:
            self._split = (self.model, self._check_split(sample[:1, :4].detach()))
        return self._split[1]

    def _check_split(self, sample: torch.Tensor) -> bool:
        peft_config, base = getattr(self.model, "active_peft_config", None), self._base()
        try:
            decoder, head = base.get_decoder(), base.get_output_embeddings()
        except (AttributeError, ValueError, NotImplementedError):  # transformers' "no decoder found" is a ValueError
            return False
        if decoder is base or head is None or (peft_config is not None and peft_config.is_prompt_learning):
            return False
        modes = {module: module.training for module in self.model.modules()}  # frozen parts stay in eval mode
        self.model.eval()
        try:
            with torch.no_grad():
                expected = self.model(inputs_embeds=sample, use_cache=False).logits.float()
                found = head(decoder(inputs_embeds=sample, use_cache=False).last_hidden_state).float()
        except (TypeError, ValueError, AttributeError, RuntimeError):  # a decoder called otherwise: keep the logits
            return False
        finally:
            for module, mode in modes.items():
                module.training = mode
        scale = float(expected.abs().max()) if expected.numel() else 1.0
        return expected.shape == found.shape and torch.allclose(expected, found, rtol=1e-3, atol=1e-3 * scale)

    def chunked_loss(self, states: torch.Tensor, targets: torch.Tensor, divisor: torch.Tensor) -> torch.Tensor:
        """The cross-entropy of the LM head on ``states`` (N, D) against ``targets`` (N,), summed and divided by
        ``divisor``, without the (N, V) logits: a chunk of rows at a time (about 32 MB of float32 logits each), each
        chunk's gradients taken as its loss is (where :meth:`head_splits`)."""
        head, trained, rows = self._chunked_head()
        return _ChunkedCrossEntropy.apply(states, targets, head, rows, divisor, *trained)

    def _chunked_head(self) -> tuple[Any, list[torch.Tensor], int]:
        """The LM head, its trained tensors, and how many rows' float32 logits make a chunk (about CHUNK_LOGITS)."""
        head = self._base().get_output_embeddings()
        vocab = head.weight.shape[0] if hasattr(head, "weight") else self.model.config.get_text_config().vocab_size
        return head, [p for p in head.parameters() if p.requires_grad], max(1, CHUNK_LOGITS // vocab)

    def chunked_logprobs(self, states: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Each row's log-probability of its target, ``log softmax(head(states) / temperature)[target]`` (N, D), (N,)
        -> (N,), without the (N, V) logits: a chunk of rows at a time, as :meth:`chunked_loss` (where
        :meth:`head_splits`)."""
        head, trained, rows = self._chunked_head()
        return _ChunkedLogprobs.apply(states, targets, head, rows, temperature, *trained)

    def _base(self) -> Any:
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def can_share_prefix(self) -> bool:
        """A decoder LM taking a cache and ``logits_to_keep``, without prompt-learning adapters (their own cache)."""
        peft_config = getattr(self.model, "active_peft_config", None)
        if peft_config is not None and peft_config.is_prompt_learning:
            return False
        return self._cache_argument() is not None and "logits_to_keep" in self._forward_parameters()

    def _forward_parameters(self) -> Any:
        return inspect.signature(self._base().forward).parameters

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
