"""The model spec: a validated description of which components make up an MMLLM."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from mmllm_sdk.errors import SpecError
from mmllm_sdk.files import MAX_DEPTH, check_depth, read_text
from mmllm_sdk.registry import Registry, get_registry
from mmllm_sdk.validation import StrictModel, validate


class PeftSpec(StrictModel):
    """``llm.peft``: the peft method that trains the LLM backbone, and its settings (each method's own only)."""

    method: Literal["lora", "prefix", "ln-tuning"]
    # lora: a low-rank update B·A beside each targeted linear layer (B starts at zero)
    r: int = Field(default=8, gt=0)  # rank of the update
    alpha: int = Field(default=16, gt=0)  # the update is scaled by alpha / r
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)  # dropout on the input of the update
    # lora: layer names, or "all-linear" (every linear layer except the LM head);
    # ln-tuning: norm layer names, or None for peft's default norms of the architecture
    target_modules: list[str] | Literal["all-linear"] | None = None
    # prefix: trainable key/value vectors prepended to every attention layer
    num_virtual_tokens: int = Field(default=16, gt=0)

    FIELDS: ClassVar[dict[str, tuple[str, ...]]] = {
        "lora": ("r", "alpha", "dropout", "target_modules"),
        "prefix": ("num_virtual_tokens",),
        "ln-tuning": ("target_modules",),
    }

    @model_validator(mode="after")
    def _fields_of_the_method(self) -> PeftSpec:
        own = self.FIELDS[self.method]
        for name in sorted(self.model_fields_set - {"method"} - set(own)):
            users = [method for method, fields in self.FIELDS.items() if name in fields]
            raise ValueError(
                f"'{name}' is a setting of method {' and '.join(map(repr, users))}, not of method {self.method!r}; "
                f"method {self.method!r} takes {', '.join(own)}: remove '{name}' or change 'method'"
            )
        if self.target_modules == []:
            raise ValueError("'target_modules' is empty; name at least one layer or leave it out for the default")
        if self.method == "ln-tuning" and self.target_modules == "all-linear":
            raise ValueError(
                "'target_modules: all-linear' is for method 'lora'; for 'ln-tuning' name the norm layers "
                "(for example [input_layernorm, post_attention_layernorm]) or leave it out for peft's default"
            )
        if self.method == "lora" and self.target_modules is None:
            self.target_modules = "all-linear"
        return self

    @model_serializer(mode="wrap")
    def _dump_own_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Only the chosen method's fields, so a dumped spec validates again (checkpoints store it)."""
        data = handler(self)
        return {name: value for name, value in data.items() if name == "method" or name in self.FIELDS[self.method]}

    def peft_config(self) -> Any:
        """The peft config for a causal LM (``LoraConfig``, ``PrefixTuningConfig`` or ``LNTuningConfig``)."""
        from peft import LNTuningConfig, LoraConfig, PrefixTuningConfig

        if self.method == "lora":
            lora = {"r": self.r, "lora_alpha": self.alpha, "lora_dropout": self.dropout}
            return LoraConfig(task_type="CAUSAL_LM", target_modules=self.target_modules, **lora)
        if self.method == "prefix":
            return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=self.num_virtual_tokens)
        return LNTuningConfig(task_type="CAUSAL_LM", target_modules=self.target_modules)


# where each component sits in a spec, by modality: how errors, trainable: patterns and checkpoints name it
LLM, ENCODER, PROJECTOR = "llm", "inputs.{}.encoder", "inputs.{}.projector"
OUTPUT_PROJECTOR, SIGNAL_TOKENS, GENERATOR = (
    "outputs.{}.output_projector",
    "outputs.{}.signal_tokens",
    "outputs.{}.generator",
)


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
    seed: int = Field(0, ge=0, lt=2**32)  # ``config:`` components are initialised from it: they rebuild identically


def load_spec(path: str | os.PathLike[str]) -> ModelSpec:
    """Read a YAML (or JSON) model spec and validate it, naming the file in any error."""
    return parse_spec(read_yaml_mapping(path, "spec", "'llm' and 'inputs'"), source=str(path))


class SpecLoader(yaml.SafeLoader):
    """YAML's safe loader, reading ``1e-3`` as a number (YAML 1.2) where PyYAML (YAML 1.1) reads a string."""


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)
MAX_YAML_BYTES = 16 << 20  # a spec or recipe file is text a person writes: 16 MB is far more than any needs


def read_yaml_mapping(path: str | os.PathLike[str], what: str, keys: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping (``keys`` says which), with ``./`` paths made absolute. Only a regular
    UTF-8 file of at most 16 MB is read; nesting and alias expansion are bounded (``files.check_depth``)."""
    path, shown = Path(path), f"The {what} file {str(path)!r}"
    if not path.exists():
        raise SpecError(f"{shown} does not exist; pass the path of a YAML {what}.")
    text = read_text(path, f"The {what} file", limit=MAX_YAML_BYTES, error=SpecError)
    try:
        data = yaml.load(text, Loader=SpecLoader)
    except yaml.YAMLError as exc:
        raise SpecError(f"{shown} is not valid YAML: {exc}") from exc
    except RecursionError:  # deeper than PyYAML's recursive parser goes
        raise SpecError(f"{shown} nests lists and mappings more than {MAX_DEPTH} levels deep; flatten it.") from None
    check_depth(data, shown, error=SpecError)
    if not isinstance(data, dict):
        raise SpecError(f"{shown} must hold a mapping with {keys}; it holds {type(data).__name__}.")
    return resolve_relative_paths(data, path.parent)


def resolve_relative_paths(data: Any, base: Path) -> Any:
    """Strings starting with ``./`` or ``../`` become absolute paths relative to ``base`` (the spec's folder)."""
    if isinstance(data, dict):
        return {key: resolve_relative_paths(value, base) for key, value in data.items()}
    if isinstance(data, list):
        return [resolve_relative_paths(value, base) for value in data]
    if isinstance(data, str) and data.startswith(("./", "../")):
        return str((base / data).resolve())
    return data


def parse_spec(data: ModelSpec | dict[str, Any], source: str = "") -> ModelSpec:
    """Validate a spec's structure, then every name and params block against the loaded plugins (nothing is built)."""
    spec = data if isinstance(data, ModelSpec) else validate(ModelSpec, data, source=source)
    check_components(spec, get_registry(), source)
    return spec


def check_components(spec: ModelSpec, registry: Registry, source: str = "") -> None:
    """Every component is registered, every modality exists and every params block fits its component."""
    where = f" in {source}" if source else ""

    def check(kind: str, component: ComponentSpec, path: str, modality: str | None = None) -> None:
        factory = registry.get(kind, component.name, modality=modality, where=f"{path}.name{where}").value
        schema = getattr(factory, "Params", None)
        if schema is not None:
            validate(schema, component.params, where=f"{path}.params", source=source)

    check("llms", spec.llm, "llm")
    for modality, inputs in spec.inputs.items():
        registry.modality(modality, where=f"inputs.{modality}{where}")
        check("encoders", inputs.encoder, ENCODER.format(modality), modality)
        check("projectors", inputs.projector, PROJECTOR.format(modality))
    for modality, outputs in spec.outputs.items():
        registry.modality(modality, where=f"outputs.{modality}{where}")
        check("generators", outputs.generator, GENERATOR.format(modality), modality)
        if outputs.output_projector is not None:
            check("output_projectors", outputs.output_projector, OUTPUT_PROJECTOR.format(modality))
        registry.signal_vocabulary(modality, where=f"outputs.{modality}{where}")
