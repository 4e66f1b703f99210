"""mmllm-sdk: build multimodal LLMs from plugins (encoders, projectors, LLM backbones, generators)."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "MMLLM": "mmllm_sdk.model.modeling",
    "Response": "mmllm_sdk.model.modeling",
    "build_model": "mmllm_sdk.model.modeling",
    "ModelSpec": "mmllm_sdk.spec",
    "load_spec": "mmllm_sdk.spec",
    "list_components": "mmllm_sdk.registry",
    "train": "mmllm_sdk.default_plugins.recipes.run",
    "evaluate": "mmllm_sdk.default_plugins.evaluation.run",
    "hookimpl": "mmllm_sdk.hookspecs",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `mmllm --help` does not pay for torch and transformers.
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mmllm_sdk' has no attribute {name!r}")
