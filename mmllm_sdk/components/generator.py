"""ModalityGenerator: conditioning H_X -> generated items of one modality (frozen)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

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
    conditioned_on: ClassVar[str] = "embeddings"  # H_X from an output projector

    @abstractmethod
    def generate(self, conditioning: torch.Tensor, **kwargs: Any) -> list[Any]:
        """(B, num_tokens, dim) conditioning -> B generated items."""

    @abstractmethod
    def condition_targets(self, texts: list[str]) -> torch.Tensor:
        """Captions -> the generator's own conditioning (B, num_tokens, dim)."""

    def denoising_loss(self, conditioning: torch.Tensor, items: list[Any]) -> torch.Tensor:
        """The generator's own training loss on ``items`` under ``conditioning`` (B, num_tokens, dim).

        Its weights stay frozen; the gradient reaches the conditioning, hence the output
        projector. ``align-output`` adds it with ``options: {denoising_weight: w}``. Optional:
        a generator without one raises ``NotImplementedError``.
        """
        raise NotImplementedError(f"{type(self).__name__} has no denoising loss.")


class TextConditionedGenerator(nn.Module, ABC):
    """The contract of a generator conditioned on text: a TTS, a renderer, an external tool.

    Its output modality has two signal tokens, an opening and a closing one
    (``<aud_0>`` … ``<aud_1>``); the text the LLM writes between them is the condition, and
    no output projector is involved. Subclasses set ``modality`` and implement
    :meth:`generate_from_text`. Nothing trains in it.
    """

    modality: str
    conditioned_on: ClassVar[str] = "text"

    @abstractmethod
    def generate_from_text(self, texts: list[str], **kwargs: Any) -> list[Any]:
        """B texts -> B generated items (PIL images, AudioClips …)."""

    def reference(self) -> dict[str, Any]:
        """How a checkpoint finds this generator again (see ``components.hf``)."""
        return {}
