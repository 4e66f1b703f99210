"""Building: every component a spec names, made through its plugin, checked against the others; opening a checkpoint.

Components are built in a skeleton first (configs only, weights on ``meta``) so that dimension errors surface before
any weight is read, then for real, random weights drawn from (spec seed, component path). They are handed to the
model class (:class:`~mmllm_sdk.model.modeling.MMLLM`), which this module does not import.
"""

from __future__ import annotations

import contextlib
import os
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn
from tqdm.auto import tqdm

from mmllm_sdk.components.encoder import ModalityEncoder
from mmllm_sdk.components.generator import ModalityGenerator, TextConditionedGenerator
from mmllm_sdk.components.hf import reuse_loaded_files, skeleton_mode
from mmllm_sdk.components.llm import LLMBackbone
from mmllm_sdk.components.modality import ModalitySpec
from mmllm_sdk.components.output_projector import ConditionSpec, OutputProjector
from mmllm_sdk.components.projector import InputProjector
from mmllm_sdk.errors import CheckpointError, DimensionError, PluginError, SpecError
from mmllm_sdk.model.checkpoint import MANIFEST, WEIGHTS, check_plugins, read_manifest, read_trained
from mmllm_sdk.model.heads import TEXT_SIGNAL_TOKENS
from mmllm_sdk.registry import Registration, get_registry
from mmllm_sdk.spec import ENCODER, GENERATOR, LLM, OUTPUT_PROJECTOR, PROJECTOR, ModelSpec, parse_spec
from mmllm_sdk.validation import validate

M = TypeVar("M")


@dataclass
class Parts:
    """The built components of a model, and what the model needs to know of the plugins that made them."""

    llm: LLMBackbone
    modalities: dict[str, ModalitySpec] = field(default_factory=dict)  # input and output modalities' specs
    encoders: dict[str, ModalityEncoder] = field(default_factory=dict)
    input_projectors: dict[str, InputProjector] = field(default_factory=dict)
    signal_tokens: dict[str, list[str]] = field(default_factory=dict)  # output modality -> <img_0> … <img_{k-1}>
    generators: dict[str, nn.Module] = field(default_factory=dict)
    output_projectors: dict[str, OutputProjector] = field(default_factory=dict)  # embedding-conditioned outputs only
    sources: dict[str, Registration] = field(default_factory=dict)  # component path -> its plugin registration


def build(
    spec: ModelSpec | dict[str, Any],
    compose: Callable[[ModelSpec, Parts], M],
    *,
    skeleton: bool = False,
    progress: bool = True,
    trust_remote_code: bool = False,
) -> M:
    """``compose(spec, parts)`` in a skeleton, then for real; ``skeleton=True`` returns the skeleton (``mmllm
    validate`` counts its parameters). Files read in the skeleton pass (configs, tokenizers) are not read again.
    A spec that asks for ``trust_remote_code`` is refused unless ``trust_remote_code=True`` is passed too."""
    spec = parse_spec(spec)
    asks = remote_code(spec.model_dump())
    if asks and not trust_remote_code:
        raise SpecError(
            f"The spec sets {', '.join(asks)}: the component would run Python code from its model folder or hub "
            "repository. That is refused unless you pass trust_remote_code=True (--trust-remote-code) for this call, "
            "after reading that code."
        )
    with reuse_loaded_files():
        with skeleton_mode():
            parts = assemble(spec, progress=False)
            check_fits(parts)
            model = compose(spec, parts)
        if skeleton:
            return model
        return compose(spec, assemble(spec, progress=progress))


