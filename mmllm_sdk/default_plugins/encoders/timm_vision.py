"""``timm-vision``: any timm backbone by name, its feature map (or stages of it) as tokens (the ``vision`` extra)."""

from __future__ import annotations

import difflib
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn
from torch.nn import functional as F

from mmllm_sdk.components.hf import is_skeleton
from mmllm_sdk.default_plugins.encoders.vision_library import (
    TransformVisionEncoder,
    checkpoint_path,
    library_reference,
    library_version,
    load_by_name,
    load_by_position,
    probe_tokens,
    read_state_dict,
    require,
)
from mmllm_sdk.dtypes import resolve_dtype
from mmllm_sdk.errors import PluginError, SpecError
from mmllm_sdk.validation import StrictModel, validate


class TimmParams(StrictModel):
    """Params of ``timm-vision``: a timm model by name and where its weights come from."""

    model_name: str  # a timm model, e.g. "efficientnet_lite0", "vit_small_patch16_224" (timm.list_models())
    checkpoint: str | None = None  # a local state-dict file: .safetensors, or .pth/.pt/.bin (weights only)
    pretrained: bool = False  # timm's own download of the pretrained weights (needs network)
    match_keys: Literal["name", "position"] = "name"  # position: the file's tensors in the model's order
    image_size: int | None = Field(None, ge=1)  # input side in pixels; default: the model's pretrained config
    features: Literal["spatial", "pooled"] = "spatial"  # spatial: one token per position; pooled: one token
    # feature stages instead of the final features, as LLaVA's vision_feature_layer: an index into timm's
    # feature_info (negative from the end), or a list of them: each earlier (finer) stage is max-pooled to the
    # grid of the coarsest one and the stages are concatenated along channels. Early stages keep colour and
    # local detail (max pooling keeps a small object's response), late ones shape and semantics.
    feature_layer: int | list[int] | None = None
    # the eval transform, where the weights were trained otherwise than the model's pretrained config says
    crop_pct: float | None = Field(None, gt=0, le=1)  # centre crop share; 1.0 keeps the whole image
    mean: tuple[float, float, float] | None = None  # per-channel normalisation, RGB in 0..1
    std: tuple[float, float, float] | None = None
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bfloat16 where native, else float32

    @model_validator(mode="after")
    def _one_source(self) -> TimmParams:
        if self.checkpoint is not None and self.pretrained:
            raise ValueError(
                "set at most one of 'checkpoint' (a local weight file) or 'pretrained: true' (timm's download); "
                "with neither the weights are random"
            )
        if self.feature_layer is not None and self.features == "pooled":
            raise ValueError("'feature_layer' picks a spatial feature map; it needs features: spatial")
        if isinstance(self.feature_layer, list) and not self.feature_layer:
            raise ValueError("'feature_layer' is an empty list; name at least one stage or leave it out")
        if self.match_keys == "position" and self.checkpoint is None:
            raise ValueError("'match_keys' says how to read a 'checkpoint' file; set 'checkpoint' or remove it")
        return self


