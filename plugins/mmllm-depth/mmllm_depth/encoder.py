"""``depth-vit``: a CLIP vision tower with a one-channel patch embedding, over normalised depth or disparity."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from mmllm_sdk.components import ModalityEncoder
from mmllm_sdk.components.hf import HFSource, is_skeleton, load_model
from mmllm_sdk.components.hf import reference as hf_reference
from mmllm_sdk.errors import InputError, SpecError
from mmllm_sdk.validation import validate
from pydantic import Field, model_validator
from torch import nn

from mmllm_depth.modality import MODALITY, DepthMap, depth_from_array

MILLIMETRES_PER_METRE = 1000.0
RGB_CHANNELS = 3
PREPROCESS_VERSION = 1  # bump when preprocess() changes what it computes (enters the feature cache's fingerprint)


class DepthViTParams(HFSource):
    """Params of ``depth-vit``: where the CLIP vision tower comes from, and how depth becomes its input."""

    units: Literal["mm", "m"] = "mm"  # what the stored values mean: 16-bit PNGs hold mm; float .npy files often m
    max_depth: float = Field(10.0, gt=0)  # metres; deeper values are clipped to it
    min_depth: float = Field(0.5, gt=0)  # metres; disparity reaches 1 here, nearer values saturate (disparity only)
    representation: Literal["depth", "disparity"] = "disparity"  # disparity (1/depth) is what ImageBind feeds
    mean: float = 0.5  # subtracted after scaling to [0, 1]
    std: float = Field(0.5, gt=0)  # divides after subtracting mean
    feature_layer: int = -1  # index into hidden_states (0: the embeddings, then one per layer)

    @model_validator(mode="after")
    def _depth_range(self) -> DepthViTParams:
        if self.representation == "disparity" and self.min_depth >= self.max_depth:
            raise ValueError(
                f"min_depth ({self.min_depth:g} m) must be less than max_depth ({self.max_depth:g} m) for disparity; "
                "min_depth is the nearest distance told apart, max_depth the farthest"
            )
        if self.config is not None and self.config.get("num_channels", 1) != 1:
            raise ValueError(
                f"config.num_channels is {self.config['num_channels']!r}, but depth-vit takes one channel (the depth); "
                "leave num_channels out"
            )
        return self


class DepthViTEncoder(ModalityEncoder):
    """``depth-vit``: reuse an image encoder with a one-channel patch embedding, as ImageBind treats depth.

    A Hugging Face ``CLIPVisionModel`` (``self.model``) from ``model:`` (a CLIP vision tower whose
    RGB patch embedding is summed over the colour channels into one input channel, so a grey
    image gives the same response) or ``config:`` (random init, one channel). Each depth map is
    turned into metres (``units``), clipped to ``[0, max_depth]``, optionally turned into
    disparity (``min_depth / depth``; 0 where depth is missing), scaled to ``[0, 1]``, resized
    to ``image_size`` squared and normalised; the patch tokens of ``hidden_states[feature_layer]``
    are the features (the CLS token is dropped).
    """

    name: ClassVar[str] = "depth-vit"
    Params: ClassVar[type[DepthViTParams]] = DepthViTParams

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModel

        where = f"{self.name}.params"
        self.params = p = validate(self.Params, params or {}, where=where)
        what = f"encoder {self.name!r}"
        source = p if p.config is None else p.model_copy(update={"config": {**p.config, "num_channels": 1}})
        self.model = load_model(CLIPVisionModel, CLIPVisionConfig, source, what)
        one_channel_patch_embedding(self.model, what)
        config = self.model.config
        self.feature_layer = _check_feature_layer(p.feature_layer, config.num_hidden_layers, where)
        self.image_size = int(config.image_size)  # S
        self.modality = MODALITY
        self.output_dim = int(config.hidden_size)  # D
        self.num_tokens = (config.image_size // config.patch_size) ** 2  # N = (S / P)^2, CLS dropped

    def preprocess(self, items: list[Any]) -> dict[str, torch.Tensor]:
        where = f"encoder {self.name!r}"
        if not isinstance(items, (list, tuple)) or not items:
            raise InputError(f"{where}: preprocess() got no items; pass a non-empty list of DepthMap items.")
        rows = []
        for index, item in enumerate(items):
            if not isinstance(item, DepthMap):
                raise InputError(
                    f"{where}: item {index} is a {type(item).__name__}, but this encoder takes DepthMap items; "
                    "load inputs through the depth modality (a .png or .npy path, or ModalitySpec.load)."
                )
            checked = depth_from_array(np.asarray(item.values), f"{where}: item {index}")
            rows.append(self.depth_input(checked.values))
        return {"depth_values": torch.stack(rows)}  # (B, 1, S, S)

    def depth_input(self, values: np.ndarray) -> torch.Tensor:
        """One stored depth map ``(H, W)`` -> the tower's normalised input ``(1, S, S)``."""
        p = self.params
        depth = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))  # (H, W), stored units
        if p.units == "mm":
            depth = depth / MILLIMETRES_PER_METRE  # (H, W) metres
        depth = depth.clamp(0.0, p.max_depth)
        if p.representation == "disparity":
            scaled = torch.where(depth > 0, p.min_depth / depth.clamp(min=p.min_depth), 0.0)  # (H, W) in [0, 1]
        else:
            scaled = depth / p.max_depth  # (H, W) in [0, 1]
        size = (self.image_size, self.image_size)
        resized = F.interpolate(scaled[None, None], size=size, mode="bilinear", align_corners=False, antialias=True)
        return ((resized[0] - p.mean) / p.std).contiguous()  # (1, S, S)

    def forward(self, depth_values: torch.Tensor) -> torch.Tensor:
        weight = patch_embedding(self.model).weight
        depth_values = depth_values.to(device=weight.device, dtype=weight.dtype)  # (B, 1, S, S)
        outputs = self.model(pixel_values=depth_values, output_hidden_states=True)
        hidden = outputs.hidden_states[self.feature_layer]  # (B, 1 + N, D)
        return hidden[:, 1:]  # (B, N, D): the CLS token dropped

    def reference(self) -> dict[str, Any]:
        return hf_reference(self.params)

    def cache_identity(self) -> dict[str, Any]:
        """What preprocess() computes, with defaults filled in (the spec's params may leave them out)."""
        p = self.params
        return {
            "preprocess_version": PREPROCESS_VERSION,
            "units": p.units,
            "max_depth": p.max_depth,
            "min_depth": p.min_depth,
            "representation": p.representation,
            "mean": p.mean,
            "std": p.std,
            "image_size": self.image_size,
            "feature_layer": p.feature_layer,
        }


