"""OutputProjector: signal-token hidden states S_X -> generator conditioning H_X."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ConditionSpec:
    """The conditioning a generator expects: ``num_tokens`` vectors of size ``dim``."""

    num_tokens: int
    dim: int


class OutputProjector(nn.Module, ABC):
    """The contract of an output projector Θ_T→X (trained by default).

    A factory is called as ``factory(llm_dim=D_llm, condition_spec=ConditionSpec,
    num_signal_tokens=k, params=dict)``; the condition comes from the generator and k from
    the spec's ``signal_tokens``.
    """

    def __init__(self, llm_dim: int, condition_spec: ConditionSpec, num_signal_tokens: int) -> None:
        super().__init__()
        self.llm_dim, self.condition_spec, self.num_signal_tokens = llm_dim, condition_spec, num_signal_tokens  # k

    @abstractmethod
    def forward(self, signal_states: torch.Tensor) -> torch.Tensor:
        """(B, k, D_llm) -> (B, condition_spec.num_tokens, condition_spec.dim)."""
