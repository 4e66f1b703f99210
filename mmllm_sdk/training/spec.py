"""The recipe spec: which recipe trains which model on which data, with which Trainer settings."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import typing
from typing import Any, Literal

from pydantic import Field, TypeAdapter, ValidationError, ValidationInfo, field_validator

from mmllm_sdk.files import cache_root
from mmllm_sdk.spec import read_yaml_mapping
from mmllm_sdk.validation import StrictModel, validate


class DatasetSource(StrictModel):
    dataset: str  # a data source registered with register_datasets, e.g. synthetic-shapes
    params: dict[str, Any] = Field(default_factory=dict)  # the data source's params


class DataSpec(StrictModel):
    train: str | list[str] | DatasetSource  # .jsonl or .json files, or {dataset: name, params: {…}}
    eval: str | list[str] | DatasetSource | None = None
    format: Literal["auto", "messages", "llava", "captions", "preference"] = "auto"
    base_dir: str | None = None  # media paths are relative to this (LLaVA's image_folder); default: each file's folder
    skip_invalid: bool = False  # skip malformed records (counted, printed and saved) instead of stopping
    max_length: int | None = Field(None, ge=1)  # a longer example is an error, never cut


class CacheSpec(StrictModel):
    enabled: bool = True
    dir: str = Field(default_factory=lambda: str(cache_root() / "features"))  # $MMLLM_CACHE/features at parse time


class RecipeSpec(StrictModel):
    """One training run: ``mmllm train RECIPE`` or ``mmllm_sdk.train(spec)``."""

    recipe: str  # pt | sft | dpo | a plugin's recipe
    model: str | dict[str, Any]  # a model spec (inline or a YAML path) or a checkpoint folder to continue from
    data: DataSpec
    trainable: list[str] | None = None  # component paths (globs): llm, inputs.*.encoder, inputs.*.projector
    peft: dict[str, Any] | None = None  # applied to the LLM: {method: lora | prefix | ln-tuning, …}
    training: dict[str, Any] = Field(default_factory=dict)  # transformers.TrainingArguments fields
    cache: CacheSpec = Field(default_factory=CacheSpec)  # the on-disk cache of frozen encoder outputs
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

    hints = typing.get_type_hints(TrainingArguments)
    fields = {}
    for field in dataclasses.fields(TrainingArguments):
        kinds = set(typing.get_args(hints[field.name])) - {type(None)} or {hints[field.name]}
        if field.init and len(kinds) == 1 and kinds <= {int, float, bool}:
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
    if isinstance(data, RecipeSpec):
        return data
    return validate(RecipeSpec, data) if isinstance(data, dict) else load_recipe(data)
