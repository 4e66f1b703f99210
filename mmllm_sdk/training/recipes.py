"""Recipes: what a training stage trains, on which kind of data, with which Trainer (pt, sft, dpo, plugins')."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from mmllm_sdk.validation import StrictModel

if TYPE_CHECKING:
    from mmllm_sdk.model.modeling import MMLLM


class NoOptions(StrictModel):
    """A recipe without options of its own."""


@dataclass(frozen=True)
class Recipe:
    """A training stage. Plugins register their own with ``register_recipes``: ``register(name, Recipe(...))``."""

    description: str
    kind: Literal["conversation", "preference", "unpaired", "any"]  # the examples it trains on (any: every kind)
    default_trainable: tuple[str, ...]  # component paths (globs) trained unless the recipe spec says otherwise
    trainer: str = "mmllm_sdk.training.trainer:MMTrainer"  # module:Class of a transformers.Trainer subclass
    options: type[StrictModel] = NoOptions  # validates the recipe spec's ``options:``
    train_on: str = "assistant"  # which assistant turns carry labels: assistant | last_assistant
    requires_peft: bool = False  # the recipe needs adapters on the LLM (DPO trains them by default)
    # module:Class of a collator(model, max_length) other than the kind's (kind "unpaired" has none of its own: kto's
    # is mmllm_sdk.default_plugins.recipes.preference:UnpairedCollator)
    collator_class: str | None = None
    packing: bool = False  # the recipe trains on packed rows (``packing: true``): its loss is per token, not per row
    caches_signal_states: bool = False  # the trainer takes state_cache_dir (align-output: the LLM's signal states)
    # TrainingArguments the recipe spec's ``training:`` overrides (a recipe's learning rate, its schedule)
    training_defaults: Mapping[str, Any] = field(default_factory=dict)

    @property
    def trainer_class(self) -> type:
        """The Trainer subclass, imported on first use (listing recipes stays cheap)."""
        module, _, name = self.trainer.partition(":")
        return getattr(importlib.import_module(module), name)

    def collator(self, model: MMLLM, max_length: int | None) -> Callable[[Sequence[dict[str, Any]]], dict[str, Any]]:
        if self.collator_class is not None:
            module, _, name = self.collator_class.partition(":")
            return getattr(importlib.import_module(module), name)(model, max_length)
        if self.kind == "preference":
            return PreferenceCollator(model, max_length)
        return ConversationCollator(model, max_length, self.train_on)


@dataclass
class ConversationCollator:
    """Conversation examples -> a processor batch with labels on the assistant turns."""

    model: MMLLM
    max_length: int | None
    train_on: str = "assistant"

    def __call__(self, examples: Sequence[Any]) -> dict[str, Any]:
        """``examples``: :class:`Conversation` objects (or dicts in the message format, parsed here)."""
        from mmllm_sdk.data.formats import as_example

        conversations = [as_example(example) for example in examples]
        return self.model.processor(conversations, max_length=self.max_length, train_on=self.train_on)


@dataclass
class PreferenceCollator:
    """Preference pairs -> one batch of 2B rows: the B chosen conversations, then the B rejected ones. One forward
    pass scores both (what data-parallel training needs); labels cover only the final answer, the one compared."""

    model: MMLLM
    max_length: int | None

    def __call__(self, examples: Sequence[Any]) -> dict[str, Any]:
        """``examples``: :class:`PreferencePair` objects (or dicts with 'prompt', 'chosen' and 'rejected')."""
        from mmllm_sdk.data.formats import as_example

        chosen, rejected = zip(*(as_example(example).conversations() for example in examples), strict=True)
        return self.model.processor([*chosen, *rejected], max_length=self.max_length, train_on="last_assistant")
