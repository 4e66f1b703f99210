"""The plugin conformance kit: checks a plugin's tests call on its modalities, encoders, projectors and generators.

Each ``check_*`` function builds the component the way :func:`mmllm_sdk.build_model` does
(through the registry, first in skeleton mode, then for real), runs it, and raises
:class:`ConformanceError` (an ``AssertionError``, so pytest shows it as a failed test) whose
message names the component, the check and what to change. On success it returns what it
built or loaded, for further tests of the plugin's own.

What every component must do (docs/writing-plugins.md, "Testing a plugin"):

- shapes and dtypes: the contract's shapes, floating point, finite;
- frozen by default (encoders, generators): once the SDK freezes it (``requires_grad_(False)``
  and ``eval()``, as for a spec with ``trainable: false``), nothing it returns needs a gradient
  and it stays frozen through ``forward`` and ``train()``; projectors are trained by default,
  so every parameter receives a gradient;
- deterministic in eval mode: the same input gives the same output, bit for bit;
- batch of one and of many: an item gives the same result alone as inside a batch;
- moves with ``.to()``: every tensor is a parameter or a registered buffer, and the module
  runs in ``float64`` (and on CUDA when there is one) on the float32 CPU tensors its
  ``preprocess`` makes;
- survives save -> load: its state dict goes through safetensors into a freshly built
  instance (another random seed) and gives the same results.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mmllm_sdk.components import InputProjector, ModalityEncoder, ModalityGenerator
from mmllm_sdk.components.hf import skeleton_mode
from mmllm_sdk.components.modality import DIRECTORY
from mmllm_sdk.components.output_projector import ConditionSpec, OutputProjector
from mmllm_sdk.errors import InputError
from mmllm_sdk.registry import Registration, get_registry
from mmllm_sdk.validation import validate

SEED = 1234  # the seed of the first build; the save -> load check builds a second instance from SEED + 1
RTOL, ATOL = 1e-4, 1e-5  # "the same result" for an item alone and in a batch, and after save -> load
FLOAT64_RTOL, FLOAT64_ATOL = 1e-3, 1e-4  # float32 against float64 results
GARBAGE = b"\x00\xffthis is not a valid file\x00\x13\x37" * 4  # what a corrupt file of any suffix holds


class ConformanceError(AssertionError):
    """A component breaks its contract; the message names it, the check, and what to change."""


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


def _same_item(a: Any, b: Any) -> bool:
    """Whether two loaded items are equal: arrays and tensors by value, dataclasses and containers field by field."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (np.ndarray, torch.Tensor)):
        return a.shape == b.shape and bool(np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True))
    if hasattr(a, "__dataclass_fields__"):
        return all(_same_item(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_item(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_item(a[k], b[k]) for k in a)
    if hasattr(a, "tobytes") and hasattr(a, "size") and hasattr(a, "mode"):  # a PIL image
        return a.size == b.size and a.mode == b.mode and a.tobytes() == b.tobytes()
    return bool(a == b)


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


# training --------------------------------------------------------------------------------------------------


def caption_loss(model: Any, examples: Sequence[Mapping[str, Any]]) -> float:
    """The model's loss on the answers of ``examples`` (``{"messages": …}`` dicts or bare conversations), in eval
    mode without gradients: compare it before and after a PT run to see that the run aligned something."""
    conversations = [e["messages"] if isinstance(e, Mapping) else e for e in examples]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(**model.processor(conversations), supervised_only=True).loss.item()
    finally:
        model.train(was_training)


@dataclass(frozen=True)
class PTCheck:
    """What :func:`check_pt` measured: the run, and the caption loss before and after it."""

    result: Any  # the TrainResult: .model, .output_dir, .metrics
    loss_before: float
    loss_after: float


def check_pt(
    model_spec: dict[str, Any],
    data: str | os.PathLike[str] | Mapping[str, Any],
    output_dir: str | os.PathLike[str],
    *,
    trainable: Sequence[str] | None = None,
    steps: int = 24,
    learning_rate: float = 3e-2,
    batch_size: int = 4,
    min_drop: float = 0.5,
) -> PTCheck:
    """Check that a short run of the ``pt`` recipe aligns a model: it lowers the caption loss by ``min_drop``.

    ``data`` is a data file or a registered data source (``{"dataset": name, "params": {…}}``);
    ``trainable`` the recipe's trainable components (default: the recipe's, the projectors).
    Besides the loss, every tensor outside the trained components must come out of the run
    unchanged (a frozen encoder or LLM that moved is a defect). Use a tiny LLM with sharp
    logits, ``tiny_spec(..., initializer_range=0.2)``: the default one's loss barely moves.
    """
    from mmllm_sdk.model.modeling import build_model
    from mmllm_sdk.training.run import train

    recipe: dict[str, Any] = {
        "recipe": "pt",
        "model": model_spec,
        "data": {"train": dict(data) if isinstance(data, Mapping) else str(data)},
        "training": {
            "output_dir": str(output_dir),
            "per_device_train_batch_size": batch_size,
            "learning_rate": learning_rate,
            "max_steps": steps,
            "save_strategy": "no",
            "report_to": "none",
            "seed": 0,
            "use_cpu": True,
        },
    }
    if trainable is not None:
        recipe["trainable"] = list(trainable)
    result = train(recipe)
    if isinstance(data, Mapping):
        entry = get_registry().get("datasets", data["dataset"])
        examples = entry.build(dict(data.get("params", {}))).examples  # a data source gives the same examples again
    else:
        from mmllm_sdk.data.formats import read_examples

        examples = read_examples(data).examples
    start = build_model(model_spec, progress=False)
    before, after = caption_loss(start, examples), caption_loss(result.model, examples)
    if not after <= before - min_drop:
        raise ConformanceError(
            f"PT lowered the caption loss from {before:.4f} to {after:.4f}, by less than {min_drop}; check that the "
            "encoder's features depend on its input and that gradients reach the trained components (a random LLM "
            "needs initializer_range=0.2 to respond)."
        )
    trained = {name for name, p in result.model.named_parameters() if p.requires_grad}
    initial = dict(start.named_parameters())
    moved = [
        name
        for name, p in result.model.named_parameters()
        if name not in trained and name in initial and not torch.equal(p.detach(), initial[name].detach())
    ]
    if moved:
        raise ConformanceError(f"PT changed frozen tensors: {', '.join(moved[:5])}; frozen components must not train.")
    return PTCheck(result, before, after)


# discovery -------------------------------------------------------------------------------------------------


def check_discovered(
    plugin: str, distribution: str | None = None, registers: Mapping[str, Sequence[str]] | None = None
) -> dict[str, Any]:
    """Check that ``mmllm plugins --json``, in a fresh process, finds ``plugin`` through its entry point.

    ``plugin`` is the entry point's name; ``distribution`` the pip distribution that must
    provide it; ``registers`` maps kinds to names the plugin must register, as the CLI lists
    them (``{"modalities": ["imu"], "encoders": ["imu/imu-patch"]}``). ``MMLLM_LOAD_PLUGINS``
    is cleared for the child, so the default discovery is what is checked. Returns the
    plugin's row.
    """
    env = {key: value for key, value in os.environ.items() if key != "MMLLM_LOAD_PLUGINS"}
    command = [sys.executable, "-m", "mmllm_sdk.cli", "plugins", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    if done.returncode != 0:
        raise ConformanceError(f"'mmllm plugins --json' failed (exit {done.returncode}): {done.stderr.strip()}")
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    row = rows.get(plugin)
    if row is None:
        raise ConformanceError(
            f"plugin {plugin!r} is not among the plugins 'mmllm plugins' finds ({', '.join(rows)}); is the package "
            "installed (pip install -e .), and does its pyproject.toml declare it under [project.entry-points.mmllm]?"
        )
    if row["builtin"]:
        raise ConformanceError(f"plugin {plugin!r} is a built-in, not a plugin found through an entry point.")
    if distribution is not None and row["distribution"] != distribution:
        raise ConformanceError(
            f"plugin {plugin!r} comes from distribution {row['distribution']!r}, not {distribution!r}."
        )
    for kind, names in (registers or {}).items():
        missing = sorted(set(names) - set(row["registers"].get(kind, [])))
        if missing:
            raise ConformanceError(
                f"plugin {plugin!r} does not register {kind} {', '.join(missing)}; it registers {row['registers']}."
            )
    return row


# shared checks ---------------------------------------------------------------------------------------------


def _check_trained_projector(
    projector: nn.Module,
    build: Callable[[int], nn.Module],
    inputs: torch.Tensor,
    shape: tuple[int, ...],
    names: str,
    what: str,
    trained_by: str,
) -> None:
    """What a projector (input or output) must do: train by default, every parameter getting a gradient; then
    eval determinism, batch of one and of many, ``.to()`` and save -> load, on ``inputs``."""
    parameters = dict(projector.named_parameters())
    if not parameters:
        raise ConformanceError(f"{what}: has no parameters; a projector is what {trained_by} trains.")
    frozen = [n for n, p in parameters.items() if not p.requires_grad]
    if frozen:
        raise ConformanceError(f"{what}: is trained by default, but {', '.join(frozen)} do not require grad as built.")
    projector.train()
    output = projector(inputs)
    _check_shape(output, shape, names, what)
    weights = torch.randn(output.shape, generator=torch.Generator().manual_seed(SEED + 1))
    (output * weights).sum().backward()  # a random direction: a plain sum is 0 after a LayerNorm
    missing = [n for n, p in parameters.items() if p.grad is None]
    if missing:
        raise ConformanceError(
            f"{what}: {', '.join(missing)} get no gradient; every parameter must take part in forward (or be removed)."
        )
    projector.zero_grad(set_to_none=True)
    projector.eval()
    with torch.no_grad():
        output = projector(inputs)
        _check_deterministic(output, projector(inputs), what)
        for index in range(len(inputs)):
            alone = projector(inputs[index : index + 1])
            _check_close(alone, output[index : index + 1], what, f"item {index} alone and in a batch")
        # the model passes inputs on the projector's device, in its dtype (an encoder or LLM may run in another)
        _check_moves(projector, lambda module: module(inputs.to(next(module.parameters()))), output, what)
        restored = _save_and_load(projector, build, what)
        _check_close(restored.eval()(inputs), output, what, "outputs after save -> load")


def _build(
    entry: Registration,
    contract: type,
    what: str,
    seed: int,
    params: dict[str, Any],
    sizes: dict[str, Any] | None = None,
) -> Any:
    """Build a component as build_model does: params validated, a skeleton first, then the real one from ``seed``."""
    schema = getattr(entry.value, "Params", None)
    if schema is not None:
        validate(schema, params, where=f"{entry.name}.params")
    args = ((), {**sizes, "params": params}) if sizes is not None else ((params,), {})
    with skeleton_mode():
        skeleton = entry.build(*args[0], **args[1])
    on_device = sorted({t.device.type for t in _tensors(skeleton)} - {"meta"})
    if on_device:
        raise ConformanceError(
            f"{what}: in skeleton mode its factory created tensors on {', '.join(on_device)}, not on 'meta'; create "
            "parameters with nn.Module constructors or mmllm_sdk.components.hf.load_model, and read weight files only "
            "when mmllm_sdk.components.hf.is_skeleton() is false."
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        component = entry.build(*args[0], **args[1])
    if not isinstance(component, contract):
        raise ConformanceError(f"{what}: the factory returned a {type(component).__name__}, not a {contract.__name__}.")
    for attribute in ("output_dim", "num_tokens", "condition_spec"):
        if hasattr(component, attribute) and getattr(skeleton, attribute, None) != getattr(component, attribute):
            raise ConformanceError(
                f"{what}: {attribute} is {getattr(skeleton, attribute, None)!r} in skeleton mode but "
                f"{getattr(component, attribute)!r} when built; it must come from the config, not from loaded weights."
            )
    return component


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    return [*module.parameters(), *module.buffers()]


def _freeze(module: nn.Module) -> Any:
    """What the SDK does to a component whose spec says ``trainable: false``."""
    module.requires_grad_(False)
    module.eval()
    return module


def _positive_int(component: Any, attribute: str, what: str) -> None:
    value = getattr(component, attribute, None)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConformanceError(f"{what}: {attribute} is {value!r}; set it to a positive int in __init__.")


def _check_batch(batch: Any, size: int, what: str) -> None:
    if not isinstance(batch, dict) or not batch:
        raise ConformanceError(f"{what} returned a {type(batch).__name__}; it must return a non-empty dict of tensors.")
    for key, value in batch.items():
        if not isinstance(value, torch.Tensor):
            raise ConformanceError(f"{what}: {key!r} is a {type(value).__name__}, not a tensor.")
        if value.ndim == 0 or value.shape[0] != size:
            raise ConformanceError(
                f"{what}: {key!r} has shape {tuple(value.shape)} for {size} items; its first dimension must be {size}."
            )


def _check_shape(output: Any, shape: tuple[int, ...], names: str, what: str) -> None:
    if not isinstance(output, torch.Tensor):
        raise ConformanceError(f"{what}: returned a {type(output).__name__}, not a tensor {names}.")
    if tuple(output.shape) != shape:
        raise ConformanceError(f"{what}: returned shape {tuple(output.shape)}; expected {names} = {shape}.")
    if not output.is_floating_point():
        raise ConformanceError(f"{what}: returned dtype {output.dtype}; it must be floating point.")
    if not torch.isfinite(output).all():
        raise ConformanceError(f"{what}: returned {int((~torch.isfinite(output)).sum())} NaN or infinite values.")


def _check_frozen(module: nn.Module, output: torch.Tensor, what: str) -> None:
    if output.requires_grad:
        raise ConformanceError(
            f"{what}: frozen (requires_grad_(False)), its output still requires grad: it computes with a tensor that "
            "is not one of its parameters; register it as a parameter or buffer."
        )
    module.train()
    module.eval()
    trainable = [name for name, p in module.named_parameters() if p.requires_grad]
    if trainable:
        raise ConformanceError(
            f"{what}: frozen, it made {', '.join(trainable[:5])} trainable again; leave requires_grad alone."
        )


def _check_deterministic(first: torch.Tensor, second: torch.Tensor, what: str) -> None:
    if not torch.equal(first, second):
        diff = (first - second).abs().max().item()
        raise ConformanceError(
            f"{what}: is not deterministic in eval mode (two runs on the same input differ by up to {diff:.3g}); "
            "disable dropout and sampling in eval mode."
        )


def _check_close(actual: torch.Tensor, expected: torch.Tensor, what: str, check: str, float64: bool = False) -> None:
    rtol, atol = (FLOAT64_RTOL, FLOAT64_ATOL) if float64 else (RTOL, ATOL)
    actual = actual.detach().to("cpu", torch.float64)
    expected = expected.detach().to("cpu", torch.float64)
    if actual.shape != expected.shape or not torch.allclose(actual, expected, rtol=rtol, atol=atol):
        detail = (
            f"shapes {tuple(actual.shape)} and {tuple(expected.shape)}"
            if actual.shape != expected.shape
            else f"a difference of up to {(actual - expected).abs().max().item():.3g}"
        )
        raise ConformanceError(f"{what}: {check} do not match ({detail}).")


def _check_moves(
    module: nn.Module, run: Callable[[nn.Module], torch.Tensor], expected: torch.Tensor, what: str
) -> None:
    """Every tensor is a parameter or buffer, and the module runs in float64 (and on CUDA) on float32 CPU inputs."""
    for prefix, submodule in module.named_modules():
        registered = {*submodule._parameters, *submodule._buffers}
        for attribute, value in vars(submodule).items():
            if isinstance(value, torch.Tensor) and attribute not in registered:
                where = f"{prefix}.{attribute}" if prefix else attribute
                raise ConformanceError(
                    f"{what}: holds the tensor {where!r} as a plain attribute, which .to() does not move; register it "
                    f"with register_buffer({attribute!r}, …) (persistent=False if it is not a weight)."
                )
    moved = copy.deepcopy(module).to(torch.float64)
    try:
        output = run(moved)
    except RuntimeError as exc:
        raise ConformanceError(
            f"{what}: after .to(torch.float64) it fails ({exc}); cast inputs to the weights' dtype and device in "
            "forward, as the model passes them in float32."
        ) from exc
    if output.dtype != torch.float64:
        raise ConformanceError(
            f"{what}: after .to(torch.float64) it returned {output.dtype}; cast inputs to the weights' dtype in forward."
        )
    _check_close(output, expected, what, "float64 and float32 results", float64=True)
    if torch.cuda.is_available():
        on_gpu = run(copy.deepcopy(module).to("cuda"))
        _check_close(on_gpu, expected, what, "CUDA and CPU results", float64=True)


def _save_and_load(module: nn.Module, build: Callable[[int], nn.Module], what: str) -> nn.Module:
    """The module's state dict through a safetensors file into a fresh instance built from another seed."""
    from safetensors.torch import load_model, save_model

    fresh = build(SEED + 1)
    with tempfile.TemporaryDirectory(prefix="mmllm-conformance-") as folder:
        path = os.path.join(folder, "state.safetensors")
        save_model(module, path)
        try:
            load_model(fresh, path, strict=True)
        except Exception as exc:
            raise ConformanceError(
                f"{what}: its state dict does not load back into a freshly built instance ({type(exc).__name__}: "
                f"{exc}); the factory must rebuild the same parameters from the same params."
            ) from exc
    return fresh


def _check_reference(component: Any, what: str) -> None:
    reference = component.reference() if hasattr(component, "reference") else {}
    try:
        json.dumps(reference)
    except TypeError as exc:
        raise ConformanceError(f"{what}: reference() must return JSON data (a checkpoint records it): {exc}") from exc


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
