"""``open-clip-vision``: an OpenCLIP vision tower by config name, its patch tokens or embedding (the ``vision`` extra)."""

from __future__ import annotations

import difflib
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from mmllm_sdk.components.hf import is_skeleton
from mmllm_sdk.default_plugins.encoders.vision_library import (
    TransformVisionEncoder,
    checkpoint_path,
    library_reference,
    library_version,
    load_by_name,
    probe_tokens,
    read_state_dict,
    require,
)
from mmllm_sdk.dtypes import resolve_dtype
from mmllm_sdk.errors import SpecError
from mmllm_sdk.validation import StrictModel, validate


class OpenClipParams(StrictModel):
    """Params of ``open-clip-vision``: an OpenCLIP model by config name and where its weights come from."""

    model_name: str  # an open_clip config, e.g. "ViT-B-32" (open_clip.list_models())
    checkpoint: str | None = None  # a local state-dict file of the CLIP model or its visual tower
    pretrained: str | None = None  # an open_clip pretrained tag, e.g. "laion2b_s34b_b79k" (needs network)
    image_size: int | None = Field(None, ge=1)  # input side in pixels; default: the model config's
    features: Literal["spatial", "pooled"] = "spatial"  # spatial: patch tokens (no CLS); pooled: the embedding
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bfloat16 where native, else float32

    @model_validator(mode="after")
    def _one_source(self) -> OpenClipParams:
        if self.checkpoint is not None and self.pretrained is not None:
            raise ValueError(
                "set at most one of 'checkpoint' (a local weight file) or 'pretrained' (an open_clip tag, "
                "downloaded); with neither the weights are random"
            )
        return self


def _open_clip_tokens(visual: nn.Module, pixel_values: torch.Tensor, pooled: bool) -> torch.Tensor:
    """An OpenCLIP vision tower's output as tokens (B, N, D): patch tokens, or the image embedding."""
    output = visual(pixel_values)  # (B, E), or ((B, E), (B, T, W)) with output_tokens
    if pooled:
        embedding = output[0] if isinstance(output, tuple) else output
        return embedding[:, None]  # (B, 1, E)
    return output[1]  # (B, T, W): after the final norm, before the projection; no CLS


class OpenClipVisionEncoder(TransformVisionEncoder):
    """``open-clip-vision``: an OpenCLIP vision tower; its patch tokens or its image embedding.

    ``spatial``: the tower's token outputs (``output_tokens``), the CLS token left out, of the
    tower's width; ViT towers only. ``pooled``: the image embedding ``encode_image`` returns
    (unnormalised), one token. Images are preprocessed by open_clip's eval transform. The
    text tower is dropped; the vision tower is ``self.model``.
    """

    name: ClassVar[str] = "open-clip-vision"
    Params: ClassVar[type[OpenClipParams]] = OpenClipParams

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__()
        where = f"{self.name}.params"
        self.params = validate(self.Params, params or {}, where=where)
        what = f"encoder {self.name!r}"
        open_clip = require("open_clip", what)
        name = self.params.model_name
        if name not in open_clip.list_models():
            close = difflib.get_close_matches(name, open_clip.list_models(), n=8, cutoff=0.4)
            listed = f" Close names: {', '.join(close)}." if close else " See open_clip.list_models()."
            raise SpecError(f"{where}.model_name: open_clip has no model config {name!r}.{listed}")
        if self.params.pretrained is not None:
            tags = open_clip.list_pretrained_tags_by_model(name)
            if self.params.pretrained not in tags:
                raise SpecError(
                    f"{where}.pretrained: open_clip has no pretrained tag {self.params.pretrained!r} for {name!r}; "
                    f"its tags are: {', '.join(tags) or 'none'}."
                )
        self.checkpoint = checkpoint_path(self.params.checkpoint, where) if self.params.checkpoint else None
        clip, self.transform = self._create(open_clip, name, where)
        if self.checkpoint is not None and not is_skeleton():
            self._load(open_clip, clip, where)
        self.model = clip.visual
        del clip  # the text tower goes with it
        self.model.eval()
        pooled = self.params.features == "pooled"
        if not pooled:
            if not hasattr(self.model, "output_tokens"):
                raise SpecError(
                    f"{where}.features: {name!r}'s vision tower ({type(self.model).__name__}) does not return its "
                    "patch tokens in this open_clip; use features: pooled, or a ViT model such as 'ViT-B-32'."
                )
            self.model.output_tokens = True  # forward returns (embedding, tokens)
        image_size = getattr(self.model, "image_size", None) or self.params.image_size or 224
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        tokens = probe_tokens(self.model, lambda visual, x: _open_clip_tokens(visual, x, pooled), (3, height, width))
        if tokens is None:  # skeleton mode, and the tower does not run on meta
            tokens = (1, self.model.output_dim) if pooled else (self._grid_tokens(), self._width())
        self.modality = "image"
        self.num_tokens, self.output_dim = tokens  # N, D
        self.model.to(resolve_dtype(self.params.dtype))

    def _create(self, open_clip: Any, name: str, where: str) -> tuple[nn.Module, Any]:
        download = self.params.pretrained if not is_skeleton() else None  # a skeleton reads no weights
        kwargs: dict[str, Any] = {"pretrained": download, "pretrained_hf": False}  # no HF text weights
        if self.params.image_size:
            kwargs["force_image_size"] = self.params.image_size
        if is_skeleton():
            kwargs["device"] = "meta"
        try:
            clip, _, transform = open_clip.create_model_and_transforms(name, **kwargs)
        except (TypeError, ValueError, KeyError, AssertionError) as exc:
            raise SpecError(f"{where}: open_clip could not build {name!r} ({type(exc).__name__}: {exc}).") from exc
        except Exception as exc:
            if not download:
                raise
            raise SpecError(
                f"{where}.pretrained: open_clip could not download the {download!r} weights of {name!r} "
                f"({type(exc).__name__}: {exc}). Check your network, or point 'checkpoint' at a local weight file."
            ) from exc
        return clip, transform

    def _load(self, open_clip: Any, clip: nn.Module, where: str) -> None:
        """Load the checkpoint into the vision tower: a whole CLIP state dict (``visual.*``) or the tower's own."""
        assert self.checkpoint is not None
        state = read_state_dict(self.checkpoint, where)
        if not any(key.startswith("visual.") for key in state):
            state = {f"visual.{key}": tensor for key, tensor in state.items()}
        resize = getattr(getattr(open_clip, "model", None), "resize_pos_embed", None)
        if resize is not None:  # a checkpoint for another image_size: interpolate the position embedding
            resize(state, clip)
        visual = {key.removeprefix("visual."): tensor for key, tensor in state.items() if key.startswith("visual.")}
        load_by_name(clip.visual, visual, self.checkpoint, where)

    def _grid_tokens(self) -> int:
        grid = self.model.grid_size
        return int(grid[0]) * int(grid[1])

    def _width(self) -> int:
        return int(self.model.class_embedding.shape[-1])

    def tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _open_clip_tokens(self.model, pixel_values, self.params.features == "pooled")  # (B, N, D)

    def reference(self) -> dict[str, Any]:
        return library_reference("open_clip", self.params.model_name, self.checkpoint, self.params.pretrained)

    def cache_identity(self) -> dict[str, Any]:
        """The default identity, and open_clip's version, its preprocessing config and the eval transform."""
        import open_clip
        import torchvision

        return {
            **super().cache_identity(),
            "open_clip": library_version(open_clip),
            "torchvision": library_version(torchvision),
            "preprocess_cfg": getattr(self.model, "preprocess_cfg", None),
            "transform": repr(self.transform),
        }
