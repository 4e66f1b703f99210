"""What every conformance check shares: the error, the seeds and tolerances, building a component as
build_model does, and the checks of shapes, freezing, determinism, ``.to()`` and save -> load."""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from mmllm_sdk.components.hf import skeleton_mode
from mmllm_sdk.registry import Registration
from mmllm_sdk.validation import validate

SEED = 1234  # the seed of the first build; the save -> load check builds a second instance from SEED + 1
RTOL, ATOL = 1e-4, 1e-5  # "the same result" for an item alone and in a batch, and after save -> load
FLOAT64_RTOL, FLOAT64_ATOL = 1e-3, 1e-4  # float32 against float64 results
GARBAGE = b"\x00\xffthis is not a valid file\x00\x13\x37" * 4  # what a corrupt file of any suffix holds


class ConformanceError(AssertionError):
    """A component breaks its contract; the message names it, the check, and what to change."""


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
