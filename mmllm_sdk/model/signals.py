"""Signal tokens inside the LLM: trainable embedding and LM-head rows for them, the rest of both tables frozen.

:class:`SignalEmbedding` and :class:`SignalHead` replace the LLM's input embedding and LM head. Both share the original
weight (frozen, never copied) and hold a small ``signal_rows`` parameter, so alignment trains ``n_signal x D`` numbers
per table and a checkpoint stores just those rows. Neither is an ``nn.Linear``: LoRA's ``all-linear`` leaves the LM
head alone, as it does for a plain model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmllm_sdk.errors import SpecError


class SignalEmbedding(nn.Module):
    """An input embedding whose rows for ``token_ids`` come from the trainable ``signal_rows``."""

    def __init__(self, base: nn.Embedding, token_ids: Sequence[int]) -> None:
        super().__init__()
        self.weight = base.weight  # (V, D), shared with the LLM, frozen with it
        self.padding_idx = base.padding_idx
        self.num_embeddings, self.embedding_dim = base.weight.shape
        ids = torch.as_tensor(list(token_ids), dtype=torch.long, device=base.weight.device)
        slots = torch.full((self.num_embeddings,), -1, dtype=torch.long, device=base.weight.device)
        slots[ids] = torch.arange(len(ids), device=base.weight.device)
        self.register_buffer("slots", slots, persistent=False)  # (V,): token id -> row of signal_rows, or -1
        self.signal_rows = nn.Parameter(base.weight.detach()[ids].clone())  # (n, D)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeds = F.embedding(input_ids, self.weight, self.padding_idx)  # (B, T, D)
        slot = self.slots[input_ids]  # (B, T)
        signal = self.signal_rows[slot.clamp(min=0)].to(embeds.dtype)  # (B, T, D)
        return torch.where((slot >= 0).unsqueeze(-1), signal, embeds)


class SignalHead(nn.Module):
    """An LM head whose logits for ``token_ids`` come from the trainable ``signal_rows``."""

    def __init__(self, base: nn.Linear, token_ids: Sequence[int]) -> None:
        super().__init__()
        self.weight = base.weight  # (V, D), shared (with the input embedding too, when the LLM ties them)
        self.bias = base.bias
        self.out_features, self.in_features = base.weight.shape
        ids = torch.as_tensor(list(token_ids), dtype=torch.long, device=base.weight.device)
        self.register_buffer("signal_ids", ids, persistent=False)  # (n,)
        self.signal_rows = nn.Parameter(base.weight.detach()[ids].clone())  # (n, D)
        self.signal_bias = None if base.bias is None else nn.Parameter(base.bias.detach()[ids].clone())

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = F.linear(hidden, self.weight, self.bias)  # (…, V)
        bias = None if self.signal_bias is None else self.signal_bias.to(hidden.dtype)
        signal = F.linear(hidden, self.signal_rows.to(hidden.dtype), bias)  # (…, n)
        return logits.index_copy(-1, self.signal_ids, signal.to(logits.dtype))


def install_signal_rows(model: nn.Module, token_ids: Sequence[int]) -> tuple[SignalEmbedding, SignalHead]:
    """Put trainable rows for ``token_ids`` into a transformers causal LM's input embedding and LM head."""
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    if not isinstance(inputs, nn.Embedding) or not isinstance(outputs, nn.Linear):
        raise SpecError(
            f"The LLM's input embedding is a {type(inputs).__name__} and its LM head a {type(outputs).__name__}; "
            "output modalities need an nn.Embedding and an nn.Linear head (a transformers causal LM) so that signal "
            "tokens can be added and learned. Use an LLM whose vocabulary can grow, or drop the outputs section."
        )
    embedding, head = SignalEmbedding(inputs, token_ids), SignalHead(outputs, token_ids)
    model.set_input_embeddings(embedding)
    model.set_output_embeddings(head)
    return embedding, head


def signal_row_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable signal rows of a model with :func:`install_signal_rows` (empty without)."""
    modules = [m for m in model.modules() if isinstance(m, (SignalEmbedding, SignalHead))]
    return [p for m in modules for p in (m.signal_rows, getattr(m, "signal_bias", None)) if p is not None]
