"""Refuse names that would give a broken package, before any file is written."""

import re
import sys

MODALITY = "{{ cookiecutter.modality }}"
PACKAGE = "{{ cookiecutter.package_name }}"
CHANNELS = "{{ cookiecutter.channels }}"

problems = []
if not re.fullmatch(r"[a-z][a-z0-9_-]*", MODALITY):
    problems.append(
        f"modality {MODALITY!r} must be lower case letters, digits, '-' or '_', starting with a letter (e.g. thermal)"
    )
if not PACKAGE.isidentifier():
    problems.append(f"package_name {PACKAGE!r} is not a Python identifier")
if not CHANNELS.isdigit() or int(CHANNELS) < 1:
    problems.append(f"channels {CHANNELS!r} must be a positive whole number")
if problems:
    print("mmllm new-plugin: " + "; ".join(problems) + ".", file=sys.stderr)
    sys.exit(1)
