"""What the timm and open_clip encoders share (the ``vision`` extra): importing the library or saying how to
install it, reading state-dict files, measuring token shapes, and per-image transform preprocessing.

timm, open_clip and the torchvision they need are imported inside functions only, so these
modules import without them; building an encoder without them is a SpecError that says
what to install.
"""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from mmllm_sdk.components.encoder import ModalityEncoder
from mmllm_sdk.components.hf import content_hash, is_skeleton
from mmllm_sdk.default_plugins.encoders.builtin import _check_items
from mmllm_sdk.errors import SpecError

INSTALL_HINT = "pip install 'mmllm-sdk[vision]'"
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")  # .safetensors: safetensors; the rest: torch.load
STATE_DICT_WRAPPERS = ("state_dict", "model", "module")  # keys training scripts nest a state dict under
SHOWN_KEYS = 5  # tensor names listed in a loading error, per kind of problem


def require(module: str, where: str) -> Any:
    """Import ``module`` (timm, open_clip) or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise SpecError(
            f"{where} needs the '{module.partition('.')[0]}' package and torchvision, which cannot be imported "
            f"here ({type(exc).__name__}: {exc}). Install them with: {INSTALL_HINT}"
        ) from exc


def library_version(module: Any) -> str | None:
    return getattr(module, "__version__", None)


# weight files ------------------------------------------------------------------------------------


def checkpoint_path(checkpoint: str, where: str) -> Path:
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


def library_reference(what: str, name: str, checkpoint: Path | None, pretrained: Any) -> dict[str, Any]:
    """The reference of a library model: its checkpoint and hash, its pretrained tag, or random init."""
    if checkpoint is not None:
        return {what: name, "checkpoint": str(checkpoint), "sha256": content_hash(checkpoint)}
    if pretrained:
        return {what: name, "pretrained": pretrained}
    return {what: name, "config": "random"}  # "config": the feature cache keys random weights by the seed


# preprocessing -------------------------------------------------------------------------------------


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
