"""An on-disk cache of frozen encoder features F_X, keyed by the encoder's identity and each item's bytes."""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import urllib.parse
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

import mmllm_sdk
from mmllm_sdk.components.encoder import ModalityEncoder
from mmllm_sdk.errors import InputError, PluginError, SpecError

logger = logging.getLogger(__name__)

CACHE_FORMAT = "mmllm-feature-cache/1"  # enters every fingerprint and file; bump it when either changes meaning
PREPROCESSOR_ATTRIBUTES = ("image_processor", "feature_extractor", "processor")  # encoder attributes with to_dict()
LIBRARIES = ("torch", "transformers")  # their versions enter every fingerprint (kernels, preprocessing code)
FEATURES_KEY = "encoder_features"  # batch[modality][FEATURES_KEY]: cached F_X (items, N, D) in place of encoder inputs
_TENSOR_NAME = "features"  # the one tensor in each cache file
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KEY = re.compile(r"^([0-9a-f]{64})-([0-9a-f]{64})$")
_BLOCK = 1 << 20  # bytes read at a time when hashing a file


# the encoder's identity ------------------------------------------------------------------------


def encoder_identity(encoder: ModalityEncoder, spec_entry: Mapping[str, Any] | Any, seed: int) -> dict[str, Any]:
    """Everything that determines ``encoder``'s features, as plain JSON data (what :func:`encoder_fingerprint` hashes).

    ``spec_entry`` is the encoder's entry in the model spec (``{"name": …, "params": …}``, a dict
    or the pydantic ``EncoderSpec``); ``seed`` is the model spec's seed. The identity holds:

    - the cache format, the SDK version and the versions of torch and transformers;
    - the modality (random weights are drawn from the seed *and* the component path
      ``inputs.<modality>.encoder``);
    - the spec entry's name and params;
    - ``encoder.reference()`` (the hub id and revision, or the sha256 of local weight files);
    - the seed, when the weights are random: some part of the reference is a ``config:``, or
      the encoder reports no reference at all (then nothing says the weights are not random);
    - per encoder (and, recursively, its ``frame_encoder``): its class (module and qualname),
      the distribution and version of the package that defines it, ``num_tokens`` and
      ``output_dim``, the dtypes of its parameters and buffers, the hub commit of any loaded
      Hugging Face config, the ``to_dict()`` of its ``image_processor``, ``feature_extractor``
      or ``processor`` (and its class), and ``cache_identity()`` when the encoder defines it.

    A plugin encoder whose features depend on anything else (a file it reads, a setting kept
    outside its params, preprocessing that is not one of the attributes above) defines
    ``cache_identity(self) -> dict`` returning that, as JSON-like data; it enters the
    fingerprint as is.
    """
    entry = _spec_entry(spec_entry)
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
        "encoder": _module_identity(encoder),
    }
    return _canonical(identity)


def encoder_fingerprint(encoder: ModalityEncoder, spec_entry: Mapping[str, Any] | Any, seed: int) -> str:
    """A stable sha256 hex digest of :func:`encoder_identity`: equal in every process that builds the same encoder.

    Any change of weights, params, preprocessing, seed (for random weights), SDK version or
    the encoder's ``cache_identity()`` gives another fingerprint, so cached features of the
    old encoder are never returned for the new one.
    """
    text = _canonical_json(encoder_identity(encoder, spec_entry, seed))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _spec_entry(spec_entry: Mapping[str, Any] | Any) -> dict[str, Any]:
    if hasattr(spec_entry, "model_dump"):
        spec_entry = spec_entry.model_dump()
    if not isinstance(spec_entry, Mapping) or not isinstance(spec_entry.get("name"), str):
        raise SpecError(
            f"encoder_fingerprint() takes the encoder's spec entry, a dict with 'name' and 'params' "
            f"(e.g. spec.inputs['image'].encoder); got {spec_entry!r}."
        )
    return dict(spec_entry)


def _has_random_weights(reference: Any) -> bool:
    """True when some part of a reference is a ``config:`` (random init) or is empty (nothing known)."""
    if isinstance(reference, Mapping):
        if not reference or "config" in reference:
            return True
        return any(_has_random_weights(value) for value in reference.values() if isinstance(value, Mapping))
    return False


