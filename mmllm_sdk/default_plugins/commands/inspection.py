"""``mmllm plugins`` and ``mmllm validate``: what the loaded plugins provide, and what a spec builds."""

from __future__ import annotations

import argparse
import json
from typing import Any

from mmllm_sdk.default_plugins.commands.options import add_trust_remote_code
from mmllm_sdk.hookspecs import hookimpl


@hookimpl
def register_commands(cli):
    plugins = cli.command(
        "plugins",
        run_plugins,
        help="list the loaded plugins and what each registers",
        description="List the loaded plugins (built-in and installed) and the components each registers.",
    )
    plugins.add_argument("--json", action="store_true", help="print JSON for machines")

    validate = cli.command(
        "validate",
        run_validate,
        help="check a model spec without loading weights",
        description="Check a model spec: components, token budget per modality and parameter "
        "counts, from configs only (no weights are read).",
    )
    validate.add_argument("spec", help="path of a YAML model spec")
    validate.add_argument("--json", action="store_true", help="print JSON for machines")
    add_trust_remote_code(validate)


def plugin_rows() -> list[dict[str, Any]]:
    """One row per loaded plugin: its name, distribution, version, whether built in, and what it registers."""
    from mmllm_sdk.cli import command_plugins
    from mmllm_sdk.plugins import plugin_info, plugin_names
    from mmllm_sdk.registry import KINDS, get_registry

    commands: dict[str, list[str]] = {}
    for command, plugin in command_plugins().items():
        commands.setdefault(plugin, []).append(command)
    by_plugin: dict[str, list[Any]] = {name: [] for name in plugin_names()}  # a plugin that registers nothing too
    for kind in KINDS:
        for entry in get_registry().entries(kind):
            by_plugin.setdefault(entry.plugin, []).append(entry)
    rows = []
    for name, entries in by_plugin.items():
        info = plugin_info(name)
        registers: dict[str, list[str]] = {}
        for entry in entries:
            registers.setdefault(entry.kind, []).append(
                f"{entry.modality}/{entry.name}" if entry.kind in ("encoders", "generators") else entry.name
            )
        if name in commands:
            registers["commands"] = commands[name]
        rows.append(
            {
                "name": name,
                "distribution": info.distribution,
                "version": info.version,
                "builtin": info.builtin,
                "registers": registers,
            }
        )
    return rows


def run_plugins(args: argparse.Namespace) -> int:
    rows = plugin_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        origin = "built-in" if row["builtin"] else f"{row['distribution']} {row['version']}"
        print(f"{row['name']} ({origin})")
        for kind, names in row["registers"].items():
            print(f"  {kind}: {', '.join(names)}")
    return 0


def validation_report(spec_path: str, trust_remote_code: bool = False) -> tuple[dict[str, Any], list[Any]]:
    """The report of ``mmllm validate --json`` and the parameter counts, from a skeleton of the spec's model."""
    import mmllm_sdk

    spec = mmllm_sdk.load_spec(spec_path)
    model = mmllm_sdk.build_model(spec, skeleton=True, progress=False, trust_remote_code=trust_remote_code)
    counts = model.parameter_counts()
    outputs = {}
    for modality, output in spec.outputs.items():
        head = model.output_heads[modality]
        condition = head.condition_spec  # None: the generator takes the text between the signal tokens
        outputs[modality] = {
            "signal_tokens": list(head.signal_tokens),
            "output_projector": output.output_projector.name if output.output_projector else None,
            "generator": output.generator.name,
            "condition": [condition.num_tokens, condition.dim] if condition is not None else "text",
        }
    report: dict[str, Any] = {
        "spec": str(spec_path),
        "llm": {"name": spec.llm.name, "hidden_size": model.llm.hidden_size, "vocab_size": len(model.llm.tokenizer)},
        "inputs": {
            modality: {
                "encoder": inputs.encoder.name,
                "projector": inputs.projector.name,
                "placeholder": model.processor.inputs[modality].spec.placeholder,
                "encoder_tokens": model.encoders[modality].num_tokens,
                "encoder_dim": model.encoders[modality].output_dim,
                "llm_tokens_per_item": model.input_projectors[modality].num_tokens,
            }
            for modality, inputs in spec.inputs.items()
        },
        "outputs": outputs,
        "parameters": {row.component: {"total": row.total, "trainable": row.trainable} for row in counts},
        "total_parameters": sum(row.total for row in counts),
        "trainable_parameters": sum(row.trainable for row in counts),
    }
    return report, counts


def run_validate(args: argparse.Namespace) -> int:
    report, counts = validation_report(args.spec, args.trust_remote_code)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    llm = report["llm"]
    print(f"{args.spec}: valid")
    print(f"LLM backbone  {llm['name']}: hidden size {llm['hidden_size']}, vocabulary {llm['vocab_size']}")
    for modality, row in report["inputs"].items():
        print(
            f"input {modality:<7} {row['encoder']} ({row['encoder_tokens']} x {row['encoder_dim']}) -> {row['projector']} "
            f"-> {row['llm_tokens_per_item']} LLM tokens per {row['placeholder']}"
        )
    for modality, row in report["outputs"].items():
        tokens = row["signal_tokens"]
        condition = "the text between them" if row["condition"] == "text" else "{} x {}".format(*row["condition"])
        via = f" -> {row['output_projector']}" if row["output_projector"] else ""
        print(
            f"output {modality:<6} {tokens[0]} … {tokens[-1]} (k={len(tokens)}){via} -> {row['generator']} ({condition})"
        )
    print(f"\n{'component':<28}{'parameters':>14}{'trainable':>14}")
    for row in counts:
        print(f"{row.component:<28}{row.total:>14,}{row.trainable:>14,}")
    print(f"{'total':<28}{report['total_parameters']:>14,}{report['trainable_parameters']:>14,}")
    return 0
