"""``mmllm eval``: score a checkpoint (or a model built from a spec) on held-out data with a metric."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from mmllm_sdk.default_plugins.commands.options import add_trust_remote_code, positive
from mmllm_sdk.errors import MMLLMError
from mmllm_sdk.hookspecs import hookimpl


@hookimpl
def register_commands(cli):
    command = cli.command(
        "eval",
        run_eval,
        help="score a model on held-out data with a metric",
        description="Answer each item of DATA with greedy batched generation, score the answers with a metric and "
        "print the score with its 95 % interval, per category. DATA is a data file (messages JSONL, LLaVA JSON, "
        "captions; the last assistant turn is the reference) or the name of a registered data source with "
        "--data-param KEY=VALUE.",
    )
    command.add_argument(
        "model", metavar="CKPT_OR_SPEC", help="a checkpoint folder (with mmllm.json) or a YAML model spec"
    )
    command.add_argument("data", metavar="DATA", help="a data file, or a registered data source's name")
    command.add_argument(
        "--data-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a param of the data source named by DATA (the value is read as YAML), e.g. --data-param split=heldout",
    )
    command.add_argument("--metric", help="a registered metric (default: the data source's, else exact)")
    command.add_argument("--batch-size", type=positive(int), default=8, help="items answered at once (default 8)")
    command.add_argument(
        "--max-new-tokens", type=positive(int), default=32, help="the most tokens per answer (default 32)"
    )
    command.add_argument("--limit", type=positive(int), help="score only the first N items")
    command.add_argument("--output-dir", help="write results.json and predictions.jsonl there")
    command.add_argument(
        "--overwrite", action="store_true", help="replace the results.json and predictions.jsonl of an earlier run"
    )
    add_trust_remote_code(command)


def data_source(data: str, params: list[str]) -> Any:
    """DATA as ``read_data`` takes it: a file path, or ``{"dataset": name, "params": …}`` from --data-param."""
    if not params:
        return data
    values = {}
    for param in params:
        key, sep, value = param.partition("=")
        if not sep or not key:
            raise MMLLMError(
                f"--data-param {param!r} must look like KEY=VALUE, for example --data-param split=heldout."
            )
        values[key] = yaml.safe_load(value) if value else ""
    return {"dataset": data, "params": values}


def run_eval(args: argparse.Namespace) -> int:
    from mmllm_sdk.default_plugins.commands.chat import load_any
    from mmllm_sdk.default_plugins.evaluation.run import evaluate
    from mmllm_sdk.model.checkpoint import MANIFEST

    source = data_source(args.data, args.data_param)
    model = load_any(args.model, args.trust_remote_code)
    result = evaluate(
        model,
        source,
        metric=args.metric,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        output_dir=args.output_dir,
        overwrite=args.overwrite,
        checkpoint=args.model if (Path(args.model) / MANIFEST).exists() else None,
    )
    print(f"{result.metric} on {len(result.predictions)} items:")
    print(result.table())
    for path in result.files:
        print(f"Wrote {path}")
    return 0
