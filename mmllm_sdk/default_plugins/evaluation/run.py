"""``mmllm_sdk.evaluate``: answer held-out items with greedy batched generation, score each answer with a metric,
and report the score with its 95 % interval, per category, as a results JSON and a predictions JSONL."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mmllm_sdk import __version__
from mmllm_sdk.data.examples import Conversation, LabelledAnswer, MediaPart, Message, TextPart
from mmllm_sdk.data.formats import DataReport, as_example
from mmllm_sdk.data.messages import ANSWER_ROLE
from mmllm_sdk.default_plugins.evaluation.stats import Score, by_category, confusion, score
from mmllm_sdk.default_plugins.recipes.data import prompt_and_reference
from mmllm_sdk.errors import InputError
from mmllm_sdk.files import atomic_write, cache_root
from mmllm_sdk.model.scoring import answer_logprobs
from mmllm_sdk.registry import Metric, get_registry

RESULTS, PREDICTIONS = "results.json", "predictions.jsonl"
SCORES_PLOT, CONFUSION_PLOT = "scores.png", "confusion.png"
OUTPUTS = (RESULTS, PREDICTIONS, SCORES_PLOT, CONFUSION_PLOT)
OTHER_LABEL = "(other)"  # an answer that matches none of the reference labels
DEFAULT_METRIC = "exact"


@dataclass(frozen=True)
class Item:
    """One held-out item: the conversation up to its last answer, that answer's text, and its category."""

    prompt: Conversation
    reference: str
    category: str | None = None
    choices: tuple[str, ...] | None = None  # the item's options, for a metric that picks among them


@dataclass
class EvalResult:
    """What :func:`evaluate` measured: the score, per category, each item's prediction, and where it was written."""

    metric: str
    score: Score
    categories: dict[str, Score]
    predictions: list[dict[str, Any]]
    seconds: float
    files: list[Path] = field(default_factory=list)
    confusion: tuple[list[str], list[list[int]]] | None = None  # (labels, counts [reference][answer]), label metrics

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
            **(
                {}
                if self.confusion is None
                else {"confusion": dict(zip(("labels", "counts"), self.confusion, strict=True))}
            ),
        }


