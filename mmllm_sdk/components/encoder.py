"""ModalityEncoder: raw items of one modality -> features F_X of shape (B, N, D)."""

from __future__ import annotations

import functools
import importlib.metadata
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from mmllm_sdk.errors import PluginError


class ModalityEncoder(nn.Module, ABC):
    """The contract of a modality encoder (frozen by default): subclasses set ``modality``, ``output_dim`` and
    ``num_tokens`` in ``__init__`` and implement :meth:`preprocess` and :meth:`forward`."""

    modality: str
    output_dim: int  # D
    num_tokens: int  # N, features per item

    @abstractmethod
    def preprocess(self, items: list[Any]) -> dict[str, torch.Tensor]:
        """Loaded items (what the modality's loaders return) -> tensors whose first dimension is ``len(items)``."""

    @abstractmethod
    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        """Encode a batch made by :meth:`preprocess` into features ``(B, N, D)``."""

    def reference(self) -> dict[str, Any]:
        """How a checkpoint finds this encoder's frozen weights again (see ``components.hf``)."""
        return {}

    def cache_identity(self) -> dict[str, Any]:
        """What determines this encoder's features besides its spec entry and :meth:`reference`, for the feature cache.

        The default: class and package version, ``num_tokens``, ``output_dim``, tensor dtypes, hub commits and the
        config of a preprocessor attribute. Overrides return ``{**super().cache_identity(), "my_setting": ...}``.
        """
        cls = type(self)
        commits = {
            commit
            for module in self.modules()
            if isinstance(commit := getattr(getattr(module, "config", None), "_commit_hash", None), str)
        }
        return {
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "distribution": _distribution(cls.__module__.partition(".")[0]),
            "num_tokens": self.num_tokens,
            "output_dim": self.output_dim,
            "dtypes": sorted({str(tensor.dtype) for tensor in (*self.parameters(), *self.buffers())}),
            "hub_commits": sorted(commits),
            "preprocessing": {
                name: _preprocessor_config(getattr(self, name))
                for name in ("image_processor", "feature_extractor", "processor")
                if getattr(self, name, None) is not None and not callable(getattr(cls, name, None))
            },
        }


def cache_identity_of(encoder: ModalityEncoder) -> dict[str, Any]:
    """``encoder.cache_identity()`` put over the contract's default, so an override's omissions still count."""
    own = encoder.cache_identity()
    if not isinstance(own, Mapping):
        cls = type(encoder)
        raise PluginError(
            f"{cls.__module__}.{cls.__qualname__}.cache_identity() returned a {type(own).__name__}; it must return "
            "a dict of what determines the encoder's features (JSON-like values), e.g. "
            "{**super().cache_identity(), 'setting': value}."
        )
    return {**ModalityEncoder.cache_identity(encoder), **own}


def _preprocessor_config(processor: Any) -> dict[str, Any]:
    """Class and ``to_dict()``: transformers' torchvision and PIL image processors share a config, not every pixel."""
    cls = type(processor)
    to_dict = getattr(processor, "to_dict", None)
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "config": to_dict() if callable(to_dict) else processor}


@functools.cache
def _distribution(package: str) -> dict[str, str | None]:
    """The installed distribution(s) that provide a top-level ``package``, with their versions."""
    names = sorted(set(importlib.metadata.packages_distributions().get(package, [])))
    return {name: importlib.metadata.version(name) for name in names}
