"""Frozen encoders' features for a run: the feature cache filled before training, features of a sample of items, and
new input projectors initialised from them."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from mmllm_sdk.data.examples import FEATURES_KEY, Example, MediaPart
from mmllm_sdk.default_plugins.recipes.processes import say
from mmllm_sdk.registry import get_registry
from mmllm_sdk.spec import ENCODER, PROJECTOR

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from mmllm_sdk.model.modeling import MMLLM

INIT_SAMPLE = 512  # training items whose features initialise a new input projector


@dataclass(frozen=True)
class CachedFeatures:
    """Frozen encoders' features in a feature cache: per modality, the encoder's fingerprint and feature shape."""

    cache: Any  # a mmllm_sdk.default_plugins.recipes.feature_cache.FeatureCache
    encoders: dict[str, tuple[str, tuple[int, int]]]

    def attach(self, item: MediaPart) -> MediaPart:
        """``item`` carrying its cached features, or as it is when the cache has none for it."""
        if item.modality not in self.encoders:
            return item
        fingerprint, shape = self.encoders[item.modality]
        (features,) = self.cache.get_many([self.cache.item_key(fingerprint, item.source)], shape=shape)
        return item if features is None else replace(item, features=features)


def cache_features(
    model: MMLLM,
    directory: str | os.PathLike[str],
    examples: list[Example],
    batch_size: int,
    first: Callable[[str], AbstractContextManager[Any]] = lambda desc: nullcontext(),
) -> tuple[dict[str, int], CachedFeatures | None]:
    """Encode the examples' media files with each frozen encoder into the feature cache in ``directory``: (items
    encoded now per modality, the features to attach to items). ``first(desc)``: a context in which the main process
    fills the cache before the others read it (the Trainer's ``main_process_first``)."""
    from mmllm_sdk.default_plugins.recipes.feature_cache import FeatureCache, encoder_fingerprint, fill_cache

    cache = FeatureCache(directory)
    encoders, encoded = {}, {}
    media = [part for e in examples for part in e.parts() if isinstance(part, MediaPart)]
    for modality, encoder in model.encoders.items():
        if not model.is_frozen(ENCODER.format(modality)):
            continue  # a trained encoder's features change every step
        fingerprint = encoder_fingerprint(encoder, model.spec.inputs[modality].encoder, model.spec.seed)
        sources = [part.source for part in media if part.modality == modality]
        if not sources:
            continue  # the data hold no file of this modality: nothing to cache, nothing to say
        with first(f"{modality} feature cache"):
            load = get_registry().modality(modality).load
            encoded[modality] = fill_cache(encoder, cache, fingerprint, sources, load, batch_size=batch_size)
        encoders[modality] = (fingerprint, (encoder.num_tokens, encoder.output_dim))
        say(
            f"{modality} feature cache ({directory}): {encoded[modality]} item(s) encoded now, "
            f"{len(set(sources)) - encoded[modality]} already cached"
        )
    return encoded, CachedFeatures(cache, encoders) if encoders else None


def encoder_feature_batches(
    model: MMLLM, modality: str, parts: list[MediaPart], batch_size: int
) -> Iterator[torch.Tensor]:
    """The encoder features of ``parts`` (input items of ``modality``), ``batch_size`` items at a time: (B, N, D) each,
    float32 on the CPU. Cached features are used where the items carry them."""
    encoder = model.encoders[modality]
    with torch.no_grad():
        for first in range(0, len(parts), batch_size):
            inputs = model.processor.modality_inputs(modality, parts[first : first + batch_size])
            if FEATURES_KEY in inputs:
                yield inputs[FEATURES_KEY].float().cpu()
            else:
                yield encoder(**{k: v.to(model.device) for k, v in inputs.items()}).float().cpu()


def initialise_projectors(model: MMLLM, train: Dataset, batch_size: int, seed: int) -> None:
    """Each trained input projector :meth:`~InputProjector.initialise`d from the features of a seeded sample of the
    training items of its modality (at most :data:`INIT_SAMPLE`)."""
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    for modality, projector in model.input_projectors.items():
        if model.is_frozen(PROJECTOR.format(modality)):
            continue
        parts: list[MediaPart] = []
        for index in order:
            parts += [p for p in train[index].parts() if isinstance(p, MediaPart) and p.modality == modality]
            if len(parts) >= INIT_SAMPLE:
                break
        if parts:
            features = torch.cat(list(encoder_feature_batches(model, modality, parts[:INIT_SAMPLE], batch_size)))
            reference = next(projector.parameters(), None)
            projector.initialise(features if reference is None else features.to(reference.device, reference.dtype))
