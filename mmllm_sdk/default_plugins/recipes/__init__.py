"""Built-in training recipes: prealign, pt, sft, dpo, simpo, orpo, kto and align-output, registered as a
third-party recipe would be.

Each is a :class:`~mmllm_sdk.training.recipes.Recipe`; the Trainer subclasses (``preference.py``, ``align.py``,
``prealign.py``) are imported only when a run uses them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mmllm_sdk.hookspecs import hookimpl
from mmllm_sdk.training.recipes import Recipe
from mmllm_sdk.validation import StrictModel


class AlignOptions(StrictModel):
    """Options of ``align-output``."""

    lm_weight: float = Field(0.0, ge=0)  # adds this times the LM loss on the signal tokens (teaches emitting them)
    # adds this times the generator's own denoising loss on each caption's item (caption records with files)
    denoising_weight: float = Field(0.0, ge=0)


class DPOOptions(StrictModel):
    beta: float = Field(0.1, gt=0)  # strength of the KL constraint to the reference policy (the DPO paper's β; IPO's τ)
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"  # DPO's loss, IPO's squared one, SLiC's hinge
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)  # the share of pairs taken as mislabelled (sigmoid only)

    @model_validator(mode="after")
    def _smoothing_needs_sigmoid(self) -> DPOOptions:
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ValueError(
                f"label_smoothing {self.label_smoothing} applies to loss_type 'sigmoid' only, not {self.loss_type!r}; "
                "drop it or use loss_type: sigmoid"
            )
        return self


class SimPOOptions(StrictModel):
    beta: float = Field(2.0, gt=0)  # scales the reward: an answer's mean token log-probability (the paper's β)
    gamma: float = Field(0.5, ge=0)  # the target reward margin between chosen and rejected answers (the paper's γ)
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)


class KTOOptions(StrictModel):
    beta: float = Field(0.1, gt=0)  # strength of the KL constraint to the reference policy (the paper's β)
    desirable_weight: float = Field(1.0, gt=0)  # λ_D: weight of the desirable answers' losses
    undesirable_weight: float = Field(1.0, gt=0)  # λ_U: weight of the undesirable answers' losses


class ORPOOptions(StrictModel):
    beta: float = Field(0.1, gt=0)  # weight of the odds-ratio term against the chosen answers' NLL (the paper's λ)


# A projector and LoRA adapters trained for a few hundred steps learn fastest at 1e-3 (docs/alignment.md measures
# 2e-4, LoRA's usual rate, and the Trainer's 5e-5 against it); the recipe spec's training.learning_rate overrides it.
LEARNING_RATE = {"learning_rate": 1e-3}

PT = Recipe(
    description="Multimodal pre-training: X-text pairs, caption loss, trains the input projectors.",
    kind="conversation",
    default_trainable=("inputs.*.projector",),
    training_defaults=LEARNING_RATE,
)
PREALIGN = Recipe(
    description="Pre-alignment without the LLM: pulls each item's soft tokens towards its caption's mean token "
    "embedding; trains the input projectors, a cheap first stage before PT or SFT.",
    kind="conversation",
    default_trainable=("inputs.*.projector",),
    trainer="mmllm_sdk.default_plugins.recipes.prealign:PrealignTrainer",
    training_defaults=LEARNING_RATE,
)
SFT = Recipe(
    description="Instruction tuning: conversations, loss on assistant turns, projectors plus PEFT adapters "
    "(and, for any-to-any models, the signal tokens' rows, so that the LLM learns when to emit them).",
    kind="conversation",
    default_trainable=("inputs.*.projector", "outputs.*.signal_tokens"),  # adapters train whenever `peft:` is set
    training_defaults=LEARNING_RATE,
)
DPO = Recipe(
    description="Preference tuning with DPO (loss_type sigmoid, ipo or hinge): trains the adapters; the reference "
    "policy is the model as DPO starts.",
    kind="preference",
    default_trainable=(),
    trainer="mmllm_sdk.default_plugins.recipes.preference:DPOTrainer",
    options=DPOOptions,
    train_on="last_assistant",
    requires_peft=True,
)
KTO = Recipe(
    description="Preference tuning with KTO on unpaired answers labelled desirable or not: trains the adapters; the "
    "reference policy is the model as KTO starts.",
    kind="unpaired",
    default_trainable=(),
    trainer="mmllm_sdk.default_plugins.recipes.preference:KTOTrainer",
    collator_class="mmllm_sdk.default_plugins.recipes.preference:UnpairedCollator",
    options=KTOOptions,
    train_on="last_assistant",
    requires_peft=True,
)
SIMPO = Recipe(
    description="Preference tuning with SimPO: no reference policy, the reward is an answer's mean token "
    "log-probability, with a target margin; trains the adapters.",
    kind="preference",
    default_trainable=(),
    trainer="mmllm_sdk.default_plugins.recipes.preference:SimPOTrainer",
    options=SimPOOptions,
    train_on="last_assistant",
    requires_peft=True,
)
ORPO = Recipe(
    description="ORPO: instruction tuning and preference in one stage (the chosen answers' loss plus an odds-ratio "
    "term), no reference policy; trains what sft trains.",
    kind="preference",
    default_trainable=("inputs.*.projector", "outputs.*.signal_tokens"),
    trainer="mmllm_sdk.default_plugins.recipes.preference:ORPOTrainer",
    options=ORPOOptions,
    train_on="last_assistant",
)


ALIGN_OUTPUT = Recipe(
    description="Decoding-side alignment (NExT-GPT): captions -> signal states -> output projector, L2 to the "
    "generator's own conditioning; trains the output projectors and the signal tokens' rows.",
    kind="conversation",
    default_trainable=("outputs.*.output_projector", "outputs.*.signal_tokens"),
    trainer="mmllm_sdk.default_plugins.recipes.align:AlignOutputTrainer",
    collator_class="mmllm_sdk.default_plugins.recipes.align:AlignCollator",
    caches_signal_states=True,
    options=AlignOptions,
)


@hookimpl
def register_recipes(register):
    register("prealign", PREALIGN)
    register("pt", PT)
    register("sft", SFT)
    register("dpo", DPO)
    register("simpo", SIMPO)
    register("orpo", ORPO)
    register("kto", KTO)
    register("align-output", ALIGN_OUTPUT)
