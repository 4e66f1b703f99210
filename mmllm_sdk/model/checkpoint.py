"""SDK checkpoints: mmllm.json (spec, versions, base references) and trainable.safetensors, written atomically."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mmllm_sdk import __version__
from mmllm_sdk.errors import CheckpointError, MissingPluginError, UnknownComponentError
from mmllm_sdk.files import atomic_directory
from mmllm_sdk.plugins import plugin_info
from mmllm_sdk.registry import get_registry
from mmllm_sdk.spec import ModelSpec
from mmllm_sdk.validation import validate

if TYPE_CHECKING:
    from mmllm_sdk.model.modeling import MMLLM

MANIFEST = "mmllm.json"
WEIGHTS = "trainable.safetensors"
FORMAT = "mmllm-checkpoint"
FORMAT_VERSION = 1


def trainable_state_dict(model: MMLLM) -> dict[str, torch.Tensor]:
    """Only what was trained: parameters with ``requires_grad``, detached, on the CPU."""
    state = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.device.type == "meta":
            raise CheckpointError(
                "This model is a skeleton (weights on the meta device) and cannot be saved; build it without skeleton=True."
            )
        state[name] = param.detach().to("cpu").contiguous().clone()
    return state


def manifest(model: MMLLM, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    components = {}
    for path, module in model.components().items():
        entry = model.sources[path]
        info = plugin_info(entry.plugin)
        components[path] = {
            "kind": entry.kind,
            "name": entry.name,
            "modality": entry.modality,
            "plugin": entry.plugin,
            "distribution": info.distribution,
            "version": info.version,
            "base": module.reference() if hasattr(module, "reference") else {},
        }
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "sdk_version": __version__,
        "spec": model.spec.model_dump(mode="json"),
        "components": components,
        "added_tokens": {
            modality: model.processor.inputs[modality].spec.placeholder for modality in model.placeholder_ids
        },
        "trainable": {name: list(tensor.shape) for name, tensor in state.items()},
    }


def save_checkpoint(model: MMLLM, directory: str | os.PathLike[str]) -> Path:
    """Write the checkpoint to a staging folder beside ``directory``, then rename it into place."""
    state = trainable_state_dict(model)
    data = manifest(model, state)
    with atomic_directory(directory) as staging:
        save_file(state, str(staging / WEIGHTS), metadata={"format": FORMAT})
        (staging / MANIFEST).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Path(directory).resolve()


def read_manifest(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise CheckpointError(f"{str(directory)!r} is not a directory; pass the folder save_pretrained() wrote.")
    path = directory / MANIFEST
    if not path.is_file():
        raise CheckpointError(
            f"{str(directory)!r} is not an SDK checkpoint: it has no {MANIFEST}. Pass the folder save_pretrained() wrote."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{str(path)!r} is not valid JSON ({exc}); the checkpoint is corrupt: save it again."
        ) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an {FORMAT} manifest.")
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{str(directory)!r} was written in checkpoint format {data['format_version']} by mmllm-sdk "
            f"{data.get('sdk_version')}; this is mmllm-sdk {__version__} (format {FORMAT_VERSION}): upgrade mmllm-sdk."
        )
    return data


def check_plugins(data: dict[str, Any]) -> None:
    """Every component the checkpoint was built from is registered now, or one error naming what to install."""
    registry = get_registry()
    missing = []
    for path, component in data.get("components", {}).items():
        try:
            registry.get(component["kind"], component["name"], modality=component.get("modality"))
        except UnknownComponentError:
            missing.append((path, component))
    if missing:
        lines = [
            f"  {path}: {component['kind'][:-1]} {component['name']!r} from plugin {component['plugin']!r} "
            f"(pip install '{component['distribution']}>={component['version']}')"
            for path, component in missing
        ]
        raise MissingPluginError(
            "This checkpoint needs components that no installed plugin provides:\n"
            + "\n".join(lines)
            + "\nInstall those plugins (or allow them in MMLLM_LOAD_PLUGINS) and load it again."
        )


def load_checkpoint(directory: str | os.PathLike[str], **build_kwargs: Any) -> MMLLM:
    """Rebuild the model through the installed plugins, then load the trained tensors (safetensors only)."""
    from mmllm_sdk.model.modeling import build_model

    directory = Path(directory)
    data = read_manifest(directory)
    check_plugins(data)
    spec = validate(ModelSpec, data["spec"], source=str(directory / MANIFEST))
    model = build_model(spec, **build_kwargs)
    _warn_on_changed_bases(model, data)
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{str(directory)!r} has no {WEIGHTS}; the checkpoint is incomplete: save it again.")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(
            f"{str(weights)!r} cannot be read ({exc}); the checkpoint is corrupt: save it again."
        ) from exc
    load_trainable(model, state, str(weights))
    return model


def load_trainable(model: MMLLM, state: dict[str, torch.Tensor], origin: str) -> None:
    """Copy saved tensors into the model's trainable parameters; names and shapes must match exactly."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise CheckpointError(
            f"{origin} does not match the model its spec builds: missing {missing[:5]}{'…' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''}. It was saved from a different spec or plugin version."
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(params[name].shape):
            raise CheckpointError(
                f"{origin}: tensor {name!r} has shape {tuple(tensor.shape)} but the model expects {tuple(params[name].shape)}; "
                "the checkpoint was saved with different component sizes."
            )
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)


def _warn_on_changed_bases(model: MMLLM, data: dict[str, Any]) -> None:
    for path, module in model.components().items():
        saved = data.get("components", {}).get(path, {}).get("base", {})
        now = module.reference() if hasattr(module, "reference") else {}
        if saved.get("sha256") and now.get("sha256") and saved["sha256"] != now["sha256"]:
            warnings.warn(
                f"The frozen base of {path} ({now.get('model')}) has changed since the checkpoint was saved "
                f"(sha256 {saved['sha256'][:12]}… then, {now['sha256'][:12]}… now); outputs may differ.",
                stacklevel=3,
            )
