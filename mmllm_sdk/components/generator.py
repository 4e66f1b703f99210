"""ModalityGenerator: conditioning H_X -> generated items of one modality (frozen)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from mmllm_sdk.components.output_projector import ConditionSpec


class ModalityGenerator(nn.Module, ABC):
    """The contract of a modality generator, e.g. a diffusion pipeline.

    Subclasses set ``modality`` and ``condition_spec`` (the conditioning they take) and
    implement :meth:`generate` and :meth:`condition_targets` (the generator's own text
    conditioning of a caption, the target of output-side alignment).
    """

    modality: str
    condition_spec: ConditionSpec

    @abstractmethod
    def generate(self, conditioning: torch.Tensor, **kwargs: Any) -> list[Any]:
        """(B, num_tokens, dim) conditioning -> B generated items."""

    @abstractmethod
    def condition_targets(self, texts: list[str]) -> torch.Tensor:
        """Captions -> the generator's own conditioning (B, num_tokens, dim)."""
