"""The recipe spec: which recipe trains which model on which data, with which Trainer settings."""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import operator
import os
import types
import typing
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    PydanticSchemaGenerationError,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from mmllm_sdk.files import cache_root
from mmllm_sdk.spec import read_yaml_mapping
from mmllm_sdk.validation import StrictModel, validate


class DatasetSource(StrictModel):
    dataset: str  # a data source registered with register_datasets, e.g. synthetic-shapes
    params: dict[str, Any] = Field(default_factory=dict)  # the data source's params


class DataSpec(StrictModel):
    train: str | list[str] | DatasetSource  # .jsonl or .json files, or {dataset: name, params: {…}}
    eval: str | list[str] | DatasetSource | None = None
    format: Literal["auto", "messages", "llava", "captions", "preference", "unpaired"] = "auto"
    base_dir: str | None = None  # media paths are relative to this (LLaVA's image_folder); default: each file's folder
    skip_invalid: bool = False  # skip malformed records (counted, printed and saved) instead of stopping
    max_length: int | None = Field(None, ge=1)  # a longer example is an error, never cut
    # the registered metric that scores data.eval's answers (greedy) at each evaluation and at the end; default: when
    # the answers are labels (classes, counts: at most 64 values), the eval data's metric, else exact. "none": loss only
    metric: str | None = None


class CacheSpec(StrictModel):
    enabled: bool = True
    dir: str = Field(default_factory=lambda: str(cache_root() / "features"))  # $MMLLM_CACHE/features at parse time


class EarlyStopping(StrictModel):
    """Stop when the held-out metric (``training.metric_for_best_model``) has not improved for ``patience`` evaluations."""

    patience: int = Field(ge=1)  # evaluations without an improvement larger than threshold
    threshold: float = Field(0.0, ge=0)  # the smallest change that counts as an improvement


class RecipeSpec(StrictModel):
    """One training run: ``mmllm train RECIPE`` or ``mmllm_sdk.train(spec)``."""

    recipe: str  # pt | sft | dpo | a plugin's recipe
    model: str | dict[str, Any]  # a model spec (inline or a YAML path) or a checkpoint folder to continue from
    data: DataSpec
    trainable: list[str] | None = None  # component paths (globs): llm, inputs.*.encoder, inputs.*.projector
    peft: dict[str, Any] | None = None  # applied to the LLM: {method: lora | prefix | ln-tuning, …}
    training: dict[str, Any] = Field(default_factory=dict)  # transformers.TrainingArguments fields
    # component path (glob) -> its learning rate, e.g. {inputs.*.projector: 1e-3}; the rest: training.learning_rate
    learning_rates: dict[str, Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(default_factory=dict)
    cache: CacheSpec = Field(default_factory=CacheSpec)  # the on-disk cache of frozen encoder outputs
    options: dict[str, Any] = Field(default_factory=dict)  # the recipe's own options (dpo: beta)
    early_stopping: EarlyStopping | None = None  # needs data.eval; the metric: metric_for_best_model (default: score)
    packing: bool = False  # several examples per row of data.max_length tokens, each attending to itself (pt, sft)

    @model_validator(mode="after")
    def _early_stopping_needs_eval(self) -> RecipeSpec:
        if self.early_stopping is not None and self.data.eval is None:
            raise ValueError(
                "early_stopping needs held-out data to watch: add data.eval (and training.eval_strategy), "
                "or remove early_stopping"
            )
        return self

    @field_validator("training")
    @classmethod
    def _training_arguments(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        data = info.data.get("data")
        if data is not None and data.eval is not None and str(value.get("eval_strategy", "no")).lower() == "no":
            raise ValueError(
                "data.eval is set but eval_strategy is 'no' (the default), so the eval data would be read and never "
                "scored; add eval_strategy: epoch (or steps, with eval_steps: N) here, or remove data.eval"
            )
        return training_arguments(value)


def training_arguments(values: dict[str, Any]) -> dict[str, Any]:
    """``training:`` checked against TrainingArguments' fields and type hints: text that spells a number ("1e-3") is
    that number; a number field defaulting to 0 or more takes no negative value (batch sizes, accumulation: no 0)."""
    fields, checked, problems = _argument_fields(), {}, []
    if values.get("output_dir") is None:
        problems.append({"type": PydanticCustomError("missing", ""), "loc": ("output_dir",), "input": values})
    for key, value in values.items():
        if key not in fields:
            near = difflib.get_close_matches(key, sorted(fields), n=1)
            problem = "is not a TrainingArguments field" + (f"; did you mean {near[0]!r}?" if near else "")
        else:
            try:
                checked[key] = fields[key].validate_python(value)
                continue
            except ValidationError as exc:  # one message per type of a union: "… a valid string or a valid list"
                wanted = dict.fromkeys(error["msg"].removeprefix("Input should be ") for error in exc.errors())
                problem = "Input should be " + " or ".join(wanted)
        shown = f" (got {value!r:.60})" if isinstance(value, (dict, list)) else ""
        problems.append({"type": PydanticCustomError("training", problem + shown), "loc": (key,), "input": value})
    if problems:
        raise ValidationError.from_exception_data("training", problems)
    return checked


@functools.cache
def _argument_fields() -> dict[str, TypeAdapter]:
    """TrainingArguments' fields by name: a validator of a value. An enum takes its values only (transformers turns
    the text into the enum), a float finite numbers only."""
    from transformers import TrainingArguments

    hints, fields = typing.get_type_hints(TrainingArguments), {}
    for field in (f for f in dataclasses.fields(TrainingArguments) if f.init):
        hint = hints[field.name]
        options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        if enums := [o for o in options if isinstance(o, type) and issubclass(o, enum.Enum)]:
            values = tuple(member.value for e in enums for member in e)
            options = (Literal[values], *(o for o in options if o not in (str, *enums)))
        least = 1 if field.name.endswith(("batch_size", "accumulation_steps")) else 0
        least = least if type(field.default) in (int, float) and field.default >= 0 else None
        most = 2**32 - 1 if field.name.endswith("seed") else None  # numpy's seeds are 32-bit
        bounded = [
            Annotated[o, Field(ge=least, le=most, allow_inf_nan=False)] if o in (int, float) else o for o in options
        ]
        try:
            fields[field.name] = TypeAdapter(functools.reduce(operator.or_, bounded))
        except PydanticSchemaGenerationError:  # a type pydantic cannot check: passed through as it is
            fields[field.name] = TypeAdapter(Any)
    return fields


def load_recipe(path: str | os.PathLike[str]) -> RecipeSpec:
    """Read a YAML recipe; ``./`` and ``../`` paths in it are relative to the recipe file."""
    data = read_yaml_mapping(path, "recipe", "'recipe', 'model', 'data' and 'training'")
    return validate(RecipeSpec, data, source=str(path))


def parse_recipe(data: RecipeSpec | dict[str, Any] | str | os.PathLike[str]) -> RecipeSpec:
    if isinstance(data, RecipeSpec):
        return data
    return validate(RecipeSpec, data) if isinstance(data, dict) else load_recipe(data)
