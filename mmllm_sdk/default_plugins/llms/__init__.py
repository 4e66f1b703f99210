"""Built-in LLM backbone: any transformers causal LM by hub id, local path, GGUF file or config.

The factory lives in :mod:`.builtin`; it is registered lazily, so listing plugins does not
import transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

from mmllm_sdk.hookspecs import hookimpl
from mmllm_sdk.plugins import Lazy


@hookimpl
def register_llms(register):
    register("hf-causal-lm", Lazy(f"{__name__}.builtin:build_hf_causal_lm"))


def __getattr__(name: str) -> Any:
    # ``from mmllm_sdk.default_plugins.X import SomeClass`` keeps working: the classes load on first use
    return getattr(importlib.import_module(f"{__name__}.builtin"), name)
