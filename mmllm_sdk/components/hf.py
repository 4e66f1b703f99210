"""Loading Hugging Face components from a hub id, a local path, a GGUF file or a config dict."""

from __future__ import annotations

import contextlib
import contextvars
import copy
import hashlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import model_validator

from mmllm_sdk.dtypes import DtypeName, resolve_dtype
from mmllm_sdk.errors import SpecError
from mmllm_sdk.validation import StrictModel

_SKELETON = contextvars.ContextVar("mmllm_skeleton", default=False)
_FILE_CACHE: contextvars.ContextVar[dict[Any, Any] | None] = contextvars.ContextVar("mmllm_file_cache", default=None)
_WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".ckpt", ".onnx")


@contextlib.contextmanager
def skeleton_mode() -> Iterator[None]:
    """Build components from configs only, with weights on the ``meta`` device (nothing loads).

    ``mmllm validate`` builds the whole model this way to check dimensions and count
    parameters before any weight is read.
    """
    token = _SKELETON.set(True)
    try:
        with torch.device("meta"):
            yield
    finally:
        _SKELETON.reset(token)


def is_skeleton() -> bool:
    """True while :func:`skeleton_mode` is active."""
    return _SKELETON.get()


@contextlib.contextmanager
def reuse_loaded_files() -> Iterator[None]:
    """Within this block, configs, tokenizers and processors read by :func:`cached_call` are read once.

    ``build_model`` builds a skeleton, then the real model: both read the same configs and
    tokenizers (a GGUF file takes seconds to parse for each).
    """
    token = _FILE_CACHE.set({})
    try:
        yield
    finally:
        _FILE_CACHE.reset(token)


