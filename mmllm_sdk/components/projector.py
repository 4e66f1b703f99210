"""InputProjector: encoder features (B, N, D_in) -> soft prompt tokens (B, M, D_llm)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class InputProjector(nn.Module, ABC):
    """The contract of an input projector Θ_X→T (trained by default).

    A factory is called as ``factory(in_dim=D_in, out_dim=D_llm, num_input_tokens=N,
    params=dict)``; the projector sets ``num_tokens`` (M), the number of LLM positions
    each item takes, and raises :class:`~mmllm_sdk.errors.DimensionError` in
    ``__init__`` when the sizes cannot fit.
    """

    in_dim: int
    out_dim: int
    num_input_tokens: int
    num_tokens: int  # M

    def __init__(self, in_dim: int, out_dim: int, num_input_tokens: int) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.num_input_tokens = in_dim, out_dim, num_input_tokens
        self.num_tokens = num_input_tokens  # M = N unless the projector changes it

    @abstractmethod
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, N, D_in) -> (B, M, D_llm)."""
