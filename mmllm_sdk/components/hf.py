"""Loading Hugging Face components from a hub id, a local path, a GGUF file or a config dict."""

from __future__ import annotations

import contextlib
import contextvars
import copy
import hashlib
import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import model_validator

from mmllm_sdk.dtypes import DtypeName, resolve_dtype
from mmllm_sdk.errors import MMLLMError, SpecError
from mmllm_sdk.files import file_sha256
from mmllm_sdk.validation import StrictModel

_SKELETON = contextvars.ContextVar("mmllm_skeleton", default=False)
_FILE_CACHE: contextvars.ContextVar[dict[Any, Any] | None] = contextvars.ContextVar("mmllm_file_cache", default=None)
_WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".ckpt", ".onnx")


@contextlib.contextmanager
def _set(var: contextvars.ContextVar[Any], value: Any) -> Iterator[None]:
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


@contextlib.contextmanager
def skeleton_mode() -> Iterator[None]:
    """Build components from configs only, weights on the ``meta`` device: ``mmllm validate`` checks shapes so."""
    with _set(_SKELETON, True), torch.device("meta"):
        yield


def is_skeleton() -> bool:
    return _SKELETON.get()


@contextlib.contextmanager
def reuse_loaded_files() -> Iterator[None]:
    """Within this block, what :func:`cached_call` reads is read once (by a skeleton build, then the real one)."""
    with _set(_FILE_CACHE, {}):
        yield


def cached_call(what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
    """:func:`hf_call` for configs, tokenizers and processors, memoised in :func:`reuse_loaded_files` (deep copies)."""
    cache = _FILE_CACHE.get()
    if cache is None:
        return hf_call(what, function, *args, **kwargs)
    name = getattr(function, "__qualname__", repr(function))
    key = (name, getattr(function, "__self__", None), repr(args), repr(sorted(kwargs.items())))
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
        optional = {"revision": self.revision, "gguf_file": self.gguf_file}
        return {"trust_remote_code": self.trust_remote_code, **{key: value for key, value in optional.items() if value}}


def load_config(config_cls: Any, source: HFSource, what: str) -> Any:
    """The component's config, from ``source.config`` or the model's files, with its sizes checked."""
    if source.config is not None:
        fields = dict(source.config)
        check_sizes(fields, f"{what}: params.config")  # before transformers' own checks, which do not name fields
        if hasattr(config_cls, "for_model"):  # AutoConfig: the dict names its model_type
            model_type = fields.pop("model_type", None)
            if model_type is None:
                raise SpecError(
                    f"{what}: 'config' needs a 'model_type' (for example 'llama') to know which architecture to build."
                )
            config = hf_call(what, config_cls.for_model, model_type, **fields)
        else:
            config = hf_call(what, config_cls, **fields)
    else:
        config = cached_call(what, config_cls.from_pretrained, source.model, **source.pretrained_kwargs())
    check_sizes(config.to_dict(), f"{what}: {'params.config' if source.config is not None else repr(source.model)}")
    return config


_SIZES = re.compile(
    r"^((hidden|intermediate|vocab|image|patch|projection)_size|max_position_embeddings|num_channels)$|_(dim|layers|heads)$"
)


def check_sizes(config: dict[str, Any], where: str) -> None:
    """A config's sizes (``hidden_size``, ``*_layers``, ``*_heads`` …, in sub-configs too) are positive and its heads
    divide its width: a mistake there is a :class:`SpecError` naming the field, not a crash inside the model."""
    for key, value in config.items():
        if isinstance(value, dict):
            check_sizes(value, f"{where}.{key}")
        elif type(value) is int and value <= 0 and _SIZES.search(key):
            raise SpecError(f"{where}: {key} is {value}; it must be a positive integer.")
    width, heads, groups = (config.get(k) for k in ("hidden_size", "num_attention_heads", "num_key_value_heads"))
    if type(width) is type(heads) is int and not config.get("head_dim") and width % heads:
        raise SpecError(
            f"{where}: hidden_size {width} is not divisible by num_attention_heads {heads}; pick heads that divide it."
        )
    if type(heads) is type(groups) is int and heads % groups:
        raise SpecError(f"{where}: num_attention_heads {heads} is not divisible by num_key_value_heads {groups}.")


def load_model(model_cls: Any, config_cls: Any, source: HFSource, what: str) -> Any:
    """A Hugging Face model: pretrained from ``source.model`` or random from ``source.config`` (or a skeleton)."""
    config = load_config(config_cls, source, what)
    if is_skeleton() or source.config is not None:
        builder = getattr(model_cls, "from_config", None) or model_cls._from_config
        return hf_call(what, builder, config, dtype=source.torch_dtype)
    kwargs = {"config": config, "dtype": source.torch_dtype, "output_loading_info": True, **source.pretrained_kwargs()}
    report = logging.getLogger("transformers.modeling_utils")  # its load report: a table of every key, said below
    report.addFilter(_no_load_report)
    try:
        model, info = hf_call(what, model_cls.from_pretrained, source.model, **kwargs)
    finally:
        report.removeFilter(_no_load_report)
    # extra weights in the checkpoint are expected (CLIP's text tower); weights it lacks start random: say so
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
    """Call a transformers loader; a missing model, an unreadable or forged file (named) or a bad config becomes a
    SpecError naming ``what``: what a loader refuses comes from the spec or the files it names, not from the plugin."""
    name = args[0] if args and isinstance(args[0], str) else ""
    try:
        return function(*args, **kwargs)
    except OSError as exc:
        raise SpecError(
            f"{what}: could not load {name!r} ({exc}). Pass a local folder that holds it, check the hub id "
            "and your network, or use 'config:' for a randomly initialised component."
        ) from exc
    except MMLLMError:
        raise
    except Exception as exc:  # a config transformers cannot build, or a truncated / forged weight or GGUF file
        read = getattr(function, "__name__", "") == "from_pretrained" and name
        source = (
            f" from {name!r}" + (f", file {kwargs['gguf_file']!r}" if kwargs.get("gguf_file") else "") if read else ""
        )
        raise SpecError(
            f"{what}: the Hugging Face config or model could not be built{source}: {type(exc).__name__}: {exc}"
        ) from exc


def reference(source: HFSource) -> dict[str, Any]:
    """What a checkpoint records of a frozen base: the id or path, the revision, and a content hash for local files."""
    if source.config is not None:
        return {"config": source.config}
    ref = {"model": source.model, **source.pretrained_kwargs()}
    del ref["trust_remote_code"]
    path = Path(source.model)
    if path.exists():
        ref["sha256"] = content_hash(path / source.gguf_file if source.gguf_file else path)
    return ref


def content_hash(path: Path) -> str:
    """SHA-256 over the weight files under ``path`` (each file's name and the sha256 of its bytes), or of one file."""
    files = (
        [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    )
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + file_sha256(file).encode())
    return digest.hexdigest()