def items_of(report: DataReport, limit: int | None = None) -> list[Item]:
    """The report's examples as items, each a prompt and its reference answer
    (:func:`~mmllm_sdk.default_plugins.recipes.data.prompt_and_reference`: a conversation's last turn, an assistant's;
    a preference pair's chosen answer; an unpaired answer labelled desirable, those labelled undesirable left out); an
    example without one is an :class:`InputError` naming it."""
    items = []
    categories = report.categories or [None] * len(report.examples)
    choices = report.choices or [None] * len(report.examples)
    for example, category, options in zip(report.examples, categories, choices, strict=True):
        example = as_example(example)
        if isinstance(example, LabelledAnswer) and not example.desirable:
            continue
        prompt, reference = prompt_and_reference(example)
        if reference is None:
            where = example.source or f"example {len(items)}"
            raise InputError(
                f"{where} has no reference answer: evaluation compares the model's answer with the text of the last "
                "turn, an assistant's, and this example has none. Give each example its expected answer."
            )
        options = tuple(options) if options is not None else None
        items.append(Item(prompt, reference, category, options))
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
    cache: bool = True,
    cache_dir: str | Path | None = None,
    plots: bool = True,
    progress: bool = True,
) -> EvalResult:
    """Score ``model`` on ``data`` (a :class:`DataReport`, data file paths, or ``{"dataset": name, "params": …}``).

    Greedy answers are generated in batches of ``batch_size`` and scored with ``metric`` (a registered name, a
    :class:`Metric`, or the data source's default, else ``exact``); a metric that picks ``by_likelihood`` scores the
    option of each item's ``choices`` the model finds most likely, without generating. Frozen encoders' features come
    from the feature cache (``cache_dir``, default ``$MMLLM_CACHE/features``) unless ``cache=False``. With
    ``output_dir``, ``results.json``, ``predictions.jsonl`` and (``plots``) PNG plots are written there, each whole or
    not at all, once every item is scored; those of an earlier run are replaced only with ``overwrite=True`` (refused
    before anything runs). ``checkpoint``: the folder ``model`` was loaded from, which ``results.json`` records."""
    from mmllm_sdk.default_plugins.recipes.data import read_data

    if batch_size < 1 or max_new_tokens < 1 or (limit is not None and limit < 1):
        raise InputError("batch_size, max_new_tokens and limit must be at least 1.")
    written = [Path(output_dir) / name for name in OUTPUTS] if output_dir is not None else []
    if not overwrite and (earlier := [str(path) for path in written if path.exists() or path.is_symlink()]):
        raise InputError(
            f"{', '.join(earlier)} exist from an earlier run; pass --overwrite (overwrite=True) to replace them."
        )
    report = data if isinstance(data, DataReport) else read_data(data, {**model.encoders})
    name = metric if isinstance(metric, str) else report.metric or DEFAULT_METRIC
    scorer = metric if isinstance(metric, Metric) else get_registry().get("metrics", name, where="--metric").value
    items = items_of(report, limit)
    _check_items(model, items, name if scorer.by_likelihood else None)
    start = time.perf_counter()
    if cache:
        items = with_cached_features(model, items, cache_dir, batch_size)
    model.eval()
    answer = _pick if scorer.by_likelihood else _generate
    predictions = []
    with tqdm(total=len(items), desc="Evaluating", unit="item", disable=not progress) as bar:
        for first in range(0, len(items), batch_size):
            chunk = items[first : first + batch_size]
            for item, (prediction, extra) in zip(chunk, answer(model, chunk, batch_size, max_new_tokens), strict=True):
                value = scorer(prediction, item.reference)
                predictions.append(
                    {
                        "input": _text(item.prompt),
                        "source": item.prompt.source,
                        "reference": item.reference,
                        "prediction": prediction,
                        "score": value,
                        "correct": value >= 0.5,
                        **({"category": item.category} if item.category is not None else {}),
                        **extra,
                    }
                )
            bar.update(len(chunk))
    values = [row["score"] for row in predictions]
    categories = [item.category for item in items]
    per_category = by_category(values, categories) if all(c is not None for c in categories) else {}
    result = EvalResult(name, score(values), per_category, predictions, time.perf_counter() - start)
    if scorer.labels:
        result.confusion = label_confusion(scorer, predictions)
    if output_dir is not None:
        result.files = _write(result, Path(output_dir), model, report, checkpoint, plots)
    return result


def _check_items(model: Any, items: list[Item], picking: str | None) -> None:
    """Before any answer: each item's inputs are of modalities the model takes, and a metric that picks among
    options (``picking``) has them for every item."""
    for item in items:
        where = item.prompt.source or "an item"
        lacking = sorted({p.modality for p in item.prompt.parts() if isinstance(p, MediaPart)} - set(model.encoders))
        if lacking:
            raise InputError(
                f"{where} gives {' and '.join(lacking)} inputs, but the model takes only "
                f"{', '.join(model.encoders) or 'text'}; evaluate a model with those inputs or other data."
            )
        if picking is not None and item.choices is None:
            raise InputError(
                f"{where} lists no options, and metric {picking!r} picks among an item's options by log-likelihood; "
                'give each record a \'choices\' list (e.g. ["red", "green"]) or use a metric that scores '
                "generated answers (exact, prefix, choice, number, contains)."
            )


def with_cached_features(model: Any, items: list[Item], cache_dir: Any, batch_size: int) -> list[Item]:
    """The items with their frozen encoders' features from the feature cache, encoded into it first if missing."""
    from mmllm_sdk.default_plugins.recipes.features import cache_features

    folder = cache_dir if cache_dir is not None else cache_root() / "features"
    _, features = cache_features(model, folder, [item.prompt for item in items], batch_size)
    if features is None:
        return items
    return [replace(item, prompt=item.prompt.with_media(features.attach)) for item in items]


