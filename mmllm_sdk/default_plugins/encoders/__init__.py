"""Built-in modality encoders: CLIP and SigLIP vision towers, the Whisper audio encoder and video frames.

The classes live in :mod:`.builtin`; they are registered lazily, so listing plugins does
not import torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

from mmllm_sdk.hookspecs import hookimpl
from mmllm_sdk.plugins import Lazy

REGISTERED = {  # (modality, registered name) -> class in .builtin
    ("image", "hf-clip-vision"): "CLIPVisionEncoder",
    ("image", "hf-siglip-vision"): "SiglipVisionEncoder",
    ("audio", "hf-whisper-encoder"): "WhisperAudioEncoder",
    ("video", "video-frames"): "VideoFramesEncoder",
}


@hookimpl
def register_encoders(register):
    for (modality, name), attribute in REGISTERED.items():
        register(modality, name, Lazy(f"{__name__}.builtin:{attribute}"))


def __getattr__(name: str) -> Any:
    # ``from mmllm_sdk.default_plugins.X import SomeClass`` keeps working: the classes load on first use
    return getattr(importlib.import_module(f"{__name__}.builtin"), name)
