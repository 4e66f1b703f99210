"""The contracts of the survey's five components, plus the modality description they share."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AudioClip": "modality",
    "ConditionSpec": "output_projector",
    "InputProjector": "projector",
    "LLMBackbone": "llm",
    "ModalityEncoder": "encoder",
    "ModalityGenerator": "generator",
    "ModalitySpec": "modality",
    "OutputProjector": "output_projector",
    "SignalVocabulary": "signals",
    "TextConditionedGenerator": "generator",
    "VideoClip": "modality",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    # Imported on first use: reading a ModalitySpec (``mmllm plugins``) should not pay for torch.
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"mmllm_sdk.components.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'mmllm_sdk.components' has no attribute {name!r}")
