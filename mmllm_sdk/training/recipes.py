"""Recipes: what a training stage trains, on which kind of data, with which Trainer (pt, sft, dpo, plugins')."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from mmllm_sdk.validation import StrictModel

if TYPE_CHECKING:
    from mmllm_sdk.model.modeling import MMLLM


class NoOptions(StrictModel):
    """A recipe without options of its own."""


@dataclass(frozen=True)
class Recipe:
    """A training stage. Plugins register their own with ``register_recipes``: ``register(name, Recipe(...))``."""

    description: str
    kind: Literal["conversation", "preference"]  # the examples it trains on
    default_trainable: tuple[str, ...]  # component paths (globs) trained unless the recipe spec says otherwise
    trainer: str = "mmllm_sdk.training.trainer:MMTrainer"  # module:Class of a transformers.Trainer subclass
    options: type[StrictModel] = NoOptions  # validates the recipe spec's ``options:``
    train_on: str = "assistant"  # which assistant turns carry labels: assistant | last_assistant
    requires_peft: bool = False  # the recipe needs adapters on the LLM (DPO trains them by default)
    collator_class: str | None = None  # module:Class of a collator(model, max_length) other than the kind's
    caches_signal_states: bool = False  # the trainer takes state_cache_dir (align-output: the LLM's signal states)

    @property
    def trainer_class(self) -> type:
        """The Trainer subclass, imported on first use (listing recipes stays cheap)."""
        module, _, name = self.trainer.partition(":")
        return getattr(importlib.import_module(module), name)

    def collator(self, model: MMLLM, max_length: int | None) -> Callable[[Sequence[dict[str, Any]]], dict[str, Any]]:
        """Examples -> a batch for ``trainer_class``."""
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

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return self.model.processor(
            [example["messages"] for example in examples], max_length=self.max_length, train_on=self.train_on
        )


@dataclass
class PreferenceCollator:
    """Preference pairs -> one batch of 2B rows: the B chosen conversations, then the B rejected ones.

    One forward pass scores both (what data-parallel training needs); labels cover only
    the final answer, the one the pair compares.
    """

    model: MMLLM
    max_length: int | None

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        chosen = [[*example["prompt"], *example["chosen"]] for example in examples]
        rejected = [[*example["prompt"], *example["rejected"]] for example in examples]
        return self.model.processor(chosen + rejected, max_length=self.max_length, train_on="last_assistant")


class AlignOptions(StrictModel):
    """Options of ``align-output``."""

    lm_weight: float = Field(0.0, ge=0)  # adds this times the LM loss on the signal tokens (teaches emitting them)
    # adds this times the generator's own denoising loss on each caption's item (caption records with files)
    denoising_weight: float = Field(0.0, ge=0)


class DPOOptions(StrictModel):
    beta: float = Field(0.1, gt=0)  # strength of the KL constraint to the reference policy (the DPO paper's β)


PT = Recipe(
    description="Multimodal pre-training: X-text pairs, caption loss, trains the input projectors.",
    kind="conversation",
    default_trainable=("inputs.*.projector",),
)
SFT = Recipe(
    description="Instruction tuning: conversations, loss on assistant turns, projectors plus PEFT adapters "
    "(and, for any-to-any models, the signal tokens' rows, so that the LLM learns when to emit them).",
    kind="conversation",
    default_trainable=("inputs.*.projector", "outputs.*.signal_tokens"),  # adapters train whenever `peft:` is set
)
DPO = Recipe(
    description="Preference tuning with DPO: trains the adapters; the reference policy is the model as DPO starts.",
    kind="preference",
    default_trainable=(),
    trainer="mmllm_sdk.training.trainer:DPOTrainer",
    options=DPOOptions,
    train_on="last_assistant",
    requires_peft=True,
)


ALIGN_OUTPUT = Recipe(
    description="Decoding-side alignment (NExT-GPT): captions -> signal states -> output projector, L2 to the "
    "generator's own conditioning; trains the output projectors and the signal tokens' rows.",
    kind="conversation",
    default_trainable=("outputs.*.output_projector", "outputs.*.signal_tokens"),
    trainer="mmllm_sdk.training.align:AlignOutputTrainer",
    collator_class="mmllm_sdk.training.align:AlignCollator",
    caches_signal_states=True,
    options=AlignOptions,
)
