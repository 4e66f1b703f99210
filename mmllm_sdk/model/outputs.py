"""What the model returns: :class:`MMLLMOutput` from ``forward``, :class:`ParameterCount` per component."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.utils import ModelOutput


@dataclass
class MMLLMOutput(ModelOutput):
    """What :meth:`MMLLM.forward` returns, in both modes.

    By default ``logits`` are (B, T, V) at every position, as the LLM returns them (with ``cache``, ``hidden_states``
    and ``attentions`` when asked for), and ``loss`` is the LLM's mean LM loss when ``labels`` are given. With
    ``supervised_only`` the LM head runs only at the K positions where some row's next token has a label: ``logits``
    are (B, K, V) and ``targets`` (B, K) are those next tokens (IGNORE_INDEX where a row has none there).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    cache: Any = None  # the LLM's key/value cache, with use_cache
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass(frozen=True)
class ParameterCount:
    component: str  # "llm", "inputs.image.encoder", …
    total: int
    trainable: int
