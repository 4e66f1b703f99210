"""Built-in training recipes: prealign, pt, sft, dpo, simpo, orpo, kto, grpo and align-output, registered as a
third-party recipe would be.

Each is a :class:`~mmllm_sdk.training.recipes.Recipe`; the Trainer subclasses (``preference.py``, ``grpo.py``,
``align.py``, ``prealign.py``) are imported only when a run uses them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from mmllm_sdk.default_plugins.rewards import RewardSpec, resolve_rewards
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


class GRPOOptions(StrictModel):
    """Options of ``grpo``, named as TRL's GRPOConfig names them (defaults as GRPO's paper where TRL's moved on)."""

    # registered rewards, by name or {name, weight, params}; a completion's reward is their weighted sum
    rewards: list[str | RewardSpec] = Field(default_factory=lambda: ["exact"], min_length=1)
    num_generations: int = Field(8, ge=2)  # answers sampled per prompt (G): the group its advantages are relative to
    max_completion_length: int = Field(256, ge=1)  # new tokens per answer at most
    temperature: float = Field(1.0, gt=0)  # sampling temperature (also applied to the log-probabilities, as TRL)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)  # 0: no top-k cut
    beta: float = Field(0.04, ge=0)  # weight of the KL penalty to the reference policy (0: no reference pass)
    epsilon: float = Field(0.2, gt=0, lt=1)  # the clipping range of the probability ratio: [1 - ε, 1 + ε_high]
    epsilon_high: float | None = Field(None, gt=0)  # ε_high (DAPO's clip-higher); None: ε
    num_iterations: int = Field(1, ge=1)  # μ: optimizer steps on each batch of sampled answers
    scale_rewards: Literal["group", "batch", "none"] = "group"  # advantages divided by the group's spread, or …
    loss_type: Literal["grpo", "bnpo", "dr_grpo"] = "grpo"  # how token losses are averaged (see grpo.grpo_loss)

    @field_validator("rewards")
    @classmethod
    def _registered(cls, rewards: list[str | RewardSpec]) -> list[str | RewardSpec]:
        resolve_rewards(rewards)  # an unknown name or bad params fail here, before any weight loads
        return rewards


# A projector and LoRA adapters trained for a few hundred steps learn fastest at 1e-3 (docs/alignment.md measures
# 2e-4, LoRA's usual rate, and the Trainer's 5e-5 against it); the recipe spec's training.learning_rate overrides it.
LEARNING_RATE = {"learning_rate": 1e-3}

PT = Recipe(
    description="Multimodal pre-training: X-text pairs, caption loss, trains the input projectors.",
    kind="conversation",
    default_trainable=("inputs.*.projector",),
    packing=True,
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
    packing=True,
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
GRPO = Recipe(
    description="Reinforcement learning with GRPO: answers sampled per prompt, scored by rewards (register_rewards: "
    "the metrics, format, plugins'), group-relative advantages, a KL penalty to the model as GRPO starts; trains "
    "what sft trains.",
    kind="any",  # the prompts of conversations, preference pairs or unpaired answers, and their reference answers
    default_trainable=("inputs.*.projector", "outputs.*.signal_tokens"),
    trainer="mmllm_sdk.default_plugins.recipes.grpo:GRPOTrainer",
    collator_class="mmllm_sdk.default_plugins.recipes.grpo:PromptCollator",
    options=GRPOOptions,
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
    register("grpo", GRPO)
    register("align-output", ALIGN_OUTPUT)