def _module_identity(encoder: ModalityEncoder) -> dict[str, Any]:
    cls = type(encoder)
    tensors = [*encoder.parameters(), *encoder.buffers()]
    commits = {
        commit
        for module in encoder.modules()
        if isinstance(commit := getattr(getattr(module, "config", None), "_commit_hash", None), str)
    }
    identity: dict[str, Any] = {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "distribution": _distribution(cls.__module__),
        "num_tokens": getattr(encoder, "num_tokens", None),
        "output_dim": getattr(encoder, "output_dim", None),
        "dtypes": sorted({str(tensor.dtype) for tensor in tensors}),
        "hub_commits": sorted(commits),
        "preprocessing": {
            name: _preprocessor_config(getattr(encoder, name))
            for name in PREPROCESSOR_ATTRIBUTES
            if getattr(encoder, name, None) is not None and not callable(getattr(cls, name, None))
        },
    }
    cache_identity = getattr(encoder, "cache_identity", None)
    if callable(cache_identity):
        extra = cache_identity()
        if not isinstance(extra, Mapping):
            raise PluginError(
                f"{cls.__qualname__}.cache_identity() returned a {type(extra).__name__}; it must return a dict of "
                "what else determines the encoder's features (JSON-like values)."
            )
        identity["cache_identity"] = dict(extra)
    frame_encoder = getattr(encoder, "frame_encoder", None)
    if isinstance(frame_encoder, ModalityEncoder):
        identity["frame_encoder"] = _module_identity(frame_encoder)
    return identity


def _preprocessor_config(processor: Any) -> dict[str, Any]:
    """An image processor's or feature extractor's class and settings (``to_dict()``, else the object itself).

    The class counts: transformers' torchvision and PIL image processors share a config but
    not every pixel.
    """
    cls = type(processor)
    to_dict = getattr(processor, "to_dict", None)
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "config": to_dict() if callable(to_dict) else processor}


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def _distribution(module: str) -> dict[str, str | None]:
    """The installed distribution(s) and version(s) that provide ``module``'s top-level package."""
    top = module.partition(".")[0]
    names = importlib.metadata.packages_distributions().get(top, [])
    return {name: _version(name) for name in sorted(set(names))}


def _canonical(value: Any) -> Any:
    """``value`` as plain JSON data (dicts with string keys, lists, numbers, strings), the same in every process."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, enum.Enum):
        return _canonical(value.value)
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, Mapping):
        return {str(key): _canonical(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_canonical(item) for item in value), key=_canonical_json)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return {"bytes_sha256": hashlib.sha256(value).hexdigest()}
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return {"tensor": str(value.dtype), "shape": list(value.shape), "sha256": _sha256(_tensor_bytes(value))}
    if isinstance(value, np.generic):
        return _canonical(value.item())
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        return {"ndarray": str(data.dtype), "shape": list(data.shape), "sha256": _sha256(data.tobytes())}
    if hasattr(value, "model_dump"):
        return _canonical(value.model_dump())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _canonical(dataclasses.asdict(value))
    # Last resort: a repr that holds a memory address changes every run (a cache miss, never a wrong hit).
    return f"{type(value).__module__}.{type(value).__qualname__}:{value!r}"


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The raw bytes of a CPU tensor, in row-major order (works for bfloat16, which numpy lacks)."""
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


# items -------------------------------------------------------------------------------------------

# (resolved path, size, mtime_ns, ctime_ns, inode, device) -> sha256 of the bytes, for this process
_FILE_DIGESTS: dict[tuple[str, int, int, int, int, int], str] = {}


def _local_path(source: Any) -> Path | None:
    """The local file or folder an item source names (as ``ModalitySpec.load`` reads it), else None."""
    if isinstance(source, str):
        if source.startswith(("http://", "https://")):
            return None
        if source.startswith("file://"):
            return Path(urllib.parse.unquote(urllib.parse.urlparse(source).path))
        return Path(source)
    if isinstance(source, os.PathLike):
        return Path(os.fspath(source))
    return None


