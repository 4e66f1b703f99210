"""The recipe spec: which recipe trains which model on which data, with which Trainer settings."""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
import os
import typing
from typing import Any, Literal

from pydantic import Field, TypeAdapter, ValidationError, ValidationInfo, field_validator

from mmllm_sdk.errors import SpecError
from mmllm_sdk.files import cache_root
from mmllm_sdk.spec import ModelSpec, read_yaml_mapping
from mmllm_sdk.validation import StrictModel, validate


class DatasetSource(StrictModel):
    """Examples from a registered data source (``register_datasets``) instead of files."""

    dataset: str  # a registered name, e.g. synthetic-shapes
    params: dict[str, Any] = Field(default_factory=dict)  # the data source's params


class DataSpec(StrictModel):
    """Where the examples are and how to read them."""

    train: str | list[str] | DatasetSource  # .jsonl or .json files, or {dataset: name, params: {…}}
    eval: str | list[str] | DatasetSource | None = None
    format: Literal["auto", "messages", "llava", "captions", "preference"] = "auto"
    base_dir: str | None = None  # media paths are relative to this (LLaVA's image_folder); default: each file's folder
    skip_invalid: bool = False  # skip malformed records (counted, printed and saved) instead of stopping
    max_length: int | None = Field(None, ge=1)  # a longer example is an error, never cut


class CacheSpec(StrictModel):
    """The on-disk cache of frozen encoder outputs."""

    enabled: bool = True
    # default: $MMLLM_CACHE/features (~/.cache/mmllm-sdk/features), read when the spec is parsed
    dir: str = Field(default_factory=lambda: str(cache_root() / "features"))


class RecipeSpec(StrictModel):
    """One training run: ``mmllm train RECIPE`` or ``mmllm_sdk.train(spec)``."""

    recipe: str  # pt | sft | dpo | a plugin's recipe
    model: str | dict[str, Any]  # a model spec (inline or a YAML path) or a checkpoint folder to continue from
    data: DataSpec
    trainable: list[str] | None = None  # component paths (globs): llm, inputs.*.encoder, inputs.*.projector
    peft: dict[str, Any] | None = None  # applied to the LLM: {method: lora | prefix | ln-tuning, …}
    training: dict[str, Any] = Field(default_factory=dict)  # transformers.TrainingArguments fields
    cache: CacheSpec = Field(default_factory=CacheSpec)
    options: dict[str, Any] = Field(default_factory=dict)  # the recipe's own options (dpo: beta)

    @field_validator("training")
    @classmethod
    def _training_arguments(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        from transformers import TrainingArguments

        known = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
        for key in value:
            if key not in known:
                near = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f"; did you mean {near[0]!r}?" if near else "; see transformers.TrainingArguments"
                raise ValueError(f"{key!r} is not a TrainingArguments field{hint}")
        if "output_dir" not in value:
            raise ValueError("'output_dir' is required: the folder for checkpoints and the final model")
        data = info.data.get("data")
        if data is not None and data.eval is not None and str(value.get("eval_strategy", "no")).lower() == "no":
            raise ValueError(
                "data.eval is set but eval_strategy is 'no' (the default), so the eval data would be read and never "
                "scored; add eval_strategy: epoch (or steps, with eval_steps: N) here, or remove data.eval"
            )
        return {key: _scalar_argument(key, item) for key, item in value.items()}


@functools.cache
def _scalar_fields() -> dict[str, Any]:
    """TrainingArguments' number and yes/no fields, by name: their type (``float``, ``int | None`` …)."""
    from transformers import TrainingArguments

    scalars = {int, float, bool}
    hints = typing.get_type_hints(TrainingArguments)
    fields = {}
    for field in dataclasses.fields(TrainingArguments):
        kinds = set(typing.get_args(hints[field.name])) - {type(None)} or {hints[field.name]}
        if field.init and len(kinds) == 1 and kinds <= scalars:
            fields[field.name] = hints[field.name]
    return fields


def _scalar_argument(key: str, value: Any) -> Any:
    """A number or yes/no TrainingArguments field, checked and converted as pydantic does (``"1e-3"`` -> 0.001)."""
    kind = _scalar_fields().get(key)
    if kind is None:
        return value
    try:
        return TypeAdapter(kind).validate_python(value)
    except ValidationError:
        base = next(k for k in (*typing.get_args(kind), kind) if k in _WORDS)
        optional = " (or null)" if type(None) in typing.get_args(kind) else ""
        what, example = _WORDS[base]
        raise ValueError(f"{key}: {value!r} is not {what}{optional}; write e.g. {key}: {example}") from None


_WORDS = {float: ("a number", "0.001"), int: ("a whole number", "8"), bool: ("true or false", "true")}


def load_recipe(path: str | os.PathLike[str]) -> RecipeSpec:
    """Read a YAML recipe; ``./`` and ``../`` paths in it are relative to the recipe file."""
    data = read_yaml_mapping(path, "recipe", "'recipe', 'model', 'data' and 'training'")
    return validate(RecipeSpec, data, source=str(path))


def parse_recipe(data: RecipeSpec | dict[str, Any] | str | os.PathLike[str]) -> RecipeSpec:
    """A RecipeSpec from a spec, a dict or a YAML path."""
    if isinstance(data, RecipeSpec):
        return data
    if isinstance(data, dict):
        return validate(RecipeSpec, data)
    return load_recipe(data)


def component_paths(spec: ModelSpec) -> list[str]:
    """What a recipe's ``trainable:`` can name: ``llm``, each input's encoder and projector, each output's
    output projector and signal tokens (their embedding and LM-head rows)."""
    paths = ["llm"]
    for modality in spec.inputs:
        paths += [f"inputs.{modality}.encoder", f"inputs.{modality}.projector"]
    for modality, outputs in spec.outputs.items():
        if outputs.output_projector is not None:
            paths.append(f"outputs.{modality}.output_projector")
        paths.append(f"outputs.{modality}.signal_tokens")
    return paths


def with_training_overrides(
    spec: ModelSpec, trainable: list[str], peft: dict[str, Any] | None, strict: bool = True
) -> ModelSpec:
    """The model spec with each component's ``trainable`` flag set from glob patterns, and PEFT on the LLM.

    The result is what the run's checkpoints record, so they rebuild with the same trainable set.
    With ``strict`` (patterns the user wrote) a pattern that matches nothing is an error; a
    recipe's defaults may name components a model does not have (``outputs.*``).
    """
    paths = component_paths(spec)
    for pattern in trainable if strict else ():
        if not any(fnmatch.fnmatchcase(path, pattern) for path in paths):
            raise SpecError(
                f"trainable: {pattern!r} matches no component of this model; its components are {', '.join(paths)}."
            )
    data = spec.model_dump()
    chosen = {path for path in paths if any(fnmatch.fnmatchcase(path, pattern) for pattern in trainable)}
    data["llm"]["trainable"] = "llm" in chosen
    for modality, inputs in data["inputs"].items():
        inputs["encoder"]["trainable"] = f"inputs.{modality}.encoder" in chosen
        inputs["projector"]["trainable"] = f"inputs.{modality}.projector" in chosen
    for modality, outputs in data["outputs"].items():
        if outputs["output_projector"] is not None:
            outputs["output_projector"]["trainable"] = f"outputs.{modality}.output_projector" in chosen
        outputs["train_signal_tokens"] = f"outputs.{modality}.signal_tokens" in chosen
    if peft is not None:
        data["llm"]["peft"] = peft
    return validate(ModelSpec, data, where="model")
