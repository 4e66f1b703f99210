"""Built-in modality encoders: CLIP and SigLIP vision towers, timm and open_clip models, Whisper, video frames.

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
    # timm and open_clip models: the `vision` extra (pip install 'mmllm-sdk[vision]')
    register("image", "timm-vision", Lazy(f"{__name__}.vision_extra:TimmVisionEncoder"))
    register("image", "open-clip-vision", Lazy(f"{__name__}.vision_extra:OpenClipVisionEncoder"))


def __getattr__(name: str) -> Any:
    # ``from mmllm_sdk.default_plugins.X import SomeClass`` keeps working: the classes load on first use
    module = "vision_extra" if name in ("TimmVisionEncoder", "OpenClipVisionEncoder") else "builtin"
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
