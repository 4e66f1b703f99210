"""``mmllm chat``: ask a checkpoint (or a model built from a spec) about some inputs, once or line by line."""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

from mmllm_sdk.default_plugins.commands.options import add_model, add_trust_remote_code, positive
from mmllm_sdk.errors import InputError, MMLLMError
from mmllm_sdk.hookspecs import hookimpl


@hookimpl
def register_commands(cli):
    chat = cli.command(
        "chat",
        run_chat,
        help="ask a model a question about some inputs",
        description="Load a checkpoint folder (or build a model from a spec) and answer a question. "
        "Without a question, read questions from standard input, one per line.",
    )
    add_model(chat)
    chat.add_argument("question", nargs="?", help="the question; omit it for an interactive session")
    chat.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="MODALITY=PATH",
        help="attach an input to the first question, e.g. --input image=cat.png (repeatable)",
    )
    chat.add_argument("--system", help="a system prompt")
    chat.add_argument(
        "--max-new-tokens", type=positive(int), default=128, help="the most tokens to generate (default 128)"
    )
    chat.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    chat.add_argument(
        "--temperature", type=positive(float), default=0.7, help="sampling temperature with --sample (default 0.7)"
    )
    add_trust_remote_code(chat)
    chat.add_argument(
        "--output-dir",
        default="mmllm-outputs",
        help="where an any-to-any model's generated images and audio are saved (default ./mmllm-outputs)",
    )


def load_any(path: str, trust_remote_code: bool = False) -> Any:
    """A model from a checkpoint folder or a spec file; code from its model folders runs only with the opt-in."""
    import mmllm_sdk
    from mmllm_sdk.model.checkpoint import MANIFEST

    if (Path(path) / MANIFEST).exists():
        return mmllm_sdk.MMLLM.from_pretrained(path, trust_remote_code=trust_remote_code)
    if Path(path).is_dir():
        raise MMLLMError(f"{path!r} is a folder without {MANIFEST}; pass an SDK checkpoint folder or a YAML spec.")
    return mmllm_sdk.build_model(mmllm_sdk.load_spec(path), trust_remote_code=trust_remote_code)


def parse_inputs(values: list[str]) -> list[dict[str, str]]:
    """``["image=cat.png"]`` as content parts: ``[{"type": "image", "path": "cat.png"}]``, each file read once here
    (through its modality's loaders), so that a wrong path fails before the model is built."""
    from mmllm_sdk.registry import get_registry

    parts = []
    for value in values:
        modality, sep, path = value.partition("=")
        if not sep or not modality or not path:
            raise MMLLMError(f"--input {value!r} must look like MODALITY=PATH, for example --input image=cat.png.")
        get_registry().modality(modality, where=f"--input {value!r}").load(path)
        parts.append({"type": modality, "path": path})
    return parts


def read_question(number: int) -> str | None:
    """The next line of standard input (None at its end), which must be UTF-8."""
    if not hasattr(sys.stdin, "buffer"):  # already text (a StringIO in place of stdin)
        return sys.stdin.readline() or None
    line = sys.stdin.buffer.readline()
    try:
        return line.decode("utf-8") if line else None
    except UnicodeDecodeError as exc:
        raise InputError(
            f"Line {number} of standard input is not UTF-8 text (byte {exc.start} is {line[exc.start : exc.start + 1]!r})."
        ) from None


def run_chat(args: argparse.Namespace) -> int:
    parts = parse_inputs(args.input)
    model = load_any(args.model, args.trust_remote_code)
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
    for number in itertools.count(1):
        if interactive:
            print("> ", end="", flush=True)
        line = read_question(number)
        if not line or line.strip() in ("exit", "quit"):
            return 0
        if line.strip():
            print(ask(line.strip()), flush=True)
