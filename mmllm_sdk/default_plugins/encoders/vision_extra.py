"""Image encoders from timm and open_clip: any timm backbone or OpenCLIP vision tower, by name (the ``vision`` extra).

timm, open_clip and the torchvision they need are imported inside the classes only, so this
module imports without them; building an encoder without them is a SpecError that says
what to install.
"""

from __future__ import annotations

import difflib
import importlib
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn
from torch.nn import functional as F

from mmllm_sdk.components.encoder import ModalityEncoder
from mmllm_sdk.components.hf import content_hash, is_skeleton
from mmllm_sdk.default_plugins.encoders.builtin import _check_items
from mmllm_sdk.dtypes import resolve_dtype
from mmllm_sdk.errors import PluginError, SpecError
from mmllm_sdk.validation import StrictModel, validate

INSTALL_HINT = "pip install 'mmllm-sdk[vision]'"
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")  # .safetensors: safetensors; the rest: torch.load
STATE_DICT_WRAPPERS = ("state_dict", "model", "module")  # keys training scripts nest a state dict under
SHOWN_KEYS = 5  # tensor names listed in a loading error, per kind of problem


def _require(module: str, where: str) -> Any:
    """Import ``module`` (timm, open_clip) or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise SpecError(
            f"{where} needs the '{module.partition('.')[0]}' package and torchvision, which cannot be imported "
            f"here ({type(exc).__name__}: {exc}). Install them with: {INSTALL_HINT}"
        ) from exc


def _version(module: Any) -> str | None:
    return getattr(module, "__version__", None)


# weight files ------------------------------------------------------------------------------------


def _checkpoint_path(checkpoint: str, where: str) -> Path:
    """The checkpoint file, checked to exist and to have a suffix we read without unpickling."""
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        found = "is a folder" if path.is_dir() else "does not exist"
        raise SpecError(
            f"{where}.checkpoint: the weight file {checkpoint!r} {found}. Point 'checkpoint' at a local state-dict "
            f"file ({', '.join(CHECKPOINT_SUFFIXES)}), set 'pretrained' to download weights, or leave both out "
            "for random initialisation."
        )
    if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise SpecError(
            f"{where}.checkpoint: {checkpoint!r} has the suffix {path.suffix!r}, but only state-dict files "
            f"({', '.join(CHECKPOINT_SUFFIXES)}) are read. Save the weights with safetensors' save_file() or "
            "torch.save(model.state_dict(), path)."
        )
    return path


def read_state_dict(path: Path, where: str) -> dict[str, torch.Tensor]:
    """The tensors of a state-dict file, in file order: safetensors, or ``torch.load(weights_only=True)``.

    A state dict nested under ``state_dict``, ``model`` or ``module`` (as training scripts
    save it) is unwrapped, and a ``module.`` prefix (DistributedDataParallel) is removed.
    Nothing is ever unpickled beyond tensors and containers.
    """
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            loaded: Any = load_file(path, device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):  # not a pickle of tensors at all
            raise SpecError(
                f"{where}.checkpoint: {str(path)!r} could not be read as a state dict; it is neither a "
                "torch.save() file of tensors nor a safetensors file."
            ) from exc
        raise SpecError(
            f"{where}.checkpoint: {str(path)!r} holds Python objects besides tensors, and checkpoints are never "
            "unpickled. Save the state dict alone (torch.save(model.state_dict(), path)) or as .safetensors."
        ) from exc
    except Exception as exc:  # a truncated zip, a bad safetensors header, a file of another format
        raise SpecError(
            f"{where}.checkpoint: {str(path)!r} could not be read as a state dict ({type(exc).__name__}: {exc})."
        ) from exc
    for key in STATE_DICT_WRAPPERS:
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping) and not _all_tensors(loaded):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping) or not loaded or not _all_tensors(loaded):
        raise SpecError(
            f"{where}.checkpoint: {str(path)!r} is not a state dict (a flat mapping of names to tensors); "
            f"found a {type(loaded).__name__}. Save the model's state_dict() itself."
        )
    state = dict(loaded)
    if all(name.startswith("module.") for name in state):
        state = {name.removeprefix("module."): tensor for name, tensor in state.items()}
    return state


def _all_tensors(mapping: Mapping[Any, Any]) -> bool:
    return all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in mapping.items())


def _shape(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def load_by_name(module: nn.Module, state: dict[str, torch.Tensor], path: Path, where: str) -> None:
    """Load ``state`` into ``module`` by tensor name; every name and shape must match."""
    expected = module.state_dict()
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    wrong = [
        f"{name} {_shape(state[name])} in the file, {_shape(tensor)} in the model"
        for name, tensor in expected.items()
        if name in state and _shape(state[name]) != _shape(tensor)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} model tensors are not in the file (e.g. {', '.join(missing[:SHOWN_KEYS])})")
    if unexpected:
        problems.append(
            f"{len(unexpected)} file tensors are not in the model (e.g. {', '.join(unexpected[:SHOWN_KEYS])})"
        )
    if wrong:
        problems.append(f"{len(wrong)} tensors differ in shape ({'; '.join(wrong[:SHOWN_KEYS])})")
    if problems:
        hint = (
            " The file holds as many tensors as the model: if they are the same weights under other names, in "
            "the model's order, set match_keys: position."
            if len(state) == len(expected) and not wrong
            else " Check that the file was saved from this architecture and image size."
        )
        raise SpecError(
            f"{where}.checkpoint: {str(path)!r} does not fit the model by tensor name: {'; '.join(problems)}.{hint}"
        )
    module.load_state_dict(state, strict=True)


def load_by_position(module: nn.Module, state: dict[str, torch.Tensor], path: Path, where: str) -> None:
    """Load the file's tensors onto the model's state dict in order; counts and every shape must match."""
    if path.suffix.lower() == ".safetensors":
        raise SpecError(
            f"{where}.match_keys: position needs a file that keeps its tensors in the order they were saved "
            f"(.pth, .pt, .bin), but {str(path)!r} is a safetensors file, which stores them sorted by name. "
            "Use match_keys: name with a safetensors file whose names are the model's, or the original .pth file."
        )
    expected = module.state_dict()
    if len(state) != len(expected):
        raise SpecError(
            f"{where}.checkpoint: match_keys: position maps the file's tensors onto the model's in order, but "
            f"{str(path)!r} holds {len(state)} tensors and the model has {len(expected)}. The file was saved from "
            "another architecture (or without buffers such as num_batches_tracked)."
        )
    pairs = zip(state.items(), expected.items(), strict=True)
    for index, ((file_name, tensor), (model_name, target)) in enumerate(pairs):
        if _shape(tensor) != _shape(target):
            raise SpecError(
                f"{where}.checkpoint: match_keys: position found the first mismatch at tensor {index}: the file's "
                f"{file_name!r} has shape {_shape(tensor)}, but the model's {model_name!r} has shape "
                f"{_shape(target)}. The file's order or architecture differs from the model's."
            )
    module.load_state_dict(dict(zip(expected, state.values(), strict=True)), strict=True)


# shapes without running the model ------------------------------------------------------------------


class _Call(nn.Module):
    """``run(module, x)`` as a module's forward, so torch.func.functional_call can swap in meta weights."""

    def __init__(self, module: nn.Module, run: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.module = module
        self.run = run

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(self.module, x)


def probe_tokens(
    module: nn.Module,
    run: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    input_size: tuple[int, int, int],
) -> tuple[int, int] | None:
    """(N, D) of ``run(module, pixels)`` for one image of ``input_size`` (C, H, W), or None if it cannot be had.

    The forward runs on the ``meta`` device (shapes only, no arithmetic): the module's weights
    are swapped for meta tensors with ``torch.func.functional_call``. Outside skeleton mode a
    model that does not run on meta is measured with one forward of a zero image on its own
    device, without gradients.
    """
    wrapper = _Call(module, run)
    meta = {
        name: torch.empty_like(tensor, device="meta")
        for name, tensor in [*wrapper.named_parameters(), *wrapper.named_buffers()]
    }
    with torch.no_grad():
        try:
            pixels = torch.zeros(1, *input_size, device="meta")
            return _tokens(torch.func.functional_call(wrapper, meta, (pixels,)))
        except Exception:  # an op without a meta kernel, a tensor kept outside parameters and buffers
            if is_skeleton():
                return None
        pixels = torch.zeros(1, *input_size, device=next(module.parameters()).device)
        return _tokens(wrapper(pixels))


def _tokens(features: torch.Tensor) -> tuple[int, int]:
    _, num_tokens, dim = features.shape  # (1, N, D)
    return num_tokens, dim


def _random_or_loaded(what: str, name: str, checkpoint: Path | None, pretrained: Any) -> dict[str, Any]:
    """The reference of a library model: its checkpoint and hash, its pretrained tag, or random init."""
    if checkpoint is not None:
        return {what: name, "checkpoint": str(checkpoint), "sha256": content_hash(checkpoint)}
    if pretrained:
        return {what: name, "pretrained": pretrained}
    return {what: name, "config": "random"}  # "config": the feature cache keys random weights by the seed


# timm --------------------------------------------------------------------------------------------


class TransformVisionEncoder(ModalityEncoder):
    """What the timm and open_clip encoders share: a torchvision eval ``transform`` per image,
    and ``tokens(pixel_values)`` on the weights' device and dtype."""

    name: ClassVar[str]
    model: nn.Module
    transform: Callable[[Any], torch.Tensor]

    def preprocess(self, items: list[Any]) -> dict[str, torch.Tensor]:
        from PIL import Image

        _check_items(items, Image.Image, "PIL image", f"encoder {self.name!r}")
        pixels = [self.transform(item.convert("RGB")) for item in items]  # each (3, H, W)
        return {"pixel_values": torch.stack(pixels)}  # (B, 3, H, W)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        weight = next(self.model.parameters())
        return self.tokens(pixel_values.to(device=weight.device, dtype=weight.dtype))  # (B, N, D)

    def tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, N, D)."""
        raise NotImplementedError


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
        timm = _require("timm", what)
        timm_data = _require("timm.data", what)
        name = self.params.model_name
        if not timm.is_model(name):
            raise SpecError(f"{where}.model_name: timm has no model {name!r}.{_close_timm_names(timm, name)}")
        self.checkpoint = _checkpoint_path(self.params.checkpoint, where) if self.params.checkpoint else None
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
        return _random_or_loaded("timm", self.params.model_name, self.checkpoint, pretrained)

    def cache_identity(self) -> dict[str, Any]:
        """What else determines the features: timm's version, the data config and the eval transform."""
        import timm
        import torchvision

        return {
            "timm": _version(timm),
            "torchvision": _version(torchvision),
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


# open_clip ---------------------------------------------------------------------------------------


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
        open_clip = _require("open_clip", what)
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
        self.checkpoint = _checkpoint_path(self.params.checkpoint, where) if self.params.checkpoint else None
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
        return _random_or_loaded("open_clip", self.params.model_name, self.checkpoint, self.params.pretrained)

    def cache_identity(self) -> dict[str, Any]:
        """What else determines the features: open_clip's version, its preprocessing config and the eval transform."""
        import open_clip
        import torchvision

        return {
            "open_clip": _version(open_clip),
            "torchvision": _version(torchvision),
            "preprocess_cfg": getattr(self.model, "preprocess_cfg", None),
            "transform": repr(self.transform),
        }
