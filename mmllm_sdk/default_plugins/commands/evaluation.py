"""``mmllm eval``: score a checkpoint (or a model built from a spec) on held-out data with a metric; ``mmllm probe``:
the accuracy the frozen encoder's own features reach on the same answers, next to the model's."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from mmllm_sdk.default_plugins.commands.options import add_data_params, add_model, add_trust_remote_code, positive
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
    add_model(command)
    command.add_argument("data", metavar="DATA", help="a data file, or a registered data source's name")
    add_data_params(command)
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
    add_probe(cli)


def add_probe(cli: Any) -> None:
    command = cli.command(
        "probe",
        run_probe,
        help="how well the frozen encoder's own features answer labelled data, next to the model",
        description="Train a linear classifier and a small MLP on the frozen encoder's pooled features against the "
        "answers of DATA (labels: classes, colours, counts), per category, and print their held-out accuracy with "
        "95 % intervals next to the aligned model's answers on the same held-out items: the ceiling alignment can "
        "reach, and how far the model is from it. Without --heldout, a seeded fifth of DATA is held out.",
    )
    add_model(command)
    command.add_argument("data", metavar="DATA", help="labelled data: a data file, or a registered data source's name")
    add_data_params(command)
    command.add_argument("--heldout", metavar="HELDOUT", help="held-out data (default: a fifth of DATA)")
    add_data_params(command, "--heldout-param", "HELDOUT")
    command.add_argument("--metric", help="the metric of the model's answers (default: the data's, else exact)")
    command.add_argument("--max-new-tokens", type=positive(int), default=16, help="per answer of the model (16)")
    command.add_argument("--batch-size", type=positive(int), default=16, help="items at once (default 16)")
    command.add_argument("--no-model", action="store_true", help="probe only; do not ask the model")
    command.add_argument("--seed", type=int, default=0, help="of the split and the probes' training (default 0)")
    add_trust_remote_code(command)


def run_probe(args: argparse.Namespace) -> int:
    from mmllm_sdk.default_plugins.commands.chat import load_any
    from mmllm_sdk.default_plugins.evaluation.probe import as_report, probe, probe_data
    from mmllm_sdk.default_plugins.evaluation.run import evaluate

    data = data_source(args.data, args.data_param)
    heldout = data_source(args.heldout, args.heldout_param) if args.heldout else None
    model = load_any(args.model, args.trust_remote_code)
    train, test = probe_data(model, data, heldout, seed=args.seed)
    probes = probe(model, train, test, batch_size=args.batch_size, seed=args.seed)
    answered, header = {}, ""
    if not args.no_model:
        result = evaluate(
            model, as_report(test), metric=args.metric, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens
        )
        answered, header = result.categories, f"model ({result.metric})"
    rows = [("category", "classes", "train", "linear probe", "MLP probe", header)]
    for p in probes:
        model_score = str(answered[p.category]) if p.category in answered else ""
        rows.append((p.category, str(len(p.classes)), str(p.train_items), str(p.linear), str(p.mlp), model_score))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print(f"held-out accuracy on {len(test)} items ({len(train)} trained the probes):")
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


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
