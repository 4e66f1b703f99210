"""``mmllm export``: write a checkpoint in another library's format, one of the registered exporters."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

from mmllm_sdk.default_plugins.commands.options import add_trust_remote_code
from mmllm_sdk.default_plugins.exporters import refuse_existing, staged_output
from mmllm_sdk.errors import MMLLMError, PluginError
from mmllm_sdk.hookspecs import hookimpl


@hookimpl
def register_commands(cli):
    export = cli.command(
        "export",
        run_export,
        help="write a checkpoint in another library's format",
        description=describe_formats,
    )
    export.add_argument("checkpoint", help="an SDK checkpoint folder")
    formats = export.add_argument("--format", required=True, help="the target format")
    formats.choices = ExporterNames()  # set afterwards: add_argument would format the choices, building the registry
    export.add_argument("output", help="the folder (or file) to write; an existing one is refused unless --overwrite")
    export.add_argument(
        "--overwrite", action="store_true", help="replace an existing OUTPUT (atomically: once the export is complete)"
    )
    add_trust_remote_code(export)


class ExporterNames:
    """The registered exporters' names, looked up only when ``--format`` is parsed or the help is shown.

    So that ``mmllm --help`` and the other commands do not build the registry.
    """

    def _names(self) -> list[str]:
        from mmllm_sdk.registry import get_registry

        return [entry.name for entry in get_registry().entries("exporters")]

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())


def describe_formats() -> str:
    """``mmllm export --help``'s paragraph: a sentence per registered format that describes itself."""
    from mmllm_sdk.registry import get_registry

    formats = [f"{e.name} {e.value.description}" for e in get_registry().entries("exporters") if e.value.description]
    return " ".join(["Export a checkpoint.", *formats])


def run_export(args: argparse.Namespace) -> int:
    """Every exporter writes into a staging path; only a complete export replaces OUTPUT, and only with --overwrite."""
    import mmllm_sdk
    from mmllm_sdk.registry import get_registry

    entry = get_registry().get("exporters", args.format, where="--format")
    exporter = entry.value
    output = Path(args.output)
    refuse_existing(output, args.overwrite)  # before the checkpoint is loaded
    model = mmllm_sdk.MMLLM.from_pretrained(args.checkpoint, trust_remote_code=args.trust_remote_code)
    try:
        writer = f"The exporter {entry.name!r} of plugin {entry.plugin!r}"
        with staged_output(output, overwrite=args.overwrite, writer=writer) as staging:
            exporter(model, staging)
    except MMLLMError:
        raise
    except Exception as exc:
        raise PluginError(
            f"Plugin {entry.plugin!r} failed to export as {entry.name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    out = output.resolve()
    print(f"Wrote {out} ({exporter.usage})." if exporter.usage else f"Wrote {out}.")
    return 0
