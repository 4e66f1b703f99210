"""Strict pydantic models and the translation of their errors into sentences with field paths."""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from mmllm_sdk.errors import SpecError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """A pydantic model that rejects unknown fields (a typo fails instead of being ignored)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def validate(model: type[M], data: Any, where: str = "", source: str = "") -> M:
    """Validate ``data`` against ``model``, raising :class:`SpecError` with one line per problem."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise SpecError(describe_validation_error(error, model, where, source)) from None


def describe_validation_error(error: ValidationError, model: type[BaseModel], where: str = "", source: str = "") -> str:
    """One line per problem: ``field.path: what is wrong (got value)``, plus the fields that would fit."""
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in (where, *item["loc"]) if part != "")
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            current: Any = model
            for part in item["loc"][:-1]:
                current = _step(current, part)  # None once the path leaves the models: no fields
            found = _model_in(current)
            allowed = ", ".join(found.model_fields) if found is not None else ""
            message = "is not a known field" + (f"; the fields here are: {allowed}" if allowed else "")
        elif item["type"] == "missing":
            message = "is required but missing"
        elif item["type"] == "value_error":
            message = message.removeprefix("Value error, ")
        got = item.get("input")
        shown = "" if item["type"] == "missing" or isinstance(got, (dict, list)) else f" (got {got!r})"
        lines.append(f"  {path or '(top level)'}: {message}{shown}")
    origin = f" in {source}" if source else ""
    return f"The spec{origin} is not valid:\n" + "\n".join(lines)


def _step(annotation: Any, part: Any) -> Any:
    found = _model_in(annotation)
    if found is not None and isinstance(part, str) and part in found.model_fields:
        return found.model_fields[part].annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (dict, Mapping) and len(args) == 2:
        return args[1]
    if origin in (list, tuple) and args:
        return args[0]
    return next((stepped for arg in args if (stepped := _step(arg, part)) is not None), None)  # unions


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (dict, Mapping, list, tuple):
        return None
    return next((found for arg in typing.get_args(annotation) if (found := _model_in(arg)) is not None), None)
