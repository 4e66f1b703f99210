"""ModalityGenerator: conditioning H_X -> generated items of one modality (frozen)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from mmllm_sdk.components.output_projector import ConditionSpec


class ModalityGenerator(nn.Module, ABC):
    """The contract of a modality generator conditioned on H_X from an output projector, e.g. a diffusion pipeline."""

    modality: str
    condition_spec: ConditionSpec

    @abstractmethod
    def generate(self, conditioning: torch.Tensor, **kwargs: Any) -> list[Any]:
        """(B, num_tokens, dim) conditioning -> B generated items."""

    @abstractmethod
    def condition_targets(self, texts: list[str]) -> torch.Tensor:
        """Captions -> the generator's own conditioning (B, num_tokens, dim)."""

    def denoising_loss(self, conditioning: torch.Tensor, items: list[Any]) -> torch.Tensor:
        """Optional: the frozen generator's own loss on ``items``; its gradient reaches the output projector."""
        raise NotImplementedError(f"{type(self).__name__} has no denoising loss.")


class TextConditionedGenerator(nn.Module, ABC):
    """The contract of a generator conditioned on the text the LLM writes between two signal tokens (a TTS, say)."""

    modality: str

    @abstractmethod
    def generate_from_text(self, texts: list[str], **kwargs: Any) -> list[Any]:
        """B texts -> B generated items (PIL images, AudioClips …)."""

    def reference(self) -> dict[str, Any]:
        """How a checkpoint finds this generator again (see ``components.hf``)."""
        return {}
