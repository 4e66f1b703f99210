"""Built-in input projectors: linear, mlp (LLaVA-1.5), qformer (BLIP-2), resampler (Flamingo) and pool.

The classes live in :mod:`.builtin`; they are registered lazily, so listing plugins does
not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from mmllm_sdk.hookspecs import hookimpl
from mmllm_sdk.plugins import Lazy

REGISTERED = {  # registered name -> class in .builtin
    "linear": "LinearProjector",
    "mlp": "MLPProjector",
    "qformer": "QFormerProjector",
    "resampler": "ResamplerProjector",
    "pool": "PoolProjector",
}


@hookimpl
def register_projectors(register):
    """Register the built-in input projectors under their names."""
    for name, attribute in REGISTERED.items():
        register(name, Lazy(f"{__name__}.builtin:{attribute}"))


def __getattr__(name: str) -> Any:
    # ``from mmllm_sdk.default_plugins.X import SomeClass`` keeps working: the classes load on first use
    return getattr(importlib.import_module(f"{__name__}.builtin"), name)