def _file_digest(path: Path) -> str:
    """sha256 of a file's bytes, remembered while its size, times, inode and device stay the same."""
    stat = path.stat()
    memo = (os.fspath(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev)
    digest = _FILE_DIGESTS.get(memo)
    if digest is None:
        hasher = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(_BLOCK), b""):
                hasher.update(block)
        digest = _FILE_DIGESTS[memo] = hasher.hexdigest()
    return digest


def _item_digest(path: Path) -> str:
    """sha256 of what a loader reads: a file's suffix and bytes, or a folder's file names and bytes."""
    hasher = hashlib.sha256()
    if path.is_dir():
        hasher.update(b"folder\0")
        files = sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*") if p.is_file())
        for name, file in files:
            hasher.update(name.encode("utf-8", "surrogateescape") + b"\0" + _file_digest(file).encode() + b"\0")
    else:
        digest = _file_digest(path)  # raises FileNotFoundError for a missing path
        hasher.update(b"file\0" + path.suffix.lower().encode("utf-8", "surrogateescape") + b"\0" + digest.encode())
    return hasher.hexdigest()


def _check_fingerprint(fingerprint: str) -> None:
    if not isinstance(fingerprint, str) or not _HEX64.match(fingerprint):
        raise InputError(
            f"A feature cache fingerprint is 64 lower-case hex digits, as encoder_fingerprint() returns; "
            f"got {fingerprint!r}."
        )


def _split_key(key: str) -> tuple[str, str]:
    match = _KEY.match(key) if isinstance(key, str) else None
    if match is None:
        raise InputError(
            f"{key!r} is not a feature cache key; use the key FeatureCache.item_key() returns "
            "(the encoder fingerprint and the item digest joined by '-')."
        )
    return match.group(1), match.group(2)