def cached_call(what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
    """:func:`hf_call` for loaders of small objects (configs, tokenizers, processors), memoised in
    :func:`reuse_loaded_files`; each caller gets its own deep copy, since callers change them."""
    cache = _FILE_CACHE.get()
    if cache is None:
        return hf_call(what, function, *args, **kwargs)
    key = (
        getattr(function, "__qualname__", repr(function)),
        getattr(function, "__self__", None),
        repr(args),
        repr(sorted(kwargs.items())),
    )
    if key not in cache:
        cache[key] = hf_call(what, function, *args, **kwargs)
    return copy.deepcopy(cache[key])


class HFSource(StrictModel):
    """Where a Hugging Face component comes from: ``model`` (hub id or local path) or ``config`` (random init)."""

    model: str | None = None  # hub id ("openai/clip-vit-base-patch32") or a local folder
    config: dict[str, Any] | None = None  # config fields; random weights drawn from the spec's seed
    revision: str | None = None  # hub branch, tag or commit
    gguf_file: str | None = None  # a GGUF file inside ``model`` (dequantised on load)
    dtype: DtypeName = "auto"  # auto: bfloat16 where the hardware computes it natively, else float32
    trust_remote_code: bool = False  # only ever True when the spec says so

    reads_gguf: ClassVar[bool] = False  # transformers reads GGUF files for language models only

    @model_validator(mode="after")
    def _one_source(self) -> HFSource:
        if (self.model is None) == (self.config is None):
            raise ValueError(
                "set exactly one of 'model' (a hub id or local path, for pretrained weights) "
                "or 'config' (a dict of config fields, for random initialisation)"
            )
        if self.gguf_file and not self.reads_gguf:
            raise ValueError("'gguf_file' works for LLM backbones only; transformers reads no other GGUF models")
        if self.gguf_file and self.model is None:
            raise ValueError("'gguf_file' names a file inside 'model'; set 'model' to the folder that holds it")
        return self

    @property
    def torch_dtype(self) -> torch.dtype:
        return resolve_dtype(self.dtype)

    def pretrained_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
        if self.revision:
            kwargs["revision"] = self.revision
        if self.gguf_file:
            kwargs["gguf_file"] = self.gguf_file
        return kwargs


def load_config(config_cls: Any, source: HFSource, what: str) -> Any:
    """The component's config, from ``source.config`` or from the model folder / hub id."""
    if source.config is not None:
        fields = dict(source.config)
        if hasattr(config_cls, "for_model"):  # AutoConfig: the dict names its model_type
            model_type = fields.pop("model_type", None)
            if model_type is None:
                raise SpecError(
                    f"{what}: 'config' needs a 'model_type' (for example 'llama') to know which architecture to build."
                )
            return hf_call(what, config_cls.for_model, model_type, **fields)
        return hf_call(what, config_cls, **fields)
    return cached_call(what, config_cls.from_pretrained, source.model, **source.pretrained_kwargs())


def load_model(model_cls: Any, config_cls: Any, source: HFSource, what: str) -> Any:
    """A Hugging Face model: pretrained from ``source.model`` or random from ``source.config``.

    In :func:`skeleton_mode` only the config is read and the weights stay on ``meta``.
    """
    config = load_config(config_cls, source, what)
    if is_skeleton() or source.config is not None:
        builder = getattr(model_cls, "from_config", None) or model_cls._from_config
        return hf_call(what, builder, config, dtype=source.torch_dtype)
    report = logging.getLogger("transformers.modeling_utils")  # its load report: a table of every key, said below
    report.addFilter(_no_load_report)
    try:
        model, info = hf_call(
            what,
            model_cls.from_pretrained,
            source.model,
            config=config,
            dtype=source.torch_dtype,
            output_loading_info=True,
            **source.pretrained_kwargs(),
        )
    finally:
        report.removeFilter(_no_load_report)
    # Weights the checkpoint has and this model does not are expected (a CLIP vision tower read from a whole CLIP
    # repository leaves its text tower); weights the model needs and the checkpoint lacks start random: say so.
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        warnings.warn(
            f"{what}: {len(missing)} weight(s) are not in {source.model!r} and start from random values: "
            f"{', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}",
            stacklevel=2,
        )
    return model


def _no_load_report(record: logging.LogRecord) -> bool:
    return "LOAD REPORT" not in str(record.msg)


def hf_call(what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a transformers loader; a missing model or a bad config becomes a SpecError naming ``what``."""
    try:
        return function(*args, **kwargs)
    except OSError as exc:
        name = args[0] if args and isinstance(args[0], str) else ""
        raise SpecError(
            f"{what}: could not load {name!r} ({exc}). Pass a local folder that holds it, check the hub id "
            "and your network, or use 'config:' for a randomly initialised component."
        ) from exc
    except (TypeError, ValueError, KeyError) as exc:
        raise SpecError(
            f"{what}: the Hugging Face config or model could not be built: {type(exc).__name__}: {exc}"
        ) from exc


def reference(source: HFSource) -> dict[str, Any]:
    """What a checkpoint records of a frozen base: the id or path, the revision, and a content hash for local files."""
    if source.config is not None:
        return {"config": source.config}
    ref: dict[str, Any] = {"model": source.model}
    if source.revision:
        ref["revision"] = source.revision
    if source.gguf_file:
        ref["gguf_file"] = source.gguf_file
    path = Path(source.model)
    if path.exists():
        ref["sha256"] = content_hash(path / source.gguf_file if source.gguf_file else path)
    return ref


_HASHES: dict[tuple[str, int, float], str] = {}


def content_hash(path: Path) -> str:
    """SHA-256 over the weight files under ``path`` (names and bytes), cached by size and mtime."""
    files = (
        [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    )
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        key = (os.fspath(file.resolve()), stat.st_size, stat.st_mtime)
        if key not in _HASHES:
            file_digest = hashlib.sha256()
            with file.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    file_digest.update(block)
            _HASHES[key] = file_digest.hexdigest()
        digest.update(file.name.encode())
        digest.update(_HASHES[key].encode())
    return digest.hexdigest()
