"""SDK checkpoint files: mmllm.json (spec, versions, base references) and trainable.safetensors, written atomically.

File I/O only: the model is built elsewhere (``build.open_checkpoint``, ``MMLLM.from_pretrained``)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mmllm_sdk import __version__
from mmllm_sdk.errors import CheckpointError, MissingPluginError, UnknownComponentError
from mmllm_sdk.files import atomic_directory, atomic_write, file_sha256, load_json, read_text
from mmllm_sdk.model.trainable import set_trainable, spec_patterns
from mmllm_sdk.plugins import plugin_info
from mmllm_sdk.registry import get_registry
from mmllm_sdk.validation import StrictModel, describe_validation_error

MANIFEST = "mmllm.json"
WEIGHTS = "trainable.safetensors"
FORMAT = "mmllm-checkpoint"
FORMAT_VERSION = 2  # 2: mmllm.json carries the digests of its spec and weights
MAX_MANIFEST_BYTES = 64 << 20
WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")  # added by FSDP / activation checkpointing


def trainable_state_dict(model: Any, values: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Only what was trained (parameters with ``requires_grad``, and those an earlier stage trained), on the CPU.
    ``values``: a full state dict gathered by FSDP or DeepSpeed, whose tensors replace the (sharded) parameters."""
    state = {}
    for name, param in model.named_parameters():
        for segment in WRAPPER_SEGMENTS:
            name = name.replace(segment, "")
        if not param.requires_grad and name not in model.carried_parameters:
            continue
        if values is not None:
            if name not in values:
                raise CheckpointError(
                    f"The gathered state dict has no tensor {name!r}; the training engine sharded it away."
                )
            param = values[name]
        if param.device.type == "meta":
            raise CheckpointError(
                "This model is a skeleton (weights on the meta device) and cannot be saved; build it without skeleton=True."
            )
        state[name] = param.detach().to("cpu").contiguous().clone()
    return state


def manifest(model: Any, state: dict[str, torch.Tensor]) -> dict[str, Any]:
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
        "added_tokens": {m: model.processor.inputs[m].spec.placeholder for m in model.placeholder_ids},
        "trainable": {name: list(tensor.shape) for name, tensor in state.items()},
    }


