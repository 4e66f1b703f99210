"""The ceiling of alignment: how well the frozen encoder's own features answer a labelled set.

A linear classifier (and a small MLP) trained on the encoder's pooled features against the items' answers shows what
the encoder knows. Next to what the aligned model answers on the same held-out items (:func:`.run.evaluate`), the
gap says how much of it the projector and the LLM still miss.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmllm_sdk.data.examples import MediaPart
from mmllm_sdk.default_plugins.evaluation.run import Item, items_of, with_cached_features
from mmllm_sdk.default_plugins.evaluation.stats import Score, score
from mmllm_sdk.default_plugins.metrics import normalise
from mmllm_sdk.errors import InputError

MAX_CLASSES = 64  # answers with more distinct values are not labels
HELDOUT_SHARE = 0.2  # of DATA, when no held-out data is given
STEPS, HIDDEN, WEIGHT_DECAY = 300, 256, 1e-3


@dataclass
class ProbeScore:
    """One group's probes (a category, or all items): its classes, and each probe's held-out accuracy."""

    category: str
    classes: list[str]
    train_items: int
    linear: Score
    mlp: Score


def split(items: list[Item], seed: int = 0) -> tuple[list[Item], list[Item]]:
    """A seeded split of ``items`` into training and held-out items (:data:`HELDOUT_SHARE` held out)."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    cut = max(1, round(len(items) * HELDOUT_SHARE))
    return [items[i] for i in sorted(order[cut:])], [items[i] for i in sorted(order[:cut])]


def pooled_features(model: Any, items: list[Item], batch_size: int = 16) -> torch.Tensor:
    """Each item's one input item through its frozen encoder, mean-pooled over tokens: (items, D).
    Cached features are used where the items carry them."""
    parts = []
    for item in items:
        media = [part for part in item.prompt.parts() if isinstance(part, MediaPart)]
        if len(media) != 1:
            where = item.prompt.source or "an item"
            raise InputError(
                f"{where} has {len(media)} input items; a probe classifies one item per answer (an image, a depth "
                "map …). Probe data whose every prompt holds exactly one."
            )
        parts.append(media[0])
    modalities = {part.modality for part in parts}
    if len(modalities) != 1:
        raise InputError(f"The probe's items mix modalities ({', '.join(sorted(modalities))}); probe one at a time.")
    from mmllm_sdk.default_plugins.recipes.features import encoder_feature_batches

    batches = encoder_feature_batches(model, modalities.pop(), parts, batch_size)
    return torch.cat([features.mean(dim=1) for features in batches])


def fit(features: torch.Tensor, labels: torch.Tensor, classes: int, hidden: int | None, seed: int = 0) -> nn.Module:
    """A classifier on standardised features: linear (``hidden`` None) or one hidden layer, full-batch Adam with
    weight decay, :data:`STEPS` steps, seeded."""
    torch.manual_seed(seed)
    mean, std = features.mean(dim=0), features.std(dim=0).clamp(min=1e-6)
    body = (
        nn.Linear(features.shape[1], classes)
        if hidden is None
        else nn.Sequential(nn.Linear(features.shape[1], hidden), nn.GELU(), nn.Linear(hidden, classes))
    )
    optimizer = torch.optim.AdamW(body.parameters(), lr=1e-2, weight_decay=WEIGHT_DECAY)
    standard = (features - mean) / std
    for _ in range(STEPS):
        optimizer.zero_grad()
        F.cross_entropy(body(standard), labels).backward()
        optimizer.step()
    return nn.Sequential(Standardise(mean, std), body).eval()


class Standardise(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.std


def probe(
    model: Any,
    train: list[Item],
    heldout: list[Item],
    *,
    batch_size: int = 16,
    seed: int = 0,
    cache: bool = True,
    cache_dir: Any = None,
) -> list[ProbeScore]:
    """Linear and MLP probes per category (in sorted order; all items when there are none), trained on ``train``'s encoder
    features against their normalised answers, scored on ``heldout``'s (an answer no training item has is wrong).
    Frozen encoders' features come from the feature cache, as in :func:`.run.evaluate`."""
    model.eval()
    if cache:
        train = with_cached_features(model, train, cache_dir, batch_size)
        heldout = with_cached_features(model, heldout, cache_dir, batch_size)
    train_features = pooled_features(model, train, batch_size)
    heldout_features = pooled_features(model, heldout, batch_size)
    results = []
    for category in sorted({item.category or "all" for item in train}):
        train_rows = [i for i, item in enumerate(train) if (item.category or "all") == category]
        test_rows = [i for i, item in enumerate(heldout) if (item.category or "all") == category]
        if not test_rows:
            continue
        labels = [normalise(train[i].reference) for i in train_rows]
        classes = sorted(set(labels))
        if len(classes) > MAX_CLASSES:
            raise InputError(
                f"The answers of category {category!r} take {len(classes)} distinct values; a probe needs labels "
                f"(at most {MAX_CLASSES} values: classes, colours, counts), not free text."
            )
        index = {label: n for n, label in enumerate(classes)}
        targets = torch.tensor([index[label] for label in labels])
        truth = [index.get(normalise(heldout[i].reference), -1) for i in test_rows]
        scores = {}
        for name, hidden in (("linear", None), ("mlp", HIDDEN)):
            classifier = fit(train_features[train_rows], targets, len(classes), hidden, seed)
            with torch.no_grad():
                picked = classifier(heldout_features[test_rows]).argmax(dim=-1).tolist()
            scores[name] = score([float(p == t) for p, t in zip(picked, truth, strict=True)])
        results.append(ProbeScore(category, classes, len(train_rows), scores["linear"], scores["mlp"]))
    return results


def probe_data(model: Any, data: Any, heldout: Any = None, *, seed: int = 0) -> tuple[list[Item], list[Item]]:
    """Training and held-out items: ``data`` and ``heldout`` read as ``mmllm eval`` reads data, or ``data`` split."""
    from mmllm_sdk.default_plugins.recipes.data import read_data

    train = items_of(read_data(data, {**model.encoders}))
    if heldout is None:
        return split(train, seed)
    return train, items_of(read_data(heldout, {**model.encoders}))


def as_report(items: list[Item]) -> Any:
    """Items as a :class:`DataReport` again (each prompt with its reference answer), for :func:`.run.evaluate`."""
    from mmllm_sdk.data.examples import Conversation, Message, TextPart
    from mmllm_sdk.data.formats import CONVERSATION, DataReport
    from mmllm_sdk.data.messages import ANSWER_ROLE

    examples = [
        Conversation((*item.prompt.messages, Message(ANSWER_ROLE, (TextPart(item.reference),))), item.prompt.source)
        for item in items
    ]
    categories = [item.category or "all" for item in items]
    return DataReport(examples, [], CONVERSATION, categories=categories, choices=[item.choices for item in items])
