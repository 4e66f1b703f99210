"""Built-in modality encoders: CLIP and SigLIP vision towers, Whisper, video frames, timm and open_clip models.

One module per family: :mod:`.builtin` (the Hugging Face towers and Whisper), :mod:`.video_frames`,
:mod:`.timm_vision` and :mod:`.open_clip_vision` (the ``vision`` extra, sharing :mod:`.vision_library`).
They are registered lazily, so listing plugins does not import torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

from mmllm_sdk.hookspecs import hookimpl
from mmllm_sdk.plugins import Lazy

REGISTERED = {  # (modality, registered name) -> "module:Class" in this package
    ("image", "hf-clip-vision"): "builtin:CLIPVisionEncoder",
    ("image", "hf-siglip-vision"): "builtin:SiglipVisionEncoder",
    ("audio", "hf-whisper-encoder"): "builtin:WhisperAudioEncoder",
    ("video", "video-frames"): "video_frames:VideoFramesEncoder",
    # timm and open_clip models: the `vision` extra (pip install 'mmllm-sdk[vision]')
    ("image", "timm-vision"): "timm_vision:TimmVisionEncoder",
    ("image", "open-clip-vision"): "open_clip_vision:OpenClipVisionEncoder",
}
_MODULES = ("builtin", "video_frames", "timm_vision", "open_clip_vision", "vision_library")


@hookimpl
def register_encoders(register):
    for (modality, name), target in REGISTERED.items():
        register(modality, name, Lazy(f"{__name__}.{target}"))


def __getattr__(name: str) -> Any:
    # ``from mmllm_sdk.default_plugins.encoders import SomeClass`` keeps working: the modules load on first use
    for module in () if name.startswith("__") else _MODULES:
        found = getattr(importlib.import_module(f"{__name__}.{module}"), name, None)
        if found is not None:
            return found
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