def save_checkpoint(model: Any, directory: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write the checkpoint to a staging folder beside ``directory``, then rename it into place. Anything already at
    ``directory`` (but an empty folder) is replaced only with ``overwrite``."""
    target = Path(directory)
    if not overwrite and (target.is_symlink() or target.exists()) and (not target.is_dir() or any(target.iterdir())):
        raise CheckpointError(
            f"{str(target)!r} already exists{' and is not empty' if target.is_dir() else ''}; pass overwrite=True to "
            "replace it, or save to another folder."
        )
    try:
        with atomic_directory(directory) as staging:
            write_checkpoint_files(model, staging)
    except OSError as exc:  # a full disk, no permission, a device in the way
        raise CheckpointError(f"Cannot save the checkpoint at {str(target)!r}: {exc.strerror or exc}.") from exc
    return Path(directory).resolve()


def write_checkpoint_files(model: Any, folder: Path, values: Mapping[str, torch.Tensor] | None = None) -> None:
    """Write the weights, then the manifest (so a folder with a manifest has its weights), each replaced atomically.
    Used for the final model at the root of an output folder; the Trainer's checkpoint-N folders are staged whole."""
    state = trainable_state_dict(model, values)
    broken = [name for name, tensor in state.items() if tensor.is_floating_point() and not tensor.isfinite().all()]
    if broken:
        raise CheckpointError(
            f"No checkpoint is written: {len(broken)} trained tensor(s) hold NaN or infinite values ({_few(broken)}); "
            "the weights diverged. Lower the learning rate or check the inputs, and train again from the last checkpoint."
        )
    data = manifest(model, state)
    atomic_write(folder / WEIGHTS, lambda path: save_file(state, str(path), metadata={"format": FORMAT}))
    data["digest"] = {"spec": spec_digest(data["spec"]), "trainable": file_sha256(folder / WEIGHTS)}
    atomic_write(folder / MANIFEST, json.dumps(data, indent=2, sort_keys=True) + "\n")


class _Component(StrictModel):
    kind: Literal["llms", "encoders", "projectors", "output_projectors", "generators"]
    name: str
    modality: str | None
    plugin: str
    distribution: str
    version: str
    base: dict[str, Any]


class _Digest(StrictModel):
    spec: str = Field(pattern="^[0-9a-f]{64}$")  # sha256 of the spec as canonical JSON
    trainable: str = Field(pattern="^[0-9a-f]{64}$")  # sha256 of trainable.safetensors


class Manifest(StrictModel):
    """The schema of ``mmllm.json``; from format 2 on it carries the digests loading checks."""

    format: Literal["mmllm-checkpoint"]
    format_version: int = Field(ge=1)
    sdk_version: str
    spec: dict[str, Any]
    components: dict[str, _Component]
    added_tokens: dict[str, str]
    trainable: dict[str, list[int]]
    digest: _Digest | None = None


def spec_digest(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_manifest(directory: Path) -> dict[str, Any]:
    """``mmllm.json``, read bounded and checked against :class:`Manifest`, its format and the spec's digest."""
    if not directory.is_dir():
        raise CheckpointError(f"{str(directory)!r} is not a directory; pass the folder save_pretrained() wrote.")
    path, shown = directory / MANIFEST, repr(str(directory / MANIFEST))
    if not path.exists():
        raise CheckpointError(
            f"{str(directory)!r} is not an SDK checkpoint: it has no {MANIFEST}. Pass the folder save_pretrained() wrote."
        )
    text = read_text(path, "The checkpoint manifest", limit=MAX_MANIFEST_BYTES, error=CheckpointError)
    data = load_json(text, f"The checkpoint manifest {shown}", error=CheckpointError)
    if isinstance(data, dict) and data.get("format") == FORMAT and isinstance(data.get("format_version"), int):
        if data["format_version"] > FORMAT_VERSION:
            raise CheckpointError(
                f"{str(directory)!r} was written in checkpoint format {data['format_version']} by mmllm-sdk "
                f"{data.get('sdk_version')}; this is mmllm-sdk {__version__} (format {FORMAT_VERSION}): upgrade it."
            )
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as error:
        problems = describe_validation_error(error, Manifest).partition("\n")[2]
        raise CheckpointError(
            f"{shown} is not a valid {FORMAT} manifest; the checkpoint is corrupt:\n{problems}"
        ) from None
    if manifest.format_version >= 2 and manifest.digest is None:
        raise CheckpointError(f"{shown} has no digest, which format {manifest.format_version} requires; it was edited.")
    if manifest.digest is not None and manifest.digest.spec != spec_digest(manifest.spec):
        raise CheckpointError(
            f"The spec in {shown} does not match its digest: the file was edited after it was saved, so the weights "
            "would load into another model. Restore the original file, or rebuild the model from your spec and save it."
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


def load_trained(model: Any, state: dict[str, torch.Tensor], origin: str, *, complete: bool = True) -> None:
    """Copy saved tensors into the model; every name must be a parameter of the same shape.

    With ``complete`` (loading a checkpoint as it was saved) every trainable parameter must be in ``state``; without
    it (a new stage, e.g. SFT after PT) new trainable parameters such as LoRA adapters keep their own initialisation.
    Saved tensors of parameters that are frozen now are remembered, so the next checkpoint keeps them.
    """
    params = dict(model.named_parameters())
    aliases = adapter_free_names(model)
    state = {aliases.get(name, name): tensor for name, tensor in state.items()}
    trainable = {name for name, p in params.items() if p.requires_grad}
    unexpected = sorted(set(state) - set(params))
    missing = sorted(trainable - set(state)) if complete else []
    if missing or unexpected:
        raise CheckpointError(
            f"{origin} does not match the model its spec builds: missing {_few(missing)}, unexpected "
            f"{_few(unexpected)}. It was saved from a different spec or plugin version."
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(params[name].shape):
            raise CheckpointError(
                f"{origin}: tensor {name!r} has shape {tuple(tensor.shape)} but the model expects "
                f"{tuple(params[name].shape)}; the checkpoint was saved with different component sizes."
            )
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)
    set_trainable(model, spec_patterns(model.spec), carried=state)  # frozen now, and saved with the next checkpoint


def adapter_free_names(model: Any) -> dict[str, str]:
    """The name each LLM parameter has without peft's wrapper -> its name in ``model``, where the two differ.

    Adapters wrap the LLM (``llm.model.base_model.model.…`` for LoRA, ``llm.model.base_model.…`` for prompt learning),
    so a checkpoint saved before they were added (signal rows after ``align-output``, a fully tuned LLM) names its
    tensors as the unwrapped LLM does; loading it into a model with adapters maps them.
    """
    llm = getattr(model.llm, "model", None)
    base = llm.get_base_model() if callable(getattr(llm, "get_base_model", None)) else None
    if base is None or base is llm:
        return {}
    here = {id(param): name for name, param in model.named_parameters()}
    return {
        f"llm.model.{name}": here[id(param)]
        for name, param in base.named_parameters()
        if id(param) in here and here[id(param)] != f"llm.model.{name}"
    }


def _few(names: list[str]) -> str:
    return f"{names[:5]}{'…' if len(names) > 5 else ''}"


def read_trained(directory: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint's trainable.safetensors (safetensors only, never a pickle), checked against the
    digest its ``mmllm.json`` records."""
    weights = Path(directory) / WEIGHTS
    if not weights.exists():
        raise CheckpointError(f"{str(directory)!r} has no {WEIGHTS}; the checkpoint is incomplete: save it again.")
    try:
        expected = (read_manifest(Path(directory)).get("digest") or {}).get("trainable")
        if expected is not None and file_sha256(weights) != expected:
            raise CheckpointError(
                f"{str(weights)!r} does not match the digest in its {MANIFEST}: the weights were changed or replaced "
                "after saving. Restore the original files."
            )
        return load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(
            f"{str(weights)!r} cannot be read ({exc}); the checkpoint is corrupt: save it again."
        ) from exc
