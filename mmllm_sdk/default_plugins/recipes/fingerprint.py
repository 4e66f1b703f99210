"""The feature cache's fingerprint of an encoder: everything that determines its features, as JSON, hashed."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import importlib.metadata
import json
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import numpy as np
import torch

import mmllm_sdk
from mmllm_sdk.components.encoder import ModalityEncoder, cache_identity_of
from mmllm_sdk.errors import SpecError

CACHE_FORMAT = "mmllm-feature-cache/1"  # enters every fingerprint and file; bump it when either changes meaning
LIBRARIES = ("torch", "transformers")  # their versions enter every fingerprint (kernels, preprocessing code)


def encoder_identity(encoder: ModalityEncoder, spec_entry: Mapping[str, Any] | Any, seed: int) -> dict[str, Any]:
    """Everything that determines ``encoder``'s features, as plain JSON data (what :func:`encoder_fingerprint` hashes).

    ``spec_entry`` is its model-spec entry (a dict or ``EncoderSpec``), ``seed`` the spec's seed (it counts only for
    random weights: a ``config:`` reference, or none); ``encoder.cache_identity()`` is under ``"encoder"``."""
    entry = spec_entry.model_dump() if hasattr(spec_entry, "model_dump") else spec_entry
    if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
        raise SpecError(
            f"encoder_fingerprint() takes the encoder's spec entry, a dict with 'name' and 'params' "
            f"(e.g. spec.inputs['image'].encoder); got {entry!r}."
        )
    if entry.get("trainable"):
        raise SpecError(
            f"Encoder {entry['name']!r} is trainable, so its features change as it trains and cannot be cached; "
            "set the encoder's 'trainable: false' or turn the feature cache off for this modality."
        )
    reference = encoder.reference()
    identity = {
        "format": CACHE_FORMAT,
        "sdk": mmllm_sdk.__version__,
        "libraries": {name: _version(name) for name in LIBRARIES},
        "modality": encoder.modality,
        "spec": {"name": entry["name"], "params": entry.get("params") or {}},
        "reference": reference,
        "seed": seed if _has_random_weights(reference) else None,
        "encoder": cache_identity_of(encoder),
    }
    return canonical(identity)


def encoder_fingerprint(encoder: ModalityEncoder, spec_entry: Mapping[str, Any] | Any, seed: int) -> str:
    """A stable sha256 hex digest of :func:`encoder_identity`: equal in every process that builds the same encoder,
    different after any change of weights, params, preprocessing, seed (random weights) or SDK version."""
    text = canonical_json(encoder_identity(encoder, spec_entry, seed))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _has_random_weights(reference: Any) -> bool:
    """True when some part of a reference is a ``config:`` (random init) or is empty (nothing known)."""
    if not isinstance(reference, Mapping):
        return False
    return not reference or "config" in reference or any(map(_has_random_weights, reference.values()))


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def canonical(value: Any) -> Any:
    """``value`` as plain JSON data (dicts with string keys, lists, numbers, strings), the same in every process."""
    if isinstance(value, enum.Enum):
        return canonical(value.value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(key): canonical(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted((canonical(item) for item in value), key=canonical_json)
    if isinstance(value, (PurePath, torch.dtype)):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return {"bytes_sha256": _sha256(value)}
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return {"tensor": str(value.dtype), "shape": list(value.shape), "sha256": _sha256(tensor_bytes(value))}
    if isinstance(value, np.generic):
        return canonical(value.item())
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        return {"ndarray": str(data.dtype), "shape": list(data.shape), "sha256": _sha256(data.tobytes())}
    if hasattr(value, "model_dump"):
        return canonical(value.model_dump())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return canonical(dataclasses.asdict(value))
    # Last resort: a repr that holds a memory address changes every run (a cache miss, never a wrong hit).
    return f"{type(value).__module__}.{type(value).__qualname__}:{value!r}"


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The raw bytes of a CPU tensor, in row-major order (works for bfloat16, which numpy lacks)."""
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
