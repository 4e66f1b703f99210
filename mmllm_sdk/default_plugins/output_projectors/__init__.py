"""Built-in output projectors: ``mlp`` and ``transformer-queries`` (NExT-GPT), signal states -> conditioning.

The classes live in :mod:`.builtin`; they are registered lazily, so listing plugins does
not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from mmllm_sdk.hookspecs import hookimpl
from mmllm_sdk.plugins import Lazy

REGISTERED = {  # registered name -> class in .builtin
    "mlp": "MLPOutputProjector",
    "transformer-queries": "TransformerQueriesProjector",
}


@hookimpl
def register_output_projectors(register):
    """Register the built-in output projectors under their names."""
    for name, attribute in REGISTERED.items():
        register(name, Lazy(f"{__name__}.builtin:{attribute}"))


def __getattr__(name: str) -> Any:
    return getattr(importlib.import_module(f"{__name__}.builtin"), name)