def assemble(spec: ModelSpec, progress: bool = True) -> Parts:
    """Build every component of ``spec`` through its plugin and check that they fit together."""
    registry = get_registry()
    outputs_with_projector = sum(o.output_projector is not None for o in spec.outputs.values())
    steps = 1 + 2 * len(spec.inputs) + len(spec.outputs) + outputs_with_projector
    bar = tqdm(total=steps, desc="Building model", unit="component", disable=not progress)
    sources: dict[str, Registration] = {}

    def make(path: str, entry: Registration, contract: type | tuple[type, ...], *args: Any, **kwargs: Any) -> Any:
        bar.set_postfix_str(f"{path}: {entry.name}")
        sources[path] = entry
        with seeded(spec.seed, path):
            try:
                component = entry.build(*args, **kwargs)
            except SpecError as exc:  # say where in the spec: "inputs.image.encoder: hf-clip-vision.params.… is …"
                raise type(exc)(f"{path}: {exc}") from exc
        if not isinstance(component, contract):
            names = " or ".join(c.__name__ for c in (contract if isinstance(contract, tuple) else (contract,)))
            raise PluginError(
                f"Plugin {entry.plugin!r} built the {entry.label} as a {type(component).__name__}; it must return a {names}."
            )
        if entry.modality is not None and component.modality != entry.modality:  # encoders and generators
            raise PluginError(f"Plugin {entry.plugin!r}: the {entry.label} reports modality {component.modality!r}.")
        bar.update(1)
        return component

    parts = Parts(llm=make(LLM, registry.get("llms", spec.llm.name), LLMBackbone, spec.llm.params), sources=sources)
    hidden = parts.llm.hidden_size
    for modality, inputs in spec.inputs.items():
        parts.modalities[modality] = registry.modality(modality)
        entry = registry.get("encoders", inputs.encoder.name, modality=modality)
        encoder = make(ENCODER.format(modality), entry, ModalityEncoder, inputs.encoder.params)
        if encoder.num_tokens < 1 or encoder.output_dim < 1:
            raise SpecError(
                f"{ENCODER.format(modality)} ({inputs.encoder.name}) gives {encoder.num_tokens} features of "
                f"{encoder.output_dim} values per item; check its params (an image smaller than a patch gives none)."
            )
        entry = registry.get("projectors", inputs.projector.name)
        sizes = {"in_dim": encoder.output_dim, "out_dim": hidden, "num_input_tokens": encoder.num_tokens}
        projector = make(PROJECTOR.format(modality), entry, InputProjector, params=inputs.projector.params, **sizes)
        if projector.out_dim != hidden:
            raise DimensionError(
                f"inputs.{modality}.projector ({inputs.projector.name}) outputs {projector.out_dim} dims but the LLM "
                f"embeds in {hidden}; the projector must map to the LLM's hidden size."
            )
        parts.encoders[modality], parts.input_projectors[modality] = encoder, projector
    for modality, outputs in spec.outputs.items():
        parts.modalities[modality] = registry.modality(modality)
        parts.signal_tokens[modality] = registry.signal_vocabulary(modality, outputs.signal_tokens).tokens
        entry = registry.get("generators", outputs.generator.name, modality=modality)
        contracts = (ModalityGenerator, TextConditionedGenerator)
        generator = make(GENERATOR.format(modality), entry, contracts, outputs.generator.params)
        parts.generators[modality] = generator
        if isinstance(generator, TextConditionedGenerator):  # it takes the text between two signal tokens, no projector
            if outputs.signal_tokens != TEXT_SIGNAL_TOKENS:
                raise SpecError(
                    f"outputs.{modality}.signal_tokens is {outputs.signal_tokens}, but the generator "
                    f"{outputs.generator.name!r} is conditioned on text: it needs {TEXT_SIGNAL_TOKENS} signal tokens, "
                    "one opening and one closing the text."
                )
            if outputs.output_projector is not None:
                raise SpecError(
                    f"outputs.{modality}.output_projector is set, but the generator {outputs.generator.name!r} is "
                    "conditioned on the text between its signal tokens, not on their states; remove output_projector."
                )
            continue
        condition = getattr(generator, "condition_spec", None)  # conditioned on embeddings, which a projector makes
        if not (isinstance(condition, ConditionSpec) and condition.num_tokens >= 1 and condition.dim >= 1):
            raise PluginError(
                f"Plugin {entry.plugin!r}: the {entry.label} reports condition_spec {condition!r}; a generator "
                "conditioned on embeddings needs a ConditionSpec of at least one token of at least one value, which "
                "an output projector can produce."
            )
        if outputs.output_projector is None:
            raise SpecError(
                f"outputs.{modality}.output_projector is missing: the generator {outputs.generator.name!r} is "
                f"conditioned on {condition}, which an output projector (mlp, transformer-queries) "
                "makes from the signal states."
            )
        entry = registry.get("output_projectors", outputs.output_projector.name)
        sizes = {"llm_dim": hidden, "condition_spec": condition, "num_signal_tokens": outputs.signal_tokens}
        params = outputs.output_projector.params
        projector = make(OUTPUT_PROJECTOR.format(modality), entry, OutputProjector, params=params, **sizes)
        if projector.condition_spec != condition:
            raise DimensionError(
                f"outputs.{modality}.output_projector ({outputs.output_projector.name}) produces "
                f"{projector.condition_spec} but the generator {outputs.generator.name!r} takes "
                f"{condition}; the projector must take its shape from the condition_spec it is given."
            )
        parts.output_projectors[modality] = projector
    bar.close()
    return parts


