"""Recipes: what a training stage trains, on which kind of data, with which Trainer (pt, sft, dpo, plugins')."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from mmllm_sdk.training.trainer import MMTrainer, sequence_logprobs
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
    trainer_class: type[MMTrainer] = MMTrainer
    options: type[StrictModel] = NoOptions  # validates the recipe spec's ``options:``
    train_on: str = "assistant"  # which assistant turns carry labels: assistant | last_assistant
    requires_peft: bool = False  # the recipe needs adapters on the LLM (DPO's reference is the model without them)

    def collator(self, model: MMLLM, max_length: int | None) -> Callable[[Sequence[dict[str, Any]]], dict[str, Any]]:
        """Examples -> a batch for ``trainer_class``."""
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


class DPOOptions(StrictModel):
    beta: float = Field(0.1, gt=0)  # strength of the KL constraint to the reference policy (the DPO paper's β)


class DPOTrainer(MMTrainer):
    """Direct Preference Optimization (Rafailov et al., 2023).

    ``loss = -log σ(β [(log π(y_w|x) - log π_ref(y_w|x)) - (log π(y_l|x) - log π_ref(y_l|x))])``;
    the reference π_ref is the same model with its adapters disabled, so no second copy of
    the LLM is held.
    """

    def __init__(self, *args: Any, beta: float = 0.1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.beta = beta
        self._metrics: dict[str, list[float]] = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from mmllm_sdk.training.peft import adapters_disabled

        outputs = model(**inputs, supervised_only=True)
        policy = sequence_logprobs(outputs.logits, outputs.targets)  # (2B,)
        unwrapped = self.accelerator.unwrap_model(model)
        with torch.no_grad(), adapters_disabled(unwrapped.llm):
            reference_out = unwrapped(**inputs, supervised_only=True)
            reference = sequence_logprobs(reference_out.logits, reference_out.targets)  # (2B,)
        pairs = policy.shape[0] // 2
        chosen_reward = self.beta * (policy[:pairs] - reference[:pairs]).detach()
        rejected_reward = self.beta * (policy[pairs:] - reference[pairs:]).detach()
        margin = (policy[:pairs] - reference[:pairs]) - (policy[pairs:] - reference[pairs:])
        loss = -F.logsigmoid(self.beta * margin).mean()
        for key, value in (
            ("rewards/chosen", chosen_reward.mean()),
            ("rewards/rejected", rejected_reward.mean()),
            ("rewards/margin", (chosen_reward - rejected_reward).mean()),
            ("rewards/accuracy", (chosen_reward > rejected_reward).float().mean()),
        ):
            self._metrics.setdefault(key, []).append(value.item())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        for key, values in self._metrics.items():
            logs[key] = sum(values) / len(values)
        self._metrics.clear()
        super().log(logs, *args, **kwargs)


PT = Recipe(
    description="Multimodal pre-training: X-text pairs, caption loss, trains the input projectors.",
    kind="conversation",
    default_trainable=("inputs.*.projector",),
)
SFT = Recipe(
    description="Instruction tuning: conversations, loss on assistant turns, projectors plus PEFT adapters.",
    kind="conversation",
    default_trainable=("inputs.*.projector",),  # adapters train whenever `peft:` is set
)
DPO = Recipe(
    description="Preference tuning with DPO: the reference policy is the model with its adapters disabled.",
    kind="preference",
    default_trainable=(),
    trainer_class=DPOTrainer,
    options=DPOOptions,
    train_on="last_assistant",
    requires_peft=True,
)
