"""The model spec: a validated description of which components make up an MMLLM."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, model_validator

from mmllm_sdk.errors import SpecError
from mmllm_sdk.registry import Registry, get_registry
from mmllm_sdk.training.peft import PeftSpec
from mmllm_sdk.validation import StrictModel, validate


class ComponentSpec(StrictModel):
    """One component: the registered ``name`` and the ``params`` its factory takes."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class EncoderSpec(ComponentSpec):
    trainable: bool = False  # encoders are frozen unless the spec says otherwise


class InputProjectorSpec(ComponentSpec):
    trainable: bool = True  # input projectors are what alignment trains


class LLMSpec(ComponentSpec):
    trainable: bool = False  # full fine-tuning of the LLM is opt-in
    peft: PeftSpec | None = None  # adapters on the frozen LLM: {method: lora | prefix | ln-tuning, …}

    @model_validator(mode="after")
    def _full_or_peft(self) -> LLMSpec:
        if self.trainable and self.peft is not None:
            raise ValueError(
                "set either 'trainable: true' (full fine-tuning) or 'peft' (adapters on the frozen LLM), not both"
            )
        return self


class InputSpec(StrictModel):
    """One input modality: its encoder and the projector into the LLM's embedding space."""

    encoder: EncoderSpec
    projector: InputProjectorSpec


class OutputProjectorSpec(ComponentSpec):
    trainable: bool = True  # output projectors are what decoding-side alignment trains


class GeneratorSpec(ComponentSpec):
    pass  # generators are frozen: their weights are referenced by checkpoints, never trained


class OutputSpec(StrictModel):
    """One output modality: its signal tokens, the output projector and the generator it conditions."""

    signal_tokens: int = Field(ge=1)  # k: <img_0> … <img_{k-1}>, the LLM emits them to produce this modality
    # signal states (B, k, D_llm) -> the generator's conditioning; none for a text-conditioned generator
    output_projector: OutputProjectorSpec | None = None
    generator: GeneratorSpec  # the frozen modality generator (diffusers-sd, diffusers-audioldm, a plugin's)
    train_signal_tokens: bool = True  # the signal tokens' embedding and LM-head rows train (only those rows)


class ModelSpec(StrictModel):
    """A model: an LLM backbone, any number of input modalities and, for any-to-any models, output modalities."""

    llm: LLMSpec
    inputs: dict[str, InputSpec] = Field(default_factory=dict)  # modality name -> encoder + projector
    outputs: dict[str, OutputSpec] = Field(default_factory=dict)  # modality name -> signal tokens, projector, generator
    seed: int = 0  # components built from ``config:`` are initialised from this seed, so they rebuild identically


def load_spec(path: str | os.PathLike[str]) -> ModelSpec:
    """Read a YAML (or JSON) model spec and validate it, naming the file in any error."""
    return parse_spec(read_yaml_mapping(path, "spec", "'llm' and 'inputs'"), source=str(path))


class SpecLoader(yaml.SafeLoader):
    """YAML's safe loader, reading ``1e-3`` and ``2E5`` as numbers (YAML 1.2), where YAML 1.1 reads them as strings.

    ``learning_rate: 1e-3`` is how everyone writes it; PyYAML alone would hand the Trainer the string ``"1e-3"``.
    """


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def read_yaml_mapping(path: str | os.PathLike[str], what: str, keys: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping (``keys`` says which), with ``./`` paths made absolute."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"The {what} file {str(path)!r} does not exist; pass the path of a YAML {what}.")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=SpecLoader)
    except yaml.YAMLError as exc:
        raise SpecError(f"The {what} file {str(path)!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise SpecError(
            f"The {what} file {str(path)!r} must hold a mapping with {keys}; it holds {type(data).__name__}."
        )
    return resolve_relative_paths(data, path.parent)


def resolve_relative_paths(data: Any, base: Path) -> Any:
    """Strings starting with ``./`` or ``../`` become absolute paths relative to ``base`` (the spec's folder).

    So a spec file can name weights beside it, and a checkpoint made from it loads from anywhere.
    """
    if isinstance(data, dict):
        return {key: resolve_relative_paths(value, base) for key, value in data.items()}
    if isinstance(data, list):
        return [resolve_relative_paths(value, base) for value in data]
    if isinstance(data, str) and data.startswith(("./", "../")):
        return str((base / data).resolve())
    return data


def parse_spec(data: ModelSpec | dict[str, Any], source: str = "") -> ModelSpec:
    """Validate a spec's structure, then check every name and params block against the loaded plugins.

    Nothing is built and no weight is read: this is the check that runs first.
    """
    spec = data if isinstance(data, ModelSpec) else validate(ModelSpec, data, source=source)
    check_components(spec, get_registry(), source)
    return spec


def check_components(spec: ModelSpec, registry: Registry, source: str = "") -> None:
    """Every component is registered, every modality exists and every params block fits its component."""
    where = f" in {source}" if source else ""
    _check_params(
        registry.get("llms", spec.llm.name, where=f"llm.name{where}").value, spec.llm.params, "llm.params", source
    )
    for modality, inputs in spec.inputs.items():
        registry.modality(modality, where=f"inputs.{modality}{where}")
        encoder = registry.get(
            "encoders", inputs.encoder.name, modality=modality, where=f"inputs.{modality}.encoder.name{where}"
        )
        _check_params(encoder.value, inputs.encoder.params, f"inputs.{modality}.encoder.params", source)
        projector = registry.get("projectors", inputs.projector.name, where=f"inputs.{modality}.projector.name{where}")
        _check_params(projector.value, inputs.projector.params, f"inputs.{modality}.projector.params", source)
    for modality, outputs in spec.outputs.items():
        registry.modality(modality, where=f"outputs.{modality}{where}")
        generator = registry.get(
            "generators", outputs.generator.name, modality=modality, where=f"outputs.{modality}.generator.name{where}"
        )
        _check_params(generator.value, outputs.generator.params, f"outputs.{modality}.generator.params", source)
        if outputs.output_projector is not None:
            projector = registry.get(
                "output_projectors",
                outputs.output_projector.name,
                where=f"outputs.{modality}.output_projector.name{where}",
            )
            _check_params(
                projector.value, outputs.output_projector.params, f"outputs.{modality}.output_projector.params", source
            )
        registry.signal_vocabulary(modality, where=f"outputs.{modality}{where}")


def _check_params(factory: Any, params: dict[str, Any], where: str, source: str) -> None:
    schema = getattr(factory, "Params", None)
    if schema is not None:
        validate(schema, params, where=where, source=source)
