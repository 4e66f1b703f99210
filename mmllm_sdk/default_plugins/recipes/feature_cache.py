"""An on-disk cache of frozen encoder features F_X, keyed by the encoder's fingerprint and each item's bytes."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import urllib.parse
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from mmllm_sdk.components.encoder import ModalityEncoder
from mmllm_sdk.components.modality import preprocess
from mmllm_sdk.default_plugins.recipes.fingerprint import CACHE_FORMAT, tensor_bytes
from mmllm_sdk.default_plugins.recipes.fingerprint import (
    encoder_fingerprint as encoder_fingerprint,
)  # re-exported for callers
from mmllm_sdk.errors import InputError, PluginError, TrainingError
from mmllm_sdk.files import atomic_write, file_sha256, read_bytes

logger = logging.getLogger(__name__)

_TENSOR_NAME = "features"  # the one tensor in each cache file
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KEY = re.compile(r"^([0-9a-f]{64})-([0-9a-f]{64})$")
MAX_FILE_BYTES = 1 << 30  # a cache file holds one item's (N, D) features: anything larger is not one of ours


def _item_digest(path: Path) -> str:
    """sha256 of what a loader reads: a file's suffix and bytes, or a folder's files' names and bytes (or OSError)."""
    hasher = hashlib.sha256()
    if path.is_dir():
        hasher.update(b"folder\0")
        for name, file in sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*") if p.is_file()):
            hasher.update(name.encode("utf-8", "surrogateescape") + b"\0" + file_sha256(file).encode() + b"\0")
    else:
        digest = file_sha256(path)
        hasher.update(b"file\0" + path.suffix.lower().encode("utf-8", "surrogateescape") + b"\0" + digest.encode())
    return hasher.hexdigest()


def _check_fingerprint(fingerprint: str) -> None:
    if not isinstance(fingerprint, str) or not _HEX64.match(fingerprint):
        raise InputError(
            f"A feature cache fingerprint is 64 lower-case hex digits (encoder_fingerprint()); got {fingerprint!r}."
        )


def _split_key(key: str) -> tuple[str, str]:
    match = _KEY.match(key) if isinstance(key, str) else None
    if match is None:
        raise InputError(
            f"{key!r} is not a feature cache key; use the key FeatureCache.item_key() returns "
            "(the encoder fingerprint and the item digest joined by '-')."
        )
    return match.group(1), match.group(2)


@dataclass
class CacheStats:
    """What a :class:`FeatureCache` did, for reporting (``str(stats)`` is one line)."""

    hits: int = 0  # get() returned stored features
    misses: int = 0  # get() found no usable file (invalid files included)
    writes: int = 0  # put() stored features
    invalid: int = 0  # files found truncated, unreadable or not matching their key: each a miss, each removed
    uncacheable: int = 0  # items get_many() was given no key for (in-memory objects, URLs)
    write_errors: int = 0  # put() calls that failed to write (a full disk, a read-only folder)

    @property
    def hit_rate(self) -> float:
        asked = self.hits + self.misses
        return self.hits / asked if asked else 0.0

    def __str__(self) -> str:
        return (
            f"{self.hits} hits, {self.misses} misses ({self.invalid} invalid files), {self.writes} writes, "
            f"{self.uncacheable} uncacheable items, {self.write_errors} failed writes"
        )