# the cache ---------------------------------------------------------------------------------------


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
    """Frozen encoder features on disk: one safetensors file per item, so that later epochs skip the encoder.

    A key is ``<fingerprint>-<item digest>`` (:meth:`item_key`); its file is
    ``directory/<fingerprint>/<item digest[:2]>/<item digest>.safetensors`` (one folder per
    encoder identity, items spread over 256 sub-folders). Each file holds one tensor, the
    item's features ``(N, D)``, and metadata (format, fingerprint, item digest, shape, dtype
    and a CRC-32 of the data) that :meth:`get` checks, so a file is returned only for the key
    it was written for. Files are written to a temporary name and renamed into place, so a
    killed process never leaves a partial file under a real name; a truncated, unreadable or
    mismatching file is a miss, logged as a warning and removed (the next :meth:`put`
    writes it again). Files are read with safetensors only, never unpickled.

    Features are written as given: compute them with the encoder in eval mode and without
    autocast, and cache only encoders that stay frozen.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.stats = CacheStats()

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.directory)!r})"

    def item_key(self, fingerprint: str, source: Any) -> str | None:
        """The key of one item for the encoder ``fingerprint``, or None when the item cannot be cached.

        ``source`` is what a message names: a path (str or PathLike) or a ``file://`` URL of a
        file (its suffix and sha256 count, not its name or folder, so one image at two paths
        has one key) or of a folder (e.g. video frames: its file names and bytes count).
        In-memory objects, ``http(s)://`` URLs and paths that cannot be read have no key
        (the modality's loader reports a missing file). File hashes are remembered in memory
        while a file's size, modification time, change time and inode stay the same.
        """
        _check_fingerprint(fingerprint)
        path = _local_path(source)
        if path is None:
            return None
        try:
            digest = _item_digest(path)
        except OSError:
            return None
        return f"{fingerprint}-{digest}"

    def path(self, key: str) -> Path:
        """Where the features of ``key`` are stored."""
        fingerprint, item = _split_key(key)
        return self.directory / fingerprint / item[:2] / f"{item}.safetensors"

    def get(
        self, key: str, *, shape: Sequence[int] | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor | None:
        """The stored features of ``key`` (a CPU tensor), or None on a miss.

        With ``shape`` (e.g. ``(encoder.num_tokens, encoder.output_dim)``) or ``dtype``, a
        stored tensor of another shape or dtype is an invalid file: a miss, warned and removed.
        """
        fingerprint, item = _split_key(key)
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self.stats.misses += 1
            return None
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
        self,
        keys: Iterable[str | None],
        *,
        shape: Sequence[int] | None = None,
        dtype: torch.dtype | None = None,
    ) -> list[torch.Tensor | None]:
        """:meth:`get` for each key; a None key (an uncacheable item) gives None and counts as ``uncacheable``."""
        results: list[torch.Tensor | None] = []
        for key in keys:
            if key is None:
                self.stats.uncacheable += 1
                results.append(None)
            else:
                results.append(self.get(key, shape=shape, dtype=dtype))
        return results

    def put(self, key: str, features: torch.Tensor) -> None:
        """Store one item's features under ``key``, replacing any file there, atomically.

        A failed write (a full disk, a read-only folder) is logged and counted in
        ``stats.write_errors``, not raised: training goes on, computing those features again.
        """
        fingerprint, item = _split_key(key)
        if not isinstance(features, torch.Tensor):
            raise InputError(
                f"FeatureCache.put() takes one item's features as a torch.Tensor; got a {type(features).__name__}."
            )
        tensor = features.detach().to("cpu", copy=True).contiguous()
        metadata = {
            "format": CACHE_FORMAT,
            "fingerprint": fingerprint,
            "item": item,
            "shape": json.dumps(list(tensor.shape)),
            "dtype": str(tensor.dtype),
            "crc32": _crc32(tensor),
        }
        data = save_safetensors({_TENSOR_NAME: tensor}, metadata=metadata)
        path = self.path(key)
        try:
            _write_atomically(path, data)
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
        """Delete the cached features of one encoder ``fingerprint``, or of all encoders.

        Only the cache's own folders (named by fingerprints) are removed; other files under
        ``directory`` are left alone.
        """
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
    return f"{zlib.crc32(_tensor_bytes(tensor)):08x}"


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


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place (readers see all or nothing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "xb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# computing features through the cache --------------------------------------------------------------


def fill_cache(
    encoder: ModalityEncoder,
    cache: FeatureCache,
    fingerprint: str,
    sources: Sequence[Any],
    load: Callable[[Any], Any],
    *,
    batch_size: int = 8,
) -> int:
    """Encode and store every cacheable item that is not cached yet; return how many were encoded.

    It keeps no features in memory (a data set's worth would not fit) and encodes an item
    named several times once; uncacheable items (in-memory objects, URLs) are skipped. Run it before training, on the
    main process first: every later pass then finds its features on disk.
    """
    if batch_size < 1:
        raise InputError(f"fill_cache() needs a batch_size of at least 1; got {batch_size}.")
    todo: dict[str, Any] = {}
    for source in sources:
        key = cache.item_key(fingerprint, source)
        if key is not None and key not in todo and not cache.path(key).is_file():
            todo[key] = source
    keys = list(todo)
    _encode(
        encoder, list(todo.values()), load, batch_size, lambda position, encoded: cache.put(keys[position], encoded)
    )
    return len(keys)


def _encode(
    encoder: ModalityEncoder,
    sources: Sequence[Any],
    load: Callable[[Any], Any],
    batch_size: int,
    sink: Callable[[int, torch.Tensor], None],
) -> None:
    """Load, preprocess and encode ``sources`` in batches (eval mode, no gradients); ``sink(i, (N, D))`` each."""
    if not sources:
        return
    shape = (encoder.num_tokens, encoder.output_dim)
    device = next(encoder.parameters(), torch.empty(0)).device
    was_training = encoder.training
    encoder.eval()
    try:
        for start in range(0, len(sources), batch_size):
            chunk = sources[start : start + batch_size]
            batch = encoder.preprocess([load(source) for source in chunk])
            with torch.no_grad():
                encoded = encoder(**{name: tensor.to(device) for name, tensor in batch.items()})  # (B, N, D)
            if tuple(encoded.shape) != (len(chunk), *shape):
                raise PluginError(
                    f"{type(encoder).__qualname__} returned features of shape {tuple(encoded.shape)} for "
                    f"{len(chunk)} items, but its num_tokens and output_dim promise {(len(chunk), *shape)}."
                )
            for row in range(len(chunk)):
                sink(start + row, encoded[row].to("cpu", copy=True))  # (N, D)
    finally:
        encoder.train(was_training)