def remote_code(data: Any, path: str = "") -> list[str]:
    """The paths where a spec (or its params, at any depth) sets ``trust_remote_code`` to anything but false."""
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    found = []
    for key, value in items:
        where = f"{path}.{key}" if path else str(key)
        if key == "trust_remote_code" and value and str(value).lower() not in ("false", "no", "off", "0"):
            found.append(f"{where}: {value!r}")
        found += remote_code(value, where)
    return found


def check_fits(parts: Parts) -> None:
    """In the skeleton: refuse what could never run here, with the numbers: more tokens per item than the LLM has
    positions, or parameters and buffers that need more bytes than the machine's memory."""
    positions = parts.llm.max_positions
    for modality, projector in parts.input_projectors.items():
        if positions is not None and projector.num_tokens > positions:
            raise DimensionError(
                f"{PROJECTOR.format(modality)} gives {projector.num_tokens:,} tokens per {modality}, but the LLM has "
                f"positions for {positions:,}; pick fewer tokens (the projector's or encoder's params)."
            )
    modules = {LLM: parts.llm} | {ENCODER.format(m): e for m, e in parts.encoders.items()}
    modules |= {PROJECTOR.format(m): p for m, p in parts.input_projectors.items()}
    modules |= {GENERATOR.format(m): g for m, g in parts.generators.items()}
    modules |= {OUTPUT_PROJECTOR.format(m): p for m, p in parts.output_projectors.items()}
    sizes = {
        path: sum(t.numel() * t.element_size() for t in (*m.parameters(), *m.buffers())) for path, m in modules.items()
    }
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if sum(sizes.values()) > memory:
        largest = ", ".join(f"{path} {size / 1e9:,.1f} GB" for path, size in sorted(sizes.items(), key=lambda i: -i[1]))
        raise SpecError(
            f"The model's parameters and buffers need {sum(sizes.values()) / 1e9:,.1f} GB ({largest}), more than this "
            f"machine's {memory / 1e9:,.1f} GB of memory; make the largest component smaller in the spec."
        )


@contextlib.contextmanager
def seeded(seed: int, path: str) -> Iterator[None]:
    """Random init from (spec seed, component path): the same spec rebuilds the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1_000_003 + zlib.crc32(path.encode()))
        yield


def open_checkpoint(
    directory: str | os.PathLike[str], trust_remote_code: bool = False
) -> tuple[ModelSpec, dict[str, torch.Tensor], str, Callable[[dict[str, nn.Module]], None]]:
    """A checkpoint's spec (checked against the installed plugins), its trained tensors (safetensors only),
    where they come from, and a check that warns when a frozen base has changed since it was saved.
    A checkpoint whose spec asks for ``trust_remote_code`` is refused unless ``trust_remote_code=True``."""
    directory = Path(directory)
    data = read_manifest(directory)
    asks = remote_code(data["spec"])
    if asks and not trust_remote_code:
        raise CheckpointError(
            f"The checkpoint {str(directory)!r} asks to run Python code from the model folders or hub repositories "
            f"of its components ({', '.join(asks)} in {MANIFEST}). Loading never runs code from a checkpoint unless you "
            "pass trust_remote_code=True (--trust-remote-code) for this call, after reading that code."
        )
    check_plugins(data)
    spec = validate(ModelSpec, data["spec"], source=str(directory / MANIFEST))

    def check_bases(components: dict[str, nn.Module]) -> None:
        for path, module in components.items():
            saved = data.get("components", {}).get(path, {}).get("base", {})
            now = module.reference() if hasattr(module, "reference") else {}
            if saved.get("sha256") and now.get("sha256") and saved["sha256"] != now["sha256"]:
                warnings.warn(
                    f"The frozen base of {path} ({now.get('model')}) has changed since the checkpoint was saved "
                    f"(sha256 {saved['sha256'][:12]}… then, {now['sha256'][:12]}… now); outputs may differ.",
                    stacklevel=4,
                )

    return spec, read_trained(directory), str(directory / WEIGHTS), check_bases