def _timm_tokens(
    model: nn.Module, pixel_values: torch.Tensor, pooled: bool, layer: int | list[int] | None = None
) -> torch.Tensor:
    """A timm model's features as tokens (B, N, D): spatial positions, or one pooled token.

    ``layer``: feature stage(s) of ``forward_intermediates`` instead of the final features;
    several are max-pooled to the coarsest stage's grid and concatenated along channels.
    """
    if layer is not None:
        listed = _stage_list(model, layer)
        unique = sorted(set(listed))
        maps = model.forward_intermediates(pixel_values, indices=unique, intermediates_only=True, stop_early=True)
        stages = dict(zip(unique, maps, strict=True))  # stage -> (B, C_k, H_k, W_k)
        grid = min((stage.shape[-2:] for stage in maps), key=lambda size: size[0] * size[1])
        pooled_maps = [F.adaptive_max_pool2d(stages[k], grid) for k in listed]
        return torch.cat(pooled_maps, dim=1).flatten(2).transpose(1, 2)  # (B, H*W, sum C_k), in the listed order
    features = model.forward_features(pixel_values)  # (B, C, H, W), (B, H, W, C) or (B, T, C)
    if pooled:
        pre_logits = model.forward_head(features, pre_logits=True)  # (B, D)
        if pre_logits.ndim != 2:
            raise PluginError(
                f"timm's {type(model).__name__}.forward_head(pre_logits=True) returned shape "
                f"{tuple(pre_logits.shape)}, not (batch, dim); use features: spatial with this model."
            )
        return pre_logits[:, None]  # (B, 1, D)
    if features.ndim == 4:
        layout = getattr(model, "output_fmt", "NCHW")
        if getattr(layout, "value", layout) == "NHWC":  # Swin and friends
            return features.flatten(1, 2)  # (B, H*W, C)
        return features.flatten(2).transpose(1, 2)  # (B, H*W, C)
    if features.ndim == 3:
        return features[:, getattr(model, "num_prefix_tokens", 0) :]  # (B, T - prefix, C): CLS/register dropped
    raise PluginError(
        f"timm's {type(model).__name__}.forward_features returned shape {tuple(features.shape)}; expected "
        "(B, C, H, W) or (B, T, C). Use features: pooled with this model."
    )


def _stage_list(model: nn.Module, layer: int | list[int]) -> list[int]:
    """``feature_layer`` as non-negative stage indices, in the listed order (an int is a list of one)."""
    count = len(model.feature_info)
    return [k % count for k in ([layer] if isinstance(layer, int) else layer)]