class FeatureCache:
    """Frozen encoder features on disk, one safetensors file per item, so that later epochs skip the encoder.
    A key ``<fingerprint>-<item digest>`` is stored at ``directory/<fingerprint>/<digest[:2]>/<digest>.safetensors``:
    one ``(N, D)`` tensor and metadata (format, key, shape, dtype, CRC-32) that :meth:`get` checks. Files are written
    atomically and read with safetensors only; a bad file is a warned miss and is removed.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.stats = CacheStats()

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.directory)!r})"

    def item_key(self, fingerprint: str, source: Any) -> str | None:
        """The key of one item (a path or ``file://`` URL of a file or folder; its content counts, not its name), or
        None when it cannot be cached: in-memory objects, ``http(s)://`` URLs, unreadable paths, FIFOs."""
        _check_fingerprint(fingerprint)
        if isinstance(source, str) and source.startswith(("http://", "https://")):
            return None
        if isinstance(source, str) and source.startswith("file://"):  # a path, as ModalitySpec.load reads it
            source = urllib.parse.unquote(urllib.parse.urlparse(source).path)
        if not isinstance(source, (str, os.PathLike)):
            return None
        try:
            digest = _item_digest(Path(source))
        except (OSError, ValueError):  # ValueError: a NUL in the path
            return None
        return f"{fingerprint}-{digest}"

    def path(self, key: str) -> Path:
        fingerprint, item = _split_key(key)
        return self.directory / fingerprint / item[:2] / f"{item}.safetensors"

    def get(
        self, key: str, *, shape: Sequence[int] | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor | None:
        """The stored features of ``key`` (a CPU tensor), or None on a miss (a file of another ``shape`` or
        ``dtype`` than asked for is invalid: a miss, warned and removed)."""
        fingerprint, item = _split_key(key)
        path = self.path(key)
        if not os.path.lexists(path):
            self.stats.misses += 1
            return None
        try:  # only a regular file of bounded size: something else in its place is invalid, never read
            data = read_bytes(path, "The file", limit=MAX_FILE_BYTES)
        except OSError as exc:
            return self._invalid(path, f"it could not be read ({exc})")
        features, problem = _decode(data, fingerprint, item)
        if features is not None and shape is not None and tuple(features.shape) != tuple(shape):
            problem = f"it holds features of shape {tuple(features.shape)}, but shape {tuple(shape)} was expected"
        if features is not None and dtype is not None and features.dtype != dtype:
            problem = f"it holds {features.dtype} features, but {dtype} was expected"
        if problem is not None:
            return self._invalid(path, problem)
        self.stats.hits += 1
        return features

    def get_many(
        self, keys: Iterable[str | None], *, shape: Sequence[int] | None = None, dtype: torch.dtype | None = None
    ) -> list[torch.Tensor | None]:
        """:meth:`get` for each key; a None key (an uncacheable item) gives None and counts as ``uncacheable``."""
        keys = list(keys)
        self.stats.uncacheable += keys.count(None)
        return [None if key is None else self.get(key, shape=shape, dtype=dtype) for key in keys]

    def put(self, key: str, features: torch.Tensor) -> None:
        """Store one item's features under ``key``, atomically; a failed write is logged and counted, not raised."""
        fingerprint, item = _split_key(key)
        if not isinstance(features, torch.Tensor):
            raise InputError(
                f"FeatureCache.put() takes one item's features as a torch.Tensor; got a {type(features).__name__}."
            )
        tensor = features.detach().to("cpu", copy=True).contiguous()
        metadata = {"format": CACHE_FORMAT, "fingerprint": fingerprint, "item": item}
        metadata.update(shape=json.dumps(list(tensor.shape)), dtype=str(tensor.dtype), crc32=_crc32(tensor))
        data = save_safetensors({_TENSOR_NAME: tensor}, metadata=metadata)
        path = self.path(key)
        try:
            atomic_write(path, data)
        except OSError as exc:
            self.stats.write_errors += 1
            log = logger.warning if self.stats.write_errors == 1 else logger.debug
            log(
                "Could not write the feature cache file %s (%s); these features will be computed again. "
                "Free disk space or point the feature cache at a writable folder.",
                path,
                exc,
            )
            return
        self.stats.writes += 1

    def clear(self, fingerprint: str | None = None) -> None:
        """Delete the cached features of one encoder ``fingerprint``, or of all (only the cache's own folders)."""
        if fingerprint is not None:
            _check_fingerprint(fingerprint)
        if not self.directory.is_dir():
            return
        for child in self.directory.iterdir():
            if child.is_dir() and _HEX64.match(child.name) and fingerprint in (None, child.name):
                shutil.rmtree(child)

    def _invalid(self, path: Path, problem: str) -> None:
        self.stats.invalid += 1
        self.stats.misses += 1
        logger.warning(
            "Feature cache file %s is unusable: %s. It counts as a miss and is removed; its features will be "
            "computed and written again.",
            path,
            problem,
        )
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:  # e.g. a folder in its place: put() then fails and says so
            logger.debug("Could not remove %s: %s", path, exc)
        return None


def _crc32(tensor: torch.Tensor) -> str:
    return f"{zlib.crc32(tensor_bytes(tensor)):08x}"


def _decode(data: bytes, fingerprint: str, item: str) -> tuple[torch.Tensor | None, str | None]:
    """The features in a cache file's bytes and None, or None and what is wrong with the file."""
    try:
        tensors = load_safetensors(data)
        header_size = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_size]).get("__metadata__") or {}
    except SafetensorError as exc:
        return None, f"it is not a whole safetensors file ({exc})"
    except ValueError as exc:  # a header that is not JSON, a dtype torch lacks
        return None, f"its safetensors header cannot be read ({exc})"
    if set(tensors) != {_TENSOR_NAME}:
        return None, f"it holds the tensors {sorted(tensors)}, not one {_TENSOR_NAME!r} tensor"
    if metadata.get("format") != CACHE_FORMAT:
        return None, f"it is in format {metadata.get('format')!r}, not {CACHE_FORMAT!r}"
    if metadata.get("fingerprint") != fingerprint:
        return None, f"it was written for encoder fingerprint {metadata.get('fingerprint')!r}, not {fingerprint!r}"
    if metadata.get("item") != item:
        return None, f"it was written for item {metadata.get('item')!r}, not {item!r}"
    features = tensors[_TENSOR_NAME]
    if metadata.get("shape") != json.dumps(list(features.shape)) or metadata.get("dtype") != str(features.dtype):
        return None, (
            f"its tensor is {features.dtype} of shape {list(features.shape)}, but its metadata says "
            f"{metadata.get('dtype')} of shape {metadata.get('shape')}"
        )
    if metadata.get("crc32") != _crc32(features):
        return None, "its data does not match the checksum written with it"
    return features, None