def one_channel_patch_embedding(model: Any, what: str) -> None:
    """Give a CLIP vision tower one input channel: an RGB patch embedding's weights are summed over the colours.

    A grey image (equal R, G and B) gives the RGB tower the same patch embeddings as its grey
    level gives the one-channel tower. In skeleton mode the weights are on ``meta`` and are not read.
    """
    embeddings = _vision_embeddings(model)
    old = embeddings.patch_embedding
    if old.in_channels == 1:
        return
    if old.in_channels != RGB_CHANNELS:
        raise SpecError(
            f"{what}: the vision tower's patch embedding takes {old.in_channels} input channels; depth-vit turns "
            f"an RGB ({RGB_CHANNELS}-channel) or one-channel CLIP vision tower into a depth encoder. Use such a "
            "tower, or 'config:' for a random one."
        )
    new = nn.Conv2d(
        1,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        bias=old.bias is not None,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    if not is_skeleton():
        with torch.no_grad():
            new.weight.copy_(old.weight.sum(dim=1, keepdim=True))  # (D, 3, P, P) -> (D, 1, P, P)
            if old.bias is not None:
                new.bias.copy_(old.bias)
    new.requires_grad_(old.weight.requires_grad)
    embeddings.patch_embedding = new
    model.config.num_channels = 1
    if hasattr(embeddings, "config"):
        embeddings.config.num_channels = 1


def _vision_embeddings(model: Any) -> nn.Module:
    """The CLIPVisionEmbeddings of a CLIPVisionModel (transformers 5 holds them directly; 4 under vision_model)."""
    return getattr(model, "vision_model", model).embeddings


def patch_embedding(model: Any) -> nn.Conv2d:
    """The tower's patch embedding: a Conv2d from input channels to the hidden size."""
    return _vision_embeddings(model).patch_embedding


def _check_feature_layer(layer: int, num_layers: int, where: str) -> int:
    entries = num_layers + 1  # hidden_states: the embeddings, then every layer's output
    if not -entries <= layer < entries:
        raise SpecError(
            f"{where}.feature_layer is {layer}, but this vision tower has {num_layers} layers, so hidden_states "
            f"has {entries} entries (the embeddings, then one per layer); use an index from {-entries} to "
            f"{entries - 1} (-1: the last layer, -2: the penultimate)."
        )
    return layer
