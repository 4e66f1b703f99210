"""``mmllm new-plugin``: a new modality plugin package from the SDK's cookiecutter template."""

from __future__ import annotations

import argparse
from pathlib import Path

from mmllm_sdk.errors import SpecError
from mmllm_sdk.hookspecs import hookimpl


@hookimpl
def register_commands(cli):
    new_plugin = cli.command(
        "new-plugin",
        run_new_plugin,
        help="start a new modality plugin package from the SDK's cookiecutter template",
        description="Render the cookiecutter template into a new package, mmllm-NAME: a modality with "
        "loaders, an encoder, an example dataset, tests on the conformance kit, a README and a CI file. "
        "It installs with pip and its tests pass as generated.",
    )
    new_plugin.add_argument("name", metavar="NAME", help="the modality, e.g. thermal (or mmllm-thermal)")
    new_plugin.add_argument(
        "--no-input", action="store_true", help="take the defaults for everything else instead of asking"
    )
    new_plugin.add_argument("--output-dir", default=".", help="where the package folder is created (default .)")
    new_plugin.add_argument(
        "--overwrite", action="store_true", help="replace an existing package folder (once the new one is complete)"
    )
    new_plugin.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a template variable, e.g. --set channels=12 (repeatable; see the template's cookiecutter.json); "
        "every value is checked before anything is written",
    )


def run_new_plugin(args: argparse.Namespace) -> int:
    from mmllm_sdk.default_plugins.scaffold import new_plugin

    context = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--set {item!r} must look like KEY=VALUE, e.g. --set channels=12.")
        context[key] = value
    folder = new_plugin(args.name, args.output_dir, no_input=args.no_input, context=context, overwrite=args.overwrite)
    if folder.is_relative_to(Path.cwd()):  # as the user would type it
        folder = Path(".") / folder.relative_to(Path.cwd())
    shown = f"./{folder}" if not folder.is_absolute() else str(folder)
    print(f"Created {shown}. Next: pip install -e {shown}, then mmllm plugins, then cd {shown} && python -m pytest")
    return 0