def fill_cache(
    encoder: ModalityEncoder,
    cache: FeatureCache,
    fingerprint: str,
    sources: Sequence[Any],
    load: Callable[[Any], Any],
    *,
    batch_size: int = 8,
) -> int:
    """Encode (eval mode, no gradients) and store every cacheable item not cached yet, each once, in batches that are
    not kept in memory; return how many were encoded. Run it before training, on the main process first."""
    if batch_size < 1:
        raise InputError(f"fill_cache() needs a batch_size of at least 1; got {batch_size}.")
    todo: dict[str, Any] = {}
    for source in sources:
        key = cache.item_key(fingerprint, source)
        if key is not None and key not in todo and not cache.path(key).is_file():
            todo[key] = source
    if not todo:
        return 0
    keys, shape = list(todo), (encoder.num_tokens, encoder.output_dim)
    device = next(encoder.parameters(), torch.empty(0)).device
    was_training = encoder.training
    encoder.eval()
    try:
        for start in range(0, len(keys), batch_size):
            chunk = keys[start : start + batch_size]
            batch = preprocess(encoder, encoder.modality, [load(todo[k]) for k in chunk], [todo[k] for k in chunk])
            with torch.no_grad():
                encoded = encoder(**{name: tensor.to(device) for name, tensor in batch.items()})  # (B, N, D)
            if tuple(encoded.shape) != (len(chunk), *shape):
                raise PluginError(
                    f"{type(encoder).__qualname__} returned features of shape {tuple(encoded.shape)} for "
                    f"{len(chunk)} items, but its num_tokens and output_dim promise {(len(chunk), *shape)}."
                )
            broken = [
                str(todo[key]) for key, features in zip(chunk, encoded, strict=True) if not features.isfinite().all()
            ]
            if broken:
                raise TrainingError(
                    f"The {encoder.modality} encoder {type(encoder).__qualname__} gave features that are not finite "
                    f"(NaN or infinity) for {', '.join(map(repr, broken[:3]))}; nothing of them is cached and training "
                    "does not start. Check those files, and the encoder's weights and dtype."
                )
            for key, features in zip(chunk, encoded, strict=True):
                cache.put(key, features.to("cpu", copy=True))  # (N, D)
    finally:
        encoder.train(was_training)
    return len(keys)
