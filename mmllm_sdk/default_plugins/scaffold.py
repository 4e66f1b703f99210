"""``mmllm new-plugin``: a new modality plugin package from the SDK's cookiecutter template.

Every value is checked before anything is written (names must be names: no path can leave the output folder), the
package is rendered into a hidden staging folder, each generated file is parsed, and only then is the package moved
into place. An existing package folder is replaced only when asked (``overwrite``).
"""

from __future__ import annotations

import configparser
import json
import keyword
import logging
import os
import re
import shutil
import sys
import tempfile
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmllm_sdk.errors import SpecError
from mmllm_sdk.files import swap_in

TEMPLATE = "cookiecutter-mmllm-plugin"
PREFIX = "mmllm-"  # `mmllm new-plugin mmllm-thermal` and `mmllm new-plugin thermal` make the same package
MAX_VALUE = 500  # characters of one template value

_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
# key: (the pattern its whole value must match, what fits): names become folders, imports, TOML keys and registry names
NAME_RULES = {
    "modality": (r"[a-z][a-z0-9_-]*", "lower case letters, digits, '-' or '_', starting with a letter (e.g. thermal)"),
    "project_slug": (
        _NAME,
        "a folder and distribution name: letters, digits, '.', '_' or '-', starting and ending with a letter or "
        "digit (e.g. mmllm-thermal)",
    ),
    "package_name": (
        r"[A-Za-z_][A-Za-z0-9_]*",
        "a Python identifier of ASCII letters, digits and '_' (e.g. mmllm_thermal)",
    ),
    "placeholder": (
        r"<[A-Za-z0-9_.:|-]+>",
        "one token like <thermal>: letters, digits, '_', '-', '.', ':' or '|' in <>",
    ),
    "encoder_name": (_NAME, "a component name: letters, digits, '.', '_' or '-' (e.g. thermal-patch)"),
    "dataset_name": (_NAME, "a component name: letters, digits, '.', '_' or '-' (e.g. thermal-synthetic)"),
    "channels": (r"[1-9][0-9]{0,3}", "a whole number from 1 to 9999"),
}
_BREAKS = {"Cc", "Cs", "Zl", "Zp"}  # control characters, undecodable bytes, line breaks: in no value


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
    if not re.fullmatch(NAME_RULES["modality"][0], modality):
        raise SpecError(
            f"new-plugin: {name!r} cannot name a modality; use lower case letters, digits, '-' or '_', starting "
            "with a letter, e.g. 'thermal' (the package becomes mmllm-thermal)."
        )
    return modality


def check_values(values: dict[str, Any]) -> None:
    """SpecError naming the first template value that would give a broken package, or a path outside the output."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.version import InvalidVersion, Version

    for key, value in values.items():
        if key.startswith("_"):
            continue
        value = str(value)
        fits = ""
        if len(value) > MAX_VALUE:
            fits = f"at most {MAX_VALUE} characters (it has {len(value):,})"
        elif any(unicodedata.category(ch) in _BREAKS for ch in value):
            fits = "one line of text, without control characters or bytes that are not UTF-8"
        elif key in NAME_RULES and not re.fullmatch(NAME_RULES[key][0], value):
            fits = NAME_RULES[key][1]
        elif key == "package_name" and (keyword.iskeyword(value) or value in {*sys.stdlib_module_names, "mmllm_sdk"}):
            fits = "a name no other module has: not a Python keyword, a standard library module or mmllm_sdk"
        elif key == "project_slug" and re.sub(r"[-_.]+", "-", value).lower() == "mmllm-sdk":
            fits = "the name of a new distribution, not mmllm-sdk itself"
        elif key in ("version", "sdk_requirement"):
            try:
                Version(value) if key == "version" else Requirement(value)
            except (InvalidVersion, InvalidRequirement):
                fits = "a version like 0.1.0 (PEP 440)" if key == "version" else "a requirement like mmllm-sdk>=0.1"
        if fits:
            shown = repr(value) if len(value) <= 80 else f"{value[:80]!r}…"
            raise SpecError(f"new-plugin: {key} {shown} cannot be used; it must be {fits}. Nothing was written.")
    _check_modality(values.get("modality", "thermal"), values.get("placeholder", "<thermal>"))


def _check_modality(name: str, placeholder: str) -> None:
    """The SDK's own rules for a modality (:class:`ModalitySpec`), and a name the built-ins do not take."""
    from mmllm_sdk.components.modality import ModalitySpec
    from mmllm_sdk.default_plugins.modalities import AUDIO, IMAGE, VIDEO

    try:
        ModalitySpec(name, placeholder)
    except ValueError as exc:
        raise SpecError(f"new-plugin: {exc} Nothing was written.") from None
    builtin = [spec.name for spec in (IMAGE, AUDIO, VIDEO)]
    if name in builtin:
        raise SpecError(
            f"new-plugin: modality {name!r} is built into mmllm-sdk ({', '.join(builtin)}); a plugin adds a new one, "
            "e.g. thermal. Nothing was written."
        )