def _timm_tokens_from_config(
    model: nn.Module, input_size: tuple[int, int, int], pooled: bool, layer: int | list[int] | None = None
) -> tuple[int, int]:
    """(N, D) from the model's attributes, for skeleton mode when a meta forward is impossible."""
    if layer is not None:
        stages = [model.feature_info[k] for k in _stage_list(model, layer)]
        reduction = max(stage["reduction"] for stage in stages)  # the coarsest grid
        _, height, width = input_size
        return -(-height // reduction) * -(-width // reduction), sum(int(stage["num_chs"]) for stage in stages)
    if pooled:
        return 1, int(getattr(model, "head_hidden_size", None) or model.num_features)
    _, height, width = input_size
    reduction = int(model.feature_info[-1]["reduction"])  # the last feature map's stride in pixels
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is not None and tuple(patch) == (reduction, reduction):  # a ViT: whole patches only
        return (height // reduction) * (width // reduction), int(model.num_features)
    return -(-height // reduction) * -(-width // reduction), int(model.num_features)  # a CNN: padded convs round up


class TimmVisionEncoder(TransformVisionEncoder):
    """``timm-vision``: any timm model by name; its final feature map as tokens (B, N, D).

    ``spatial``: ``forward_features`` per position, CNN maps (B, C, H, W) flattened to
    (B, H*W, C), ViT tokens (B, T, C) without their prefix (CLS, register) tokens. ``pooled``:
    one token, the head's input (``forward_head(pre_logits=True)``). Images are preprocessed
    by timm's eval transform for the model's data config. The timm model is ``self.model``.
    """

    name: ClassVar[str] = "timm-vision"
    Params: ClassVar[type[TimmParams]] = TimmParams

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__()
        where = f"{self.name}.params"
        self.params = validate(self.Params, params or {}, where=where)
        what = f"encoder {self.name!r}"
        timm = require("timm", what)
        timm_data = require("timm.data", what)
        name = self.params.model_name
        if not timm.is_model(name):
            raise SpecError(f"{where}.model_name: timm has no model {name!r}.{_close_timm_names(timm, name)}")
        self.checkpoint = checkpoint_path(self.params.checkpoint, where) if self.params.checkpoint else None
        download = self.params.pretrained and not is_skeleton()  # a skeleton reads no weights
        self.model = self._create(timm, name, download, where)
        if self.checkpoint is not None and not is_skeleton():
            state = read_state_dict(self.checkpoint, where)
            load = load_by_position if self.params.match_keys == "position" else load_by_name
            load(self.model, state, self.checkpoint, where)
        self.model.eval()
        overrides: dict[str, Any] = {
            key: value for key in ("crop_pct", "mean", "std") if (value := getattr(self.params, key)) is not None
        }
        if self.params.image_size:
            overrides["input_size"] = (3, self.params.image_size, self.params.image_size)
        self.data_config = timm_data.resolve_data_config(overrides, model=self.model)
        self.transform = timm_data.create_transform(**self.data_config, is_training=False)
        input_size = tuple(self.data_config["input_size"])
        pooled, layer = self.params.features == "pooled", self.params.feature_layer
        for stage in [layer] if isinstance(layer, int) else layer or []:
            _check_feature_layer(self.model, name, stage, where)
        tokens = probe_tokens(self.model, lambda model, x: _timm_tokens(model, x, pooled, layer), input_size)
        if tokens is None:  # skeleton mode, and the model does not run on meta
            tokens = _timm_tokens_from_config(self.model, input_size, pooled, layer)
        self.modality = "image"
        self.num_tokens, self.output_dim = tokens  # N, D
        self.model.to(resolve_dtype(self.params.dtype))

    def _create(self, timm: Any, name: str, download: bool, where: str) -> nn.Module:
        kwargs: dict[str, Any] = {"pretrained": download}
        pretrained_cfg = timm.models.get_pretrained_cfg(name)
        if self.params.image_size and getattr(pretrained_cfg, "fixed_input_size", False):
            kwargs["img_size"] = self.params.image_size  # ViTs size their position embeddings at creation
        try:
            return timm.create_model(name, **kwargs)
        except (TypeError, ValueError, KeyError, AssertionError) as exc:
            raise SpecError(
                f"{where}: timm could not build {name!r} with {kwargs} ({type(exc).__name__}: {exc})."
            ) from exc
        except Exception as exc:
            if not download:
                raise
            raise SpecError(
                f"{where}.pretrained: timm could not download the pretrained weights of {name!r} "
                f"({type(exc).__name__}: {exc}). Check your network, or point 'checkpoint' at a local weight file."
            ) from exc

    def tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _timm_tokens(
            self.model, pixel_values, self.params.features == "pooled", self.params.feature_layer
        )  # (B, N, D)

    def reference(self) -> dict[str, Any]:
        pretrained: Any = self.params.pretrained
        if pretrained and (tag := self.model.pretrained_cfg.get("tag")):
            return {"timm": self.params.model_name, "pretrained": True, "tag": tag}
        return library_reference("timm", self.params.model_name, self.checkpoint, pretrained)

    def cache_identity(self) -> dict[str, Any]:
        """The default identity, and timm's version, the data config and the eval transform."""
        import timm
        import torchvision

        return {
            **super().cache_identity(),
            "timm": library_version(timm),
            "torchvision": library_version(torchvision),
            "data_config": self.data_config,
            "transform": repr(self.transform),
        }


def _check_feature_layer(model: nn.Module, name: str, layer: int, where: str) -> None:
    """A feature_layer the model has, through forward_intermediates, or a SpecError listing the stages."""
    stages = getattr(model, "feature_info", None) or []
    if not hasattr(model, "forward_intermediates") or not stages:
        raise SpecError(f"{where}.feature_layer: timm's {name!r} has no forward_intermediates; remove feature_layer.")
    if not -len(stages) <= layer < len(stages):
        shapes = ", ".join(f"{k}: {info['num_chs']} channels at 1/{info['reduction']}" for k, info in enumerate(stages))
        raise SpecError(
            f"{where}.feature_layer is {layer}; timm's {name!r} has {len(stages)} feature stages ({shapes}). "
            f"Use 0 to {len(stages) - 1}, or -1 to -{len(stages)} from the end."
        )


def _close_timm_names(timm: Any, name: str) -> str:
    """' Close names: …' from timm's model list (the same family first), or a hint where to look."""
    family = timm.list_models(f"*{name.split('_')[0].split('.')[0]}*")
    close = difflib.get_close_matches(name, family, n=8, cutoff=0.4) or difflib.get_close_matches(
        name, timm.list_models(), n=8, cutoff=0.6
    )
    if close:
        return f" Close names: {', '.join(close)}."
    return " See timm.list_models('*pattern*') for the names timm knows."
