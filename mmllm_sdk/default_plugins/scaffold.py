"""``mmllm new-plugin``: a new modality plugin package from the SDK's cookiecutter template."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from mmllm_sdk.errors import SpecError

TEMPLATE = "cookiecutter-mmllm-plugin"
PREFIX = "mmllm-"  # `mmllm new-plugin mmllm-thermal` and `mmllm new-plugin thermal` make the same package
_MODALITY = re.compile(r"^[a-z][a-z0-9_-]*$")


def template_path() -> Path:
    """The cookiecutter template's folder: packaged with the SDK, or ``templates/`` of a source checkout."""
    here = Path(__file__).resolve().parent.parent  # the mmllm_sdk package
    for candidate in (here / "templates" / TEMPLATE, here.parent / "templates" / TEMPLATE):
        if (candidate / "cookiecutter.json").is_file():
            return candidate
    raise SpecError(
        f"The plugin template {TEMPLATE!r} is not installed with this copy of mmllm-sdk (looked in "
        f"{here / 'templates'} and {here.parent / 'templates'}); reinstall mmllm-sdk, or run cookiecutter on "
        "templates/cookiecutter-mmllm-plugin of a source checkout."
    )


def modality_name(name: str) -> str:
    """The modality a plugin NAME stands for: ``thermal`` for ``thermal`` or ``mmllm-thermal``."""
    modality = name[len(PREFIX) :] if name.startswith(PREFIX) else name
    if not _MODALITY.match(modality):
        raise SpecError(
            f"new-plugin: {name!r} cannot name a modality; use lower case letters, digits, '-' or '_', starting "
            "with a letter, e.g. 'thermal' (the package becomes mmllm-thermal)."
        )
    return modality


def new_plugin(
    name: str,
    output_dir: str | os.PathLike[str] = ".",
    *,
    no_input: bool = False,
    context: dict[str, Any] | None = None,
) -> Path:
    """Render the plugin template for modality ``name`` into ``output_dir``; returns the new package's folder.

    With ``no_input`` every other template variable takes its default (the package
    ``mmllm-NAME``, the encoder ``NAME-patch``, the dataset ``NAME-synthetic``, 4 channels);
    otherwise cookiecutter asks for each. ``context`` overrides variables
    (``{"channels": "6"}``). An existing folder is never overwritten.
    """
    from cookiecutter.exceptions import CookiecutterException, FailedHookException, OutputDirExistsException
    from cookiecutter.main import cookiecutter

    modality = modality_name(name)
    template = template_path()
    known = json.loads((template / "cookiecutter.json").read_text(encoding="utf-8"))
    unknown = sorted(set(context or {}) - set(known))
    if unknown:
        raise SpecError(
            f"new-plugin: the template has no variable {', '.join(map(repr, unknown))}; its variables are "
            f"{', '.join(sorted(known))}."
        )
    extra = {"modality": modality, **(context or {})}
    output = Path(output_dir)
    quiet = logging.getLogger("cookiecutter")  # it logs a traceback for a failed hook; ours says what failed
    level, quiet.level = quiet.level, logging.CRITICAL
    try:
        folder = cookiecutter(
            str(template_path()),
            no_input=no_input,
            extra_context=extra,
            output_dir=str(output),
            overwrite_if_exists=False,
        )
    except OutputDirExistsException as exc:
        raise SpecError(
            f"new-plugin: {str(exc).removeprefix('Error: ')}; the template never overwrites a folder. Pick another name or --output-dir, or move "
            "the folder away."
        ) from exc
    except FailedHookException as exc:
        raise SpecError(
            "new-plugin: the template refused these values (its message is above); nothing was written."
        ) from exc
    except CookiecutterException as exc:
        raise SpecError(f"new-plugin: the template could not be rendered: {type(exc).__name__}: {exc}") from exc
    finally:
        quiet.level = level
    return Path(folder)