def _generate(model: Any, chunk: list[Item], batch_size: int, max_new_tokens: int) -> list[tuple[str, dict]]:
    """Each item's greedy answer."""
    replies = model.generate_batch([item.prompt for item in chunk], max_new_tokens=max_new_tokens, do_sample=False)
    return [(reply.text, {}) for reply in replies]


def _pick(model: Any, chunk: list[Item], batch_size: int, max_new_tokens: int) -> list[tuple[str, dict]]:
    """Each item's option of the highest log-likelihood as its answer (the first of equals), with every option's."""
    answered = [
        Conversation((*item.prompt.messages, Message(ANSWER_ROLE, (TextPart(option),))), item.prompt.source)
        for item in chunk
        for option in item.choices or ()
    ]
    scores = iter(answer_logprobs(model, answered, batch_size=batch_size))
    picked = []
    for item in chunk:
        logprobs = [next(scores).logprob for _ in item.choices or ()]
        best = max(range(len(logprobs)), key=logprobs.__getitem__)
        picked.append((item.choices[best], {"choices": list(item.choices), "logprobs": logprobs}))
    return picked


def label_confusion(scorer: Metric, predictions: list[dict[str, Any]]) -> tuple[list[str], list[list[int]]]:
    """For a metric whose references are labels: each answer as the first reference label (in sorted order) it scores
    right against, else ``(other)``; then the confusion counts of reference against answer labels."""
    labels = sorted({row["reference"] for row in predictions})
    answered = [
        next((label for label in labels if scorer(row["prediction"], label) >= 0.5), OTHER_LABEL) for row in predictions
    ]
    return confusion([row["reference"] for row in predictions], answered, order=labels)


def _text(conversation: Conversation) -> str:
    """The prompt as a reader sees it: each message's role and text, media as ``<modality>``."""
    parts = lambda m: " ".join(p.text if isinstance(p, TextPart) else f"<{p.modality}>" for p in m.parts)  # noqa: E731
    return "\n".join(f"{m.role}: {parts(m)}" for m in conversation.messages if isinstance(m, Message))


def _write(
    result: EvalResult, folder: Path, model: Any, report: DataReport, checkpoint: Any, plots: bool
) -> list[Path]:
    """predictions.jsonl, the plots, then results.json (what was measured, on which model and data, with which
    versions); a plot of an earlier run that this run does not draw is removed."""
    from mmllm_sdk.model.checkpoint import read_manifest
    from mmllm_sdk.plugins import plugin_info

    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in result.predictions)
    files = [atomic_write(folder / PREDICTIONS, lines)]
    drawn = _plot(result, folder) if plots else []
    for stale in {folder / SCORES_PLOT, folder / CONFUSION_PLOT} - set(drawn):
        stale.unlink(missing_ok=True)
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
        "plots": [path.name for path in drawn],
    }
    results = atomic_write(folder / RESULTS, json.dumps(details, indent=2, ensure_ascii=False) + "\n")
    return [*files, *drawn, results]


def _plot(result: EvalResult, folder: Path) -> list[Path]:
    """The score per category with its interval and, for label metrics, the confusion matrix, as PNGs; none (with a
    line on standard error) when matplotlib is not installed."""
    if importlib.util.find_spec("matplotlib") is None:
        print("Plots not drawn: they need matplotlib (pip install 'mmllm-sdk[plots]').", file=sys.stderr)
        return []
    from mmllm_sdk.default_plugins.evaluation.plots import plot_confusion, plot_scores

    title = f"{result.metric} on {len(result.predictions)} items"
    scores = {"all": result.score, **result.categories}
    drawn = [plot_scores(scores, folder / SCORES_PLOT, title=title, metric=result.metric)]
    if result.confusion is not None:
        labels, matrix = result.confusion
        drawn.append(plot_confusion(labels, matrix, folder / CONFUSION_PLOT, title=f"{title}: answers by reference"))
    return drawn
