"""ModalityEncoder: raw items of one modality -> features F_X of shape (B, N, D)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn


class ModalityEncoder(nn.Module, ABC):
    """The contract of a modality encoder (frozen by default).

    Subclasses set ``modality``, ``output_dim`` (D) and ``num_tokens`` (N, features per
    item) in ``__init__`` and implement :meth:`preprocess` and :meth:`forward`.
    """

    modality: str
    output_dim: int  # D
    num_tokens: int  # N

    @abstractmethod
    def preprocess(self, items: list[Any]) -> dict[str, torch.Tensor]:
        """Turn loaded items (what the modality's loaders return) into a batch of tensors.

        Every tensor's first dimension is ``len(items)``.
        """

    @abstractmethod
    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        """Encode a batch made by :meth:`preprocess` into features ``(B, N, D)``."""

    def reference(self) -> dict[str, Any]:
        """How a checkpoint finds this encoder's frozen weights again (see ``components.hf``)."""
        return {}
