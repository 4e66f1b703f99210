"""Built-in modality generators: ``diffusers-sd`` (images) and ``diffusers-audioldm`` (audio), through diffusers.

The classes live in the package :mod:`.diffusers` (``base``: what both share,
``stable_diffusion``, ``audioldm``, ``byte_tokenizers``); they are registered lazily, so
listing plugins imports neither torch nor diffusers.
"""

from __future__ import annotations

import importlib
from typing import Any

from mmllm_sdk.hookspecs import hookimpl
from mmllm_sdk.plugins import Lazy

REGISTERED = {  # (modality, registered name) -> class in .diffusers
    ("image", "diffusers-sd"): "StableDiffusionGenerator",
    ("audio", "diffusers-audioldm"): "AudioLDMGenerator",
}


@hookimpl
def register_generators(register):
    """Register the built-in generators for their modalities."""
    for (modality, name), attribute in REGISTERED.items():
        register(modality, name, Lazy(f"{__name__}.diffusers:{attribute}"))


def __getattr__(name: str) -> Any:
    return getattr(importlib.import_module(f"{__name__}.diffusers"), name)
