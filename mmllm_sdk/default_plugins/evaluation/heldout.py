"""A recipe's held-out split scored as ``mmllm eval`` scores it: with the task's metric at each evaluation, and at the
end of the run next to the ceiling a linear probe on the frozen encoder's features reaches (``mmllm probe``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmllm_sdk.data.examples import MediaPart
from mmllm_sdk.data.formats import CONVERSATION, DataReport
from mmllm_sdk.default_plugins.evaluation.probe import MAX_CLASSES, probe
from mmllm_sdk.default_plugins.evaluation.run import DEFAULT_METRIC, Item, evaluate, items_of
from mmllm_sdk.default_plugins.evaluation.stats import Score
from mmllm_sdk.default_plugins.metrics import normalise

MAX_ANSWER_TOKENS = 64  # generated per held-out answer, at most; the longest reference's tokens and 2 more, at least


@dataclass
class HeldoutScorer:
    """Greedy answers to ``heldout``'s items scored with ``metric``: the Trainer's ``answer_scorer`` (its metrics are
    logged as ``eval_score``, ``eval_score_low`` and ``eval_score_high``, ready for ``metric_for_best_model: score``)."""

    heldout: DataReport
    metric: str
    batch_size: int
    cache_dir: str | Path | None  # the feature cache; None: encoders run on each item
    last: Score | None = None  # the latest score

    def __post_init__(self) -> None:
        self.items = items_of(self.heldout)

    def __call__(self, model: Any) -> dict[str, float]:
        was_training = model.training
        tokens = max(
            len(model.processor.tokenizer(item.reference, add_special_tokens=False)["input_ids"]) for item in self.items
        )
        try:
            result = evaluate(
                model,
                self.heldout,
                metric=self.metric,
                batch_size=self.batch_size,
                max_new_tokens=min(MAX_ANSWER_TOKENS, tokens + 2),
                cache=self.cache_dir is not None,
                cache_dir=self.cache_dir,
                progress=False,
            )
        finally:
            model.train(was_training)
        self.last = result.score
        return {"score": result.score.mean, "score_low": result.score.low, "score_high": result.score.high}

    def ceiling(self, model: Any, train: DataReport) -> Score | None:
        """The linear probe's held-out accuracy on the frozen encoder's features, trained on ``train``'s answers; None
        where a probe does not apply (answers that are not labels, prompts without exactly one item of one frozen
        encoder's modality, held-out labels the training answers lack)."""
        train_items = items_of(train)
        if not (probe_applies(model, train_items) and probe_applies(model, self.items)):
            return None
        labels = {normalise(item.reference) for item in train_items}
        if len(labels) > MAX_CLASSES or any(normalise(item.reference) not in labels for item in self.items):
            return None
        as_one = [Item(item.prompt, item.reference) for item in train_items]  # one probe over all categories
        (score,) = probe(
            model,
            as_one,
            [Item(item.prompt, item.reference) for item in self.items],
            batch_size=self.batch_size,
            cache=self.cache_dir is not None,
            cache_dir=self.cache_dir,
        )
        return score.linear


def answer_metric(heldout: DataReport, metric: str | None) -> str | None:
    """What scores a recipe's held-out conversations: ``metric`` when given; else, when their answers are labels (at
    most :data:`MAX_CLASSES` distinct values once normalised: classes, counts), the data's own metric or exact.
    Free text (captions) is not scored unless a metric is named: its loss says more than exact matches."""
    if heldout.kind != CONVERSATION:
        return None
    if metric is not None:
        return metric
    labels = {normalise(item.reference) for item in items_of(heldout)}
    return (heldout.metric or DEFAULT_METRIC) if len(labels) <= MAX_CLASSES else None


def probe_applies(model: Any, items: list[Item]) -> bool:
    """Every prompt holds exactly one input item, all of one modality whose encoder is frozen."""
    media = [[part for part in item.prompt.parts() if isinstance(part, MediaPart)] for item in items]
    modalities = {parts[0].modality for parts in media if len(parts) == 1}
    if any(len(parts) != 1 for parts in media) or len(modalities) != 1:
        return False
    (modality,) = modalities
    return modality in model.encoders and model.is_frozen(f"inputs.{modality}.encoder")
