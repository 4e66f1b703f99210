"""``mmllm_sdk.evaluate``: answer held-out items with greedy batched generation, score each answer with a metric,
and report the score with its 95 % interval, per category, as a results JSON and a predictions JSONL."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mmllm_sdk import __version__
from mmllm_sdk.data.examples import Conversation, Message, PreferencePair, TextPart
from mmllm_sdk.data.formats import DataReport, as_example
from mmllm_sdk.data.messages import ANSWER_ROLE
from mmllm_sdk.default_plugins.evaluation.stats import Score, by_category, score
from mmllm_sdk.errors import InputError
from mmllm_sdk.files import atomic_write
from mmllm_sdk.registry import Metric, get_registry

RESULTS, PREDICTIONS = "results.json", "predictions.jsonl"
DEFAULT_METRIC = "exact"


@dataclass(frozen=True)
class Item:
    """One held-out item: the conversation up to its last answer, that answer's text, and its category."""

    prompt: Conversation
    reference: str
    category: str | None = None


@dataclass
class EvalResult:
    """What :func:`evaluate` measured: the score, per category, each item's prediction, and where it was written."""

    metric: str
    score: Score
    categories: dict[str, Score]
    predictions: list[dict[str, Any]]
    seconds: float
    files: list[Path] = field(default_factory=list)

    def table(self) -> str:
        """The score and each category's, with their intervals, as lines for a terminal."""
        rows = [("all", self.score), *self.categories.items()]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)

    def to_dict(self) -> dict[str, Any]:
        as_dict = lambda s: {"mean": s.mean, "low": s.low, "high": s.high, "count": s.count}  # noqa: E731
        return {
            "metric": self.metric,
            "score": as_dict(self.score),
            "categories": {name: as_dict(value) for name, value in self.categories.items()},
            "seconds": round(self.seconds, 3),
        }


def items_of(report: DataReport, limit: int | None = None) -> list[Item]:
    """The report's examples as items: each conversation's last assistant turn is its reference (a preference pair's
    chosen answer); an example without one is an :class:`InputError` naming it."""
    items = []
    categories = report.categories or [None] * len(report.examples)
    for example, category in zip(report.examples, categories, strict=True):
        example = as_example(example)
        messages = example.prompt + example.chosen if isinstance(example, PreferencePair) else example.messages
        last = max((i for i, m in enumerate(messages) if m.role == ANSWER_ROLE), default=None)
        reference = messages[last].text() if last is not None else ""
        if not reference:
            where = example.source or f"example {len(items)}"
            raise InputError(
                f"{where} has no reference answer: evaluation compares the model's answer with the text of the last "
                "assistant turn, and this example has none. Give each example its expected answer."
            )
        items.append(Item(Conversation(messages[:last], example.source), reference, category))
        if limit is not None and len(items) == limit:
            break
    return items


def evaluate(
    model: Any,
    data: DataReport | Any,
    *,
    metric: str | Metric | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    limit: int | None = None,
    output_dir: str | Path | None = None,
    overwrite: bool = False,
    checkpoint: str | Path | None = None,
    progress: bool = True,
) -> EvalResult:
    """Score ``model`` on ``data`` (a :class:`DataReport`, data file paths, or ``{"dataset": name, "params": …}``).

    Greedy answers are generated in batches of ``batch_size`` and scored with ``metric`` (a registered name, a
    :class:`Metric`, or the data source's default, else ``exact``). With ``output_dir``, ``results.json`` and
    ``predictions.jsonl`` are written there, each whole or not at all, once every item is scored; those of an earlier
    run are replaced only with ``overwrite=True`` (refused before anything runs). ``checkpoint``: the folder ``model``
    was loaded from, whose path and digests ``results.json`` records."""
    from mmllm_sdk.default_plugins.recipes.run import read_data

    if batch_size < 1 or max_new_tokens < 1 or (limit is not None and limit < 1):
        raise InputError("batch_size, max_new_tokens and limit must be at least 1.")
    written = [Path(output_dir) / name for name in (RESULTS, PREDICTIONS)] if output_dir is not None else []
    if not overwrite and (earlier := [str(path) for path in written if path.exists() or path.is_symlink()]):
        raise InputError(
            f"{', '.join(earlier)} exist from an earlier run; pass --overwrite (overwrite=True) to replace them."
        )
    report = data if isinstance(data, DataReport) else read_data(data, {**model.encoders})
    name = metric if isinstance(metric, str) else report.metric or DEFAULT_METRIC
    scorer = metric if isinstance(metric, Metric) else get_registry().get("metrics", name, where="--metric").value
    if scorer.by_likelihood:
        raise InputError(
            f"Metric {name!r} picks among each item's options by log-likelihood; mmllm eval does not read options "
            "from data yet. Use a metric that scores generated answers (exact, prefix, choice, number, contains)."
        )
    items = items_of(report, limit)
    start, predictions = time.perf_counter(), []
    model.eval()
    bar = tqdm(total=len(items), desc="Evaluating", unit="item", disable=not progress)
    for first in range(0, len(items), batch_size):
        chunk = items[first : first + batch_size]
        replies = model.generate_batch([item.prompt for item in chunk], max_new_tokens=max_new_tokens, do_sample=False)
        for item, reply in zip(chunk, replies, strict=True):
            value = scorer(reply.text, item.reference)
            predictions.append(
                {
                    "input": _text(item.prompt),
                    "source": item.prompt.source,
                    "reference": item.reference,
                    "prediction": reply.text,
                    "score": value,
                    "correct": value >= 0.5,
                    **({"category": item.category} if item.category is not None else {}),
                }
            )
        bar.update(len(chunk))
    bar.close()
    values = [row["score"] for row in predictions]
    categories = [item.category for item in items]
    per_category = by_category(values, categories) if all(c is not None for c in categories) else {}
    result = EvalResult(name, score(values), per_category, predictions, time.perf_counter() - start)
    if output_dir is not None:
        result.files = _write(result, Path(output_dir), model, report, checkpoint)
    return result


def _text(conversation: Conversation) -> str:
    """The prompt as a reader sees it: each message's role and text, media as ``<modality>``."""
    parts = lambda m: " ".join(p.text if isinstance(p, TextPart) else f"<{p.modality}>" for p in m.parts)  # noqa: E731
    return "\n".join(f"{m.role}: {parts(m)}" for m in conversation.messages if isinstance(m, Message))


def _write(result: EvalResult, folder: Path, model: Any, report: DataReport, checkpoint: Any) -> list[Path]:
    """results.json (what was measured, on which model and data, with which versions) and predictions.jsonl."""
    from mmllm_sdk.model.checkpoint import read_manifest
    from mmllm_sdk.plugins import plugin_info

    plugins = {entry.plugin for entry in getattr(model, "sources", {}).values()}
    details = {
        "sdk_version": __version__,
        "model": model.spec.model_dump(mode="json"),
        "checkpoint": None
        if checkpoint is None
        else {"path": str(Path(checkpoint).resolve()), "digest": read_manifest(Path(checkpoint)).get("digest")},
        "data": report.to_dict(),
        "plugins": {name: plugin_info(name).version for name in sorted(plugins)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **result.to_dict(),
    }
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in result.predictions)
    return [
        atomic_write(folder / PREDICTIONS, lines),
        atomic_write(folder / RESULTS, json.dumps(details, indent=2, ensure_ascii=False) + "\n"),
    ]
