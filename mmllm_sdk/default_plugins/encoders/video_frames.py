"""``video-frames``: any registered image encoder over frames sampled from each clip, pooled over time."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from mmllm_sdk.components.encoder import ModalityEncoder, cache_identity_of
from mmllm_sdk.components.modality import VideoClip
from mmllm_sdk.default_plugins.encoders.builtin import _check_items
from mmllm_sdk.errors import InputError, PluginError
from mmllm_sdk.validation import StrictModel, validate


def sample_frame_indices(num_available: int, num_frames: int) -> list[int]:
    """``num_frames`` indices spread uniformly over ``num_available`` frames, first and last included.

    Rounded from ``linspace(0, num_available - 1, num_frames)`` (as Video-LLaVA samples frames),
    so a clip shorter than ``num_frames`` repeats frames evenly.
    """
    return [int(i) for i in np.linspace(0, num_available - 1, num_frames).round()]


class FrameEncoderSpec(StrictModel):
    """Which registered image encoder encodes each frame."""

    name: str  # an image encoder's registered name, e.g. "hf-clip-vision"
    params: dict[str, Any] = Field(default_factory=dict)  # that encoder's params


class VideoFramesParams(StrictModel):
    """Params of ``video-frames``."""

    frame_encoder: FrameEncoderSpec
    num_frames: int = Field(8, ge=1)  # frames sampled uniformly from each clip (T)
    temporal_pool: Literal["mean", "none"] = "mean"  # mean: average the frames per token; none: concatenate them


class VideoFramesEncoder(ModalityEncoder):
    """``video-frames``: any registered image encoder over ``num_frames`` sampled frames, pooled over time.

    ``mean`` gives the frame encoder's N tokens per clip; ``none`` gives num_frames * N.
    The frame encoder is ``self.frame_encoder``.
    """

    name: ClassVar[str] = "video-frames"
    Params: ClassVar[type[VideoFramesParams]] = VideoFramesParams

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__()
        from mmllm_sdk.registry import get_registry

        where = f"{self.name}.params"
        self.params = validate(self.Params, params or {}, where=where)
        spec = self.params.frame_encoder
        entry = get_registry().get("encoders", spec.name, modality="image", where=f"{where}.frame_encoder.name")
        self.frame_encoder = entry.value(spec.params)
        if not isinstance(self.frame_encoder, ModalityEncoder):
            raise PluginError(
                f"{where}.frame_encoder: the {entry.label} of plugin {entry.plugin!r} returned a "
                f"{type(self.frame_encoder).__name__}, not a ModalityEncoder; fix the plugin's factory."
            )
        self.modality = "video"
        self.output_dim = self.frame_encoder.output_dim  # D
        frames_kept = 1 if self.params.temporal_pool == "mean" else self.params.num_frames
        self.num_tokens = frames_kept * self.frame_encoder.num_tokens  # N

    def preprocess(self, items: list[Any]) -> dict[str, torch.Tensor]:
        where = f"encoder {self.name!r}"
        _check_items(items, VideoClip, "video clip", where)
        num_frames = self.params.num_frames
        frames = []
        for index, clip in enumerate(items):
            if not clip.frames:
                raise InputError(f"{where}: video item {index} has no frames; remove it or re-export the video.")
            frames.extend(clip.frames[i] for i in sample_frame_indices(len(clip.frames), num_frames))
        batch = self.frame_encoder.preprocess(frames)  # each (B * T, ...)
        shaped = {}
        for key, tensor in batch.items():
            if tensor.shape[0] != len(frames):
                raise PluginError(
                    f"{where}: the frame encoder's preprocess() returned {key!r} with first dimension "
                    f"{tensor.shape[0]} for {len(frames)} frames; an encoder's batch must have one row per item."
                )
            shaped[key] = tensor.reshape(len(items), num_frames, *tensor.shape[1:])  # (B, T, ...)
        return shaped

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        batch, num_frames = next(iter(inputs.values())).shape[:2]
        flat = {key: tensor.flatten(0, 1) for key, tensor in inputs.items()}  # each (B * T, ...)
        features = self.frame_encoder(**flat)  # (B * T, N_frame, D)
        features = features.reshape(batch, num_frames, *features.shape[1:])  # (B, T, N_frame, D)
        if self.params.temporal_pool == "mean":
            return features.mean(dim=1)  # (B, N_frame, D)
        return features.flatten(1, 2)  # (B, T * N_frame, D)

    def reference(self) -> dict[str, Any]:
        return {"frame_encoder": self.frame_encoder.reference()}

    def cache_identity(self) -> dict[str, Any]:
        """The default identity, and the frame encoder's whole identity (its own ``cache_identity()`` included)."""
        return {**super().cache_identity(), "frame_encoder": cache_identity_of(self.frame_encoder)}
