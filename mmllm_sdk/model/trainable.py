"""What trains: one list of component paths, and the one function that freezes and unfreezes a model by them.

Every way of choosing what trains goes through :func:`set_trainable`: the model spec's ``trainable:`` flags
(:func:`spec_patterns`), a recipe's defaults, a recipe's own ``trainable:`` list, and the tensors a checkpoint carries
from an earlier stage (frozen now, still saved: ``carried``). Encoders, the LLM and generators stay frozen unless
chosen; adapters on the LLM (``llm.peft``) always train; a frozen component also stays in eval mode.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from mmllm_sdk.errors import SpecError
from mmllm_sdk.model.peft import adapter_parameter_names
from mmllm_sdk.model.signals import signal_row_parameters
from mmllm_sdk.spec import ENCODER, LLM, OUTPUT_PROJECTOR, PROJECTOR, SIGNAL_TOKENS, ModelSpec
from mmllm_sdk.validation import validate

if TYPE_CHECKING:
    from mmllm_sdk.model.modeling import MMLLM


def _flags(data: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], str]]:
    """Each trainable part of a model spec's data (``spec.model_dump()``): its component path, and the dict and key
    of its flag. These are what ``trainable:`` can name: ``llm``, each input's encoder and projector, each output's
    output projector and signal tokens (their embedding and LM-head rows). Generators are never trained."""
    yield LLM, data["llm"], "trainable"
    for modality, inputs in data["inputs"].items():
        yield ENCODER.format(modality), inputs["encoder"], "trainable"
        yield PROJECTOR.format(modality), inputs["projector"], "trainable"
    for modality, outputs in data["outputs"].items():
        if outputs["output_projector"] is not None:
            yield OUTPUT_PROJECTOR.format(modality), outputs["output_projector"], "trainable"
        yield SIGNAL_TOKENS.format(modality), outputs, "train_signal_tokens"


def component_paths(spec: ModelSpec) -> list[str]:
    """What ``trainable:`` can name, in the spec's order (see :func:`_flags`)."""
    return [path for path, _, _ in _flags(spec.model_dump())]


def spec_patterns(spec: ModelSpec) -> list[str]:
    """The component paths a model spec's ``trainable`` flags (and ``train_signal_tokens``) choose."""
    return [path for path, holder, flag in _flags(spec.model_dump()) if holder[flag]]


def select(spec: ModelSpec, patterns: Iterable[str], *, strict: bool = False) -> set[str]:
    """The component paths matched by glob ``patterns``; with ``strict`` (patterns a user wrote) a pattern that
    matches nothing is an error (a recipe's defaults may name parts a model lacks, ``outputs.*``)."""
    paths = component_paths(spec)
    chosen = set()
    for pattern in patterns:
        matched = {path for path in paths if fnmatch.fnmatchcase(path, pattern)}
        if strict and not matched:
            raise SpecError(
                f"trainable: {pattern!r} matches no component of this model; its components are {', '.join(paths)}."
            )
        chosen |= matched
    return chosen


def with_trainable(spec: ModelSpec, chosen: set[str], peft: dict[str, Any] | None = None) -> ModelSpec:
    """The model spec whose flags say ``chosen`` (and ``llm.peft``): what a run's checkpoints record."""
    data = spec.model_dump()
    for path, holder, flag in _flags(data):
        holder[flag] = path in chosen
    if peft is not None:
        data["llm"]["peft"] = peft
    return validate(ModelSpec, data, where="model")


def set_trainable(model: MMLLM, patterns: Iterable[str], *, strict: bool = False, carried: Iterable[str] = ()) -> None:
    """Train exactly the components ``patterns`` choose (plus any LLM adapters); freeze the rest, in eval mode.

    ``carried`` names parameters loaded from a checkpoint of an earlier stage: frozen unless chosen now, and saved
    with the next checkpoint all the same. ``model.spec``'s flags are updated to the choice, so a checkpoint rebuilds
    with the same trainable set.
    """
    chosen = select(model.spec, patterns, strict=strict)
    model.spec = with_trainable(model.spec, chosen)  # llm.peft carried over as it is
    model.frozen = set(model.components()) - chosen
    for path, module in model.components().items():
        module.requires_grad_(path in chosen)
        if path in model.frozen:
            module.eval()
    adapters = adapter_parameter_names(model.llm)
    if adapters:  # after the LLM is frozen: the adapters stay trainable, and train mode reaches them (dropout)
        for name, parameter in model.llm.named_parameters():
            parameter.requires_grad_(parameter.requires_grad or name in adapters)
        model.frozen.discard(LLM)
    rows = any(path.endswith(".signal_tokens") for path in chosen)
    for parameter in signal_row_parameters(model.llm):  # only these rows of the frozen tables train
        parameter.requires_grad_(rows)
    names = {name for name, parameter in model.named_parameters() if not parameter.requires_grad}
    model.carried_parameters = set(model.carried_parameters | set(carried)) & names
