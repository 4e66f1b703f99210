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
    command.add_argument("--cache-dir", help="the feature cache of frozen encoders (default: $MMLLM_CACHE/features)")
    command.add_argument("--no-cache", action="store_true", help="encode every input now; read and write no cache")
    command.add_argument("--no-plots", action="store_true", help="write no PNG plots with the results")
    command.add_argument(
        "--compare",
        nargs="+",
        default=[],
        metavar="OTHER",
        help="also score these checkpoints (or specs) on the same items and compare each with CKPT_OR_SPEC "
        "(McNemar's test on the items one gets right and the other wrong)",
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
    from mmllm_sdk.default_plugins.evaluation.compare import COMPARISON, compare_results

    source, models = data_source(args.data, args.data_param), [args.model, *args.compare]
    together = args.output_dir is None or not args.compare
    folders = [args.output_dir] * len(models) if together else _folders(args.output_dir, models)
    if args.compare and args.output_dir is not None and not args.overwrite:
        if (earlier := Path(args.output_dir) / COMPARISON).exists() or earlier.is_symlink():
            raise MMLLMError(f"{earlier} exists from an earlier run; pass --overwrite to replace it.")
    results = [_score(args, model, source, folder) for model, folder in zip(models, folders, strict=True)]
    if not args.compare:
        return 0
    comparison = compare_results(models, results)
    print(f"\n{results[0].metric} on the same {len(results[0].predictions)} items:")
    print(comparison.table())
    if args.output_dir is not None:
        print(f"Wrote {comparison.write(args.output_dir)}")
    return 0


def _folders(output_dir: str, models: list[str]) -> list[str]:
    """Where each compared model's files go: ``OUTPUT_DIR/<n>-<its folder or file name>``."""
    return [str(Path(output_dir) / f"{index}-{Path(model).name or 'model'}") for index, model in enumerate(models)]


def _score(args: argparse.Namespace, model_path: str, source: Any, output_dir: str | None) -> Any:
    """One model loaded, scored (its table printed), and let go before the next is loaded."""
    from mmllm_sdk.default_plugins.commands.chat import load_any
    from mmllm_sdk.default_plugins.evaluation.run import evaluate
    from mmllm_sdk.model.checkpoint import MANIFEST

    model = load_any(model_path, args.trust_remote_code)
    result = evaluate(
        model,
        source,
        metric=args.metric,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        output_dir=output_dir,
        overwrite=args.overwrite,
        checkpoint=model_path if (Path(model_path) / MANIFEST).exists() else None,
        cache=not args.no_cache,
        cache_dir=args.cache_dir,
        plots=not args.no_plots,
    )
    named = f"{model_path}: " if args.compare else ""
    print(f"{named}{result.metric} on {len(result.predictions)} items:")
    print(result.table())
    for path in result.files:
        print(f"Wrote {path}")
    del model
    return result
