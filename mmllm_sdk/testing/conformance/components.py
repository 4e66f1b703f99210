"""The conformance checks of components: modalities (their loaders), encoders, input projectors,
modality generators and output projectors."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmllm_sdk.components import InputProjector, ModalityEncoder, ModalityGenerator
from mmllm_sdk.components.modality import DIRECTORY
from mmllm_sdk.components.output_projector import ConditionSpec, OutputProjector
from mmllm_sdk.errors import InputError
from mmllm_sdk.registry import get_registry
from mmllm_sdk.testing.conformance.shared import (
    GARBAGE,
    SEED,
    ConformanceError,
    _build,
    _check_batch,
    _check_close,
    _check_deterministic,
    _check_frozen,
    _check_moves,
    _check_reference,
    _check_shape,
    _check_trained_projector,
    _freeze,
    _positive_int,
    _same_item,
    _save_and_load,
)

# modalities ------------------------------------------------------------------------------------------------


def check_modality(
    name: str,
    files: Sequence[str | os.PathLike[str]],
    bad_files: Mapping[str | os.PathLike[str], str] | None = None,
) -> list[Any]:
    """Check a registered modality's loaders on real files; returns the items loaded from ``files``.

    - ``name`` is registered (by an installed or registered plugin);
    - each file of ``files`` loads, loads the same twice, and the modality's ``normalize``
      accepts the item and gives the same item back;
    - for every registered file suffix, an empty file and a file of garbage bytes raise
      :class:`~mmllm_sdk.errors.InputError` (never another exception, never a silent result);
    - each path of ``bad_files`` raises ``InputError`` whose message contains the given text.
    """
    spec = get_registry().modality(name)
    what = f"modality {name!r}"
    if not files:
        raise ConformanceError(f"{what}: check_modality needs at least one good file to load.")
    items = []
    for path in files:
        first = _load(spec, path, what)
        second = _load(spec, path, what)
        if not _same_item(first, second):
            raise ConformanceError(f"{what}: loading {str(path)!r} twice gave two different items.")
        if spec.normalize is not None:
            try:
                normalized = spec.normalize(first)
            except Exception as exc:
                raise ConformanceError(
                    f"{what}: normalize() refused the item its own loader made from {str(path)!r} "
                    f"({type(exc).__name__}: {exc}); normalize must accept loaded items."
                ) from exc
            if not _same_item(first, normalized):
                raise ConformanceError(
                    f"{what}: normalize() changed the item loaded from {str(path)!r}; it must return loaded items as they are."
                )
        items.append(first)
    with tempfile.TemporaryDirectory(prefix="mmllm-conformance-") as folder:
        for suffix in spec.loaders:
            if suffix == DIRECTORY:
                continue
            empty, garbage = Path(folder) / f"empty{suffix}", Path(folder) / f"garbage{suffix}"
            empty.write_bytes(b"")
            garbage.write_bytes(GARBAGE)
            _expect_input_error(spec, empty, "", f"{what}: an empty {suffix} file")
            _expect_input_error(spec, garbage, "", f"{what}: a {suffix} file of garbage bytes")
    for path, fragment in (bad_files or {}).items():
        _expect_input_error(spec, path, fragment, f"{what}: the bad file {str(path)!r}")
    return items


def _load(spec: Any, path: str | os.PathLike[str], what: str) -> Any:
    try:
        return spec.load(Path(path))
    except Exception as exc:
        raise ConformanceError(
            f"{what}: the good file {str(path)!r} did not load ({type(exc).__name__}: {exc})."
        ) from exc


def _expect_input_error(spec: Any, path: str | os.PathLike[str], fragment: str, what: str) -> None:
    try:
        item = spec.load(Path(path))
    except InputError as exc:
        if fragment not in str(exc):
            raise ConformanceError(f"{what} raised InputError without {fragment!r} in its message: {exc}") from exc
        return
    except Exception as exc:
        raise ConformanceError(
            f"{what} raised {type(exc).__name__} ({exc}); a loader must raise InputError (a sentence naming the file "
            "and what is wrong with it) for bad input."
        ) from exc
    raise ConformanceError(f"{what} loaded without an error (as {type(item).__name__}); it must raise InputError.")


# encoders --------------------------------------------------------------------------------------------------


def check_encoder(modality: str, name: str, params: dict[str, Any] | None, items: Sequence[Any]) -> ModalityEncoder:
    """Check a registered encoder on loaded ``items`` (at least two, ideally different); returns the built encoder.

    Shapes ``(B, num_tokens, output_dim)`` and dtypes, frozen by default, deterministic in
    eval mode, the same result for an item alone and in a batch, ``.to()``, save -> load.
    """
    if len(items) < 2:
        raise ConformanceError(
            "check_encoder needs at least two items, to compare a batch of one with a batch of many."
        )
    entry = get_registry().get("encoders", name, modality=modality)
    what = f"encoder {name!r} for modality {modality!r} (plugin {entry.plugin!r})"

    def build(seed: int) -> ModalityEncoder:
        return _build(entry, ModalityEncoder, what, seed, params or {})

    encoder = build(SEED)
    for attribute in ("output_dim", "num_tokens"):
        _positive_int(encoder, attribute, what)
    if encoder.modality != modality:
        raise ConformanceError(f"{what}: reports modality {encoder.modality!r}.")
    _freeze(encoder)

    def encode(module: ModalityEncoder, batch_items: Sequence[Any]) -> torch.Tensor:
        batch = module.preprocess(list(batch_items))
        _check_batch(batch, len(batch_items), f"{what}: preprocess()")
        return module(**batch)

    features = encode(encoder, items)
    _check_shape(features, (len(items), encoder.num_tokens, encoder.output_dim), "(B, num_tokens, output_dim)", what)
    _check_frozen(encoder, features, what)
    _check_deterministic(features, encode(encoder, items), what)
    for index, item in enumerate(items):
        _check_close(encode(encoder, [item]), features[index : index + 1], what, f"item {index} alone and in a batch")
    _check_moves(encoder, lambda module: encode(module, items), features, what)
    restored = _save_and_load(encoder, build, what)
    _check_close(encode(_freeze(restored), items), features, what, "features after save -> load")
    _check_reference(encoder, what)
    return encoder


# input projectors ------------------------------------------------------------------------------------------


def check_projector(
    name: str,
    params: dict[str, Any] | None = None,
    *,
    in_dim: int = 16,
    out_dim: int = 24,
    num_input_tokens: int = 16,
    batch_size: int = 3,
) -> InputProjector:
    """Check a registered input projector on random features ``(batch_size, num_input_tokens, in_dim)``.

    Shapes ``(B, num_tokens, out_dim)``, trainable by default (every parameter gets a
    gradient), deterministic in eval mode, batch of one and of many, ``.to()``, save -> load.
    Returns the built projector.
    """
    entry = get_registry().get("projectors", name)
    what = f"input projector {name!r} (plugin {entry.plugin!r})"
    sizes = {"in_dim": in_dim, "out_dim": out_dim, "num_input_tokens": num_input_tokens}

    def build(seed: int) -> InputProjector:
        return _build(entry, InputProjector, what, seed, params or {}, sizes)

    projector = build(SEED)
    for attribute, value in sizes.items():
        if getattr(projector, attribute, None) != value:
            raise ConformanceError(
                f"{what}: {attribute} is {getattr(projector, attribute, None)!r}, but the factory was given {value}."
            )
    _positive_int(projector, "num_tokens", what)
    features = torch.randn(batch_size, num_input_tokens, in_dim, generator=torch.Generator().manual_seed(SEED))
    shape = (batch_size, projector.num_tokens, out_dim)
    _check_trained_projector(projector, build, features, shape, "(B, num_tokens, out_dim)", what, "PT")
    return projector


# modality generators ---------------------------------------------------------------------------------------


def check_generator(
    modality: str,
    name: str,
    params: dict[str, Any] | None = None,
    captions: Sequence[str] = ("a red circle", "a blue square on a grey background"),
    **generate_kwargs: Any,
) -> ModalityGenerator:
    """Check a registered modality generator; returns the built generator.

    ``condition_targets(captions)`` has the generator's ``condition_spec`` shape, is frozen,
    deterministic and the same for a caption alone and in a batch; ``generate`` turns that
    conditioning into one item per row, the same items for the same torch seed;
    ``.to()``; save -> load keeps ``condition_targets``.
    """
    if len(captions) < 2:
        raise ConformanceError("check_generator needs at least two captions, to compare batches of one and of many.")
    entry = get_registry().get("generators", name, modality=modality)
    what = f"generator {name!r} for modality {modality!r} (plugin {entry.plugin!r})"

    def build(seed: int) -> ModalityGenerator:
        return _build(entry, ModalityGenerator, what, seed, params or {})

    generator = build(SEED)
    if generator.modality != modality:
        raise ConformanceError(f"{what}: reports modality {generator.modality!r}.")
    spec = getattr(generator, "condition_spec", None)
    if not isinstance(spec, ConditionSpec) or spec.num_tokens < 1 or spec.dim < 1:
        raise ConformanceError(
            f"{what}: condition_spec is {spec!r}; it must be a ConditionSpec(num_tokens, dim) of positive sizes."
        )
    _freeze(generator)
    conditioning = generator.condition_targets(list(captions))
    _check_shape(conditioning, (len(captions), spec.num_tokens, spec.dim), "(B, num_tokens, dim)", what)
    _check_frozen(generator, conditioning, what)
    _check_deterministic(conditioning, generator.condition_targets(list(captions)), what)
    for index, caption in enumerate(captions):
        alone = generator.condition_targets([caption])
        _check_close(alone, conditioning[index : index + 1], what, f"caption {index} alone and in a batch")
    with torch.no_grad():
        outputs = _generate(generator, conditioning, generate_kwargs, what)
        again = _generate(generator, conditioning, generate_kwargs, what)
        if not all(_same_item(_plain(a), _plain(b)) for a, b in zip(outputs, again, strict=True)):
            raise ConformanceError(f"{what}: generate() gave different items for the same torch seed.")
        if len(_generate(generator, conditioning[:1], generate_kwargs, what)) != 1:
            raise ConformanceError(f"{what}: generate() on a batch of one did not return one item.")
    _check_moves(generator, lambda module: module.condition_targets(list(captions)), conditioning, what)
    restored = _save_and_load(generator, build, what)
    _check_close(
        _freeze(restored).condition_targets(list(captions)), conditioning, what, "condition_targets after save -> load"
    )
    _check_reference(generator, what)
    return generator


def _generate(generator: ModalityGenerator, conditioning: torch.Tensor, kwargs: dict[str, Any], what: str) -> list:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        outputs = generator.generate(conditioning, **kwargs)
    if not isinstance(outputs, list) or len(outputs) != len(conditioning):
        found = f"{len(outputs)} items" if isinstance(outputs, list) else f"a {type(outputs).__name__}"
        raise ConformanceError(
            f"{what}: generate() on {len(conditioning)} conditionings returned {found}; it must return a list of one "
            "item per row."
        )
    return outputs


def _plain(item: Any) -> Any:
    """A generated item as an array when it is an image (PIL) or a tensor, for comparison."""
    if hasattr(item, "tobytes") and hasattr(item, "mode"):
        return np.asarray(item)
    return item


# output projectors -----------------------------------------------------------------------------------------

CONDITION_SPEC = ConditionSpec(num_tokens=6, dim=12)  # check_output_projector's default conditioning


def check_output_projector(
    name: str,
    params: dict[str, Any] | None = None,
    *,
    llm_dim: int = 32,
    num_signal_tokens: int = 4,
    condition_spec: ConditionSpec = CONDITION_SPEC,
    batch_size: int = 3,
) -> OutputProjector:
    """Check a registered output projector on random signal states ``(batch_size, num_signal_tokens, llm_dim)``.

    Shapes ``(B, condition_spec.num_tokens, condition_spec.dim)``, trainable by default (every
    parameter gets a gradient), deterministic in eval mode, batch of one and of many, ``.to()``,
    save -> load. Returns the built projector.
    """
    entry = get_registry().get("output_projectors", name)
    what = f"output projector {name!r} (plugin {entry.plugin!r})"
    sizes = {"llm_dim": llm_dim, "condition_spec": condition_spec, "num_signal_tokens": num_signal_tokens}

    def build(seed: int) -> OutputProjector:
        return _build(entry, OutputProjector, what, seed, params or {}, sizes)

    projector = build(SEED)
    for attribute, value in sizes.items():
        if getattr(projector, attribute, None) != value:
            raise ConformanceError(
                f"{what}: {attribute} is {getattr(projector, attribute, None)!r}, but the factory was given {value!r}."
            )
    states = torch.randn(batch_size, num_signal_tokens, llm_dim, generator=torch.Generator().manual_seed(SEED))
    shape = (batch_size, condition_spec.num_tokens, condition_spec.dim)
    names = "(B, condition_spec.num_tokens, condition_spec.dim)"
    _check_trained_projector(projector, build, states, shape, names, what, "output alignment")
    return projector