def parse_toml(text: str) -> dict[str, Any]:
    """TOML text as data (tomllib; tomli on Python 3.10)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: tomli, as pip and pytest use; without it, TOML files go unchecked
        try:
            import tomli as tomllib
        except ImportError:
            return {}
    return tomllib.loads(text)


# how each kind of generated file is checked: parsed, never run
PARSERS: dict[str, tuple[str, Callable[[str], object]]] = {
    ".py": ("Python", lambda text: compile(text, "<generated>", "exec", dont_inherit=True)),
    ".toml": ("TOML", parse_toml),
    ".json": ("JSON", json.loads),
    ".yaml": ("YAML", lambda text: __import__("yaml").safe_load(text)),
    ".yml": ("YAML", lambda text: __import__("yaml").safe_load(text)),
    ".cfg": ("INI", lambda text: configparser.ConfigParser(interpolation=None).read_string(text)),
}


def check_generated(folder: Path) -> None:
    """SpecError naming the first generated file that is not UTF-8 or does not parse as its suffix says."""
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        kind, parse = PARSERS.get(path.suffix, ("UTF-8 text", str))
        try:
            parse(path.read_bytes().decode("utf-8"))
        except Exception as exc:  # each parser's own error: SyntaxError, TOMLDecodeError, YAMLError …
            raise SpecError(
                f"new-plugin: the generated {path.relative_to(folder)} is not valid {kind} ({type(exc).__name__}: "
                f"{exc}); nothing was written. The template cannot take these values: change the ones in that file."
            ) from None


def new_plugin(
    name: str,
    output_dir: str | os.PathLike[str] = ".",
    *,
    no_input: bool = False,
    context: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Render the plugin template for modality ``name`` into ``output_dir``; returns the new package's folder.

    With ``no_input`` every other template variable takes its default (the package
    ``mmllm-NAME``, the encoder ``NAME-patch``, the dataset ``NAME-synthetic``, 4 channels);
    otherwise cookiecutter asks for each. ``context`` overrides variables
    (``{"channels": "6"}``); its values are taken literally. An existing package folder is
    a SpecError unless ``overwrite``; then it is replaced once the new one is complete.
    """
    from cookiecutter.exceptions import CookiecutterException, FailedHookException
    from cookiecutter.generate import generate_context, generate_files
    from cookiecutter.prompt import prompt_for_config

    modality = modality_name(name)
    template = template_path()
    known = json.loads((template / "cookiecutter.json").read_text(encoding="utf-8"))
    unknown = sorted(set(context or {}) - set(known))
    if unknown:
        raise SpecError(
            f"new-plugin: the template has no variable {', '.join(map(repr, unknown))}; its variables are "
            f"{', '.join(sorted(known))}."
        )
    for key, value in (context or {}).items():
        if any(mark in str(value) for mark in ("{{", "{%", "{#")):  # cookiecutter would evaluate it as a template
            raise SpecError(
                f"new-plugin: {key} {value!r} holds template markup ('{{{{', '{{%' or '{{#'); leave it out."
            )
    extra = {"modality": modality, **{key: str(value) for key, value in (context or {}).items()}}
    check_values(extra)
    quiet = logging.getLogger("cookiecutter")  # it logs a traceback for a failed hook; ours says what failed
    level, quiet.level = quiet.level, logging.CRITICAL
    try:
        rendered = generate_context(context_file=str(template / "cookiecutter.json"), extra_context=extra)
        try:
            rendered["cookiecutter"] = dict(prompt_for_config(rendered, no_input))
        except EOFError:
            raise SpecError(
                "new-plugin: the input ended before every question was answered; pass --no-input to take the "
                "defaults (and --set KEY=VALUE for the values to change)."
            ) from None
        values = rendered["cookiecutter"]
        check_values(values)
        output = Path(output_dir)
        target = output / values["project_slug"]
        if os.path.lexists(target) and not overwrite:
            raise SpecError(
                f"new-plugin: {str(target)!r} already exists and is left as it is; pick another name or --output-dir, "
                "or pass --overwrite to replace it."
            )
        try:
            output.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=output))
        except OSError as exc:
            raise SpecError(f"new-plugin: cannot write into --output-dir {str(output)!r}: {exc.strerror}.") from None
        try:
            project = Path(generate_files(repo_dir=str(template), context=rendered, output_dir=str(staging)))
            check_generated(project)
            _move_into_place(project, target, overwrite)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except FailedHookException as exc:
        raise SpecError(
            "new-plugin: the template refused these values (its message is above); nothing was written."
        ) from exc
    except CookiecutterException as exc:
        raise SpecError(f"new-plugin: the template could not be rendered: {type(exc).__name__}: {exc}") from exc
    finally:
        quiet.level = level
    return target


def _move_into_place(project: Path, target: Path, overwrite: bool) -> None:
    """Rename the rendered ``project`` to ``target`` (:func:`~mmllm_sdk.files.swap_in`: an existing one, only with
    ``overwrite``, is replaced whole, a symlink itself and never its target)."""
    if os.path.lexists(target) and not overwrite:  # it appeared while rendering
        raise SpecError(f"new-plugin: {str(target)!r} appeared meanwhile and is left as it is; run again.")
    try:
        swap_in(project, target)
    except OSError as exc:
        raise SpecError(f"new-plugin: cannot create {str(target)!r}: {exc.strerror}; it is left as it was.") from None
