"""The preference recipes' Trainers: DPO (and IPO, hinge) and KTO against the model as the run starts, and the
reference-free SimPO and ORPO. Their losses are in :mod:`preference_losses`. GRPO (``grpo.py``) shares the reference
policy and the logging."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from mmllm_sdk.data.examples import Conversation
from mmllm_sdk.data.formats import as_example
from mmllm_sdk.default_plugins.recipes.preference_losses import dpo_loss, kto_loss, orpo_odds_ratio_loss, simpo_loss
from mmllm_sdk.model.processor import IGNORE_INDEX
from mmllm_sdk.training.trainer import MMTrainer

if TYPE_CHECKING:
    from mmllm_sdk.model.modeling import MMLLM


class StartingPoint:
    """The trained tensors' values as a run starts, put back in place for a reference pass.

    A reference policy π_ref that is the model as the stage starts (the SFT model, as in the DPO paper): the starting
    values of the trained tensors (the adapters, and a projector if it trains) are copied once, megabytes rather than
    a second LLM. So a stage that continues from an SFT checkpoint with trained adapters stays close to that
    checkpoint, not to the model without its adapters.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.values = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}

    @contextlib.contextmanager
    def in_place(self, model: torch.nn.Module) -> Iterator[None]:
        """Within this block ``model`` computes π_ref: the trained tensors hold their starting values, eval mode."""
        params = dict(model.named_parameters())
        current = {name: params[name].detach().clone() for name in self.values}
        training = model.training
        with torch.no_grad():
            for name, start in self.values.items():
                params[name].copy_(start)
        model.eval()
        try:
            yield
        finally:
            model.train(training)
            with torch.no_grad():
                for name, value in current.items():
                    params[name].copy_(value)


@dataclass
class UnpairedCollator:
    """Labelled answers (KTO) -> one batch of 2B rows: the B prompts with their own answers, then the B prompts each
    with the next example's answer (the mismatched pairs whose log-ratio estimates the KL term), labels on the
    answers only, and ``desirable`` (B,) booleans."""

    model: MMLLM
    max_length: int | None

    def __call__(self, examples: Sequence[Any]) -> dict[str, Any]:
        """``examples``: :class:`LabelledAnswer` objects (or dicts with 'prompt', 'completion' and 'label')."""
        answers = [as_example(example) for example in examples]
        matched = [answer.conversations()[0] for answer in answers]
        shifted = answers[1:] + answers[:1]
        mismatched = [Conversation(a.prompt + b.completion, a.source) for a, b in zip(answers, shifted, strict=True)]
        batch = self.model.processor([*matched, *mismatched], max_length=self.max_length, train_on="last_assistant")
        batch["desirable"] = torch.tensor([answer.desirable for answer in answers])
        return batch


class RecordingTrainer(MMTrainer):
    """A Trainer whose loss reports more than itself: each batch's values (:meth:`record`) are averaged into the
    next log entry (the console, TensorBoard …) by their names there."""

    token_weighted_loss = False  # a mean over the batch's examples
    uses_reference = False  # the loss compares the policy with the model as the run starts (``self.reference``)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._metrics: dict[str, list[float]] = {}
        self.reference: StartingPoint | None = None

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """The reference is taken as training begins: after the run's set-up (new projectors initialised), before a
        checkpoint to resume from is loaded."""
        self.reference = StartingPoint(self.model) if self.uses_reference else None
        return super().train(*args, **kwargs)

    def starting_point(self) -> StartingPoint:
        """The reference policy: the model as training began (as now, for an evaluation before any training)."""
        if self.reference is None:
            self.reference = StartingPoint(self.model)
        return self.reference

    def record(self, values: dict[str, torch.Tensor | float]) -> None:
        """Batch means to average into the next log entry, by their names there."""
        for key, value in values.items():
            mean = value.detach().float().mean().item() if isinstance(value, torch.Tensor) else float(value)
            self._metrics.setdefault(key, []).append(mean)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        for key, values in self._metrics.items():
            logs[key] = sum(values) / len(values)
        self._metrics.clear()
        super().log(logs, *args, **kwargs)


class PreferenceTrainer(RecordingTrainer):
    """What the pairwise recipes share: batches of B chosen rows then B rejected rows (PreferenceCollator), the
    answers' log-probabilities from one forward pass, a mean over pairs, and their metrics averaged into each log."""

    @staticmethod
    def answer_logprobs(outputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's answer: (sum of its tokens' log-probabilities, its token count), both (2B,), from a forward with
        ``token_logprobs`` (no (2B, K, V) logits where the LM head splits from its decoder)."""
        counts = (outputs.targets != IGNORE_INDEX).sum(dim=-1).clamp(min=1)
        return outputs.logprobs.sum(dim=-1), counts

    def record_rewards(self, chosen: torch.Tensor, rejected: torch.Tensor) -> None:
        chosen, rejected = chosen.detach(), rejected.detach()
        self.record(
            {
                "rewards/chosen": chosen,
                "rewards/rejected": rejected,
                "rewards/margin": chosen - rejected,
                "rewards/accuracy": (chosen > rejected).float(),
            }
        )


class DPOTrainer(PreferenceTrainer):
    """Direct Preference Optimization (Rafailov et al., 2023) and its ``loss_type`` variants ``ipo`` and ``hinge``
    (:func:`~preference_losses.dpo_loss`), against the model as the stage starts (:class:`StartingPoint`). IPO's
    log-probabilities are means over each answer's tokens, as in its paper; the others' are sums."""

    uses_reference = True

    def __init__(
        self, *args: Any, beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.beta, self.loss_type, self.label_smoothing = beta, loss_type, label_smoothing

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        unwrapped = self.accelerator.unwrap_model(model)
        with (
            torch.no_grad(),
            self.starting_point().in_place(unwrapped),
        ):  # first: the policy pass's graph needs its weights
            reference, _ = self.answer_logprobs(unwrapped(**inputs, supervised_only=True, token_logprobs=True))  # (2B,)
        outputs = model(**inputs, supervised_only=True, token_logprobs=True)
        policy, counts = self.answer_logprobs(outputs)  # (2B,)
        if self.loss_type == "ipo":
            policy, reference = policy / counts, reference / counts
        pairs = policy.shape[0] // 2
        losses = dpo_loss(
            policy[:pairs],
            policy[pairs:],
            reference[:pairs],
            reference[pairs:],
            beta=self.beta,
            loss_type=self.loss_type,
            label_smoothing=self.label_smoothing,
        )
        rewards = self.beta * (policy - reference)
        self.record_rewards(rewards[:pairs], rewards[pairs:])
        loss = losses.mean()
        return (loss, outputs) if return_outputs else loss


class SimPOTrainer(PreferenceTrainer):
    """SimPO (Meng et al., 2024): no reference policy; the reward is β times an answer's mean token log-probability,
    and the chosen answer must beat the rejected one by the margin γ (:func:`~preference_losses.simpo_loss`)."""

    def __init__(
        self, *args: Any, beta: float = 2.0, gamma: float = 0.5, label_smoothing: float = 0.0, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.beta, self.gamma, self.label_smoothing = beta, gamma, label_smoothing

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs, supervised_only=True, token_logprobs=True)
        sums, counts = self.answer_logprobs(outputs)
        means, pairs = sums / counts, sums.shape[0] // 2
        losses = simpo_loss(
            means[:pairs], means[pairs:], beta=self.beta, gamma=self.gamma, label_smoothing=self.label_smoothing
        )
        self.record_rewards(self.beta * means[:pairs], self.beta * means[pairs:])
        loss = losses.mean()
        return (loss, outputs) if return_outputs else loss


class ORPOTrainer(PreferenceTrainer):
    """ORPO (Hong et al., 2024): no reference policy and no SFT stage before it; the chosen answers' NLL (a mean over
    their tokens) plus β times the odds-ratio term (:func:`~preference_losses.orpo_odds_ratio_loss`)."""

    def __init__(self, *args: Any, beta: float = 0.1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.beta = beta

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs, supervised_only=True, token_logprobs=True)
        sums, counts = self.answer_logprobs(outputs)
        means, pairs = sums / counts, sums.shape[0] // 2
        nll = -sums[:pairs].sum() / counts[:pairs].sum()
        odds_ratio = orpo_odds_ratio_loss(means[:pairs], means[pairs:], beta=self.beta)
        self.record({"nll_loss": nll, "odds_ratio_loss": odds_ratio})
        self.record_rewards(self.beta * means[:pairs], self.beta * means[pairs:])
        loss = nll + odds_ratio.mean()
        return (loss, outputs) if return_outputs else loss


class KTOTrainer(PreferenceTrainer):
    """KTO (Ethayarajh et al., 2024) on unpaired answers labelled desirable or not (UnpairedCollator's batches: the B
    answers, then B mismatched prompt-answer pairs), against the model as the stage starts. The KL estimate ``z`` is
    the batch's mean log-ratio on the mismatched pairs (averaged over processes), without gradient, as in the paper
    and TRL (:func:`~preference_losses.kto_loss`)."""

    uses_reference = True

    def __init__(
        self,
        *args: Any,
        beta: float = 0.1,
        desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if self.args.per_device_train_batch_size < 2:
            raise ValueError(
                f"kto needs per_device_train_batch_size of at least 2 (got {self.args.per_device_train_batch_size}): "
                "its KL estimate pairs each prompt with another example's answer in the same batch"
            )
        self.beta, self.desirable_weight, self.undesirable_weight = beta, desirable_weight, undesirable_weight

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        desirable = inputs.pop("desirable").to(torch.bool)
        unwrapped = self.accelerator.unwrap_model(model)
        with torch.no_grad(), self.starting_point().in_place(unwrapped):
            reference, _ = self.answer_logprobs(unwrapped(**inputs, supervised_only=True, token_logprobs=True))  # (2B,)
        outputs = model(**inputs, supervised_only=True, token_logprobs=True)
        policy, _ = self.answer_logprobs(outputs)
        rows = policy.shape[0] // 2
        kl = (policy[rows:] - reference[rows:]).detach().mean()
        if self.accelerator.num_processes > 1:
            kl = self.accelerator.gather(kl.reshape(1)).mean()
        losses = kto_loss(
            policy[:rows],
            reference[:rows],
            desirable.to(policy.device),
            kl,
            beta=self.beta,
            desirable_weight=self.desirable_weight,
            undesirable_weight=self.undesirable_weight,
        )
        rewards = self.beta * (policy[:rows] - reference[:rows]).detach()
        logged = {"kl": kl}
        if desirable.any():
            logged["rewards/chosen"] = rewards[desirable.to(rewards.device)]
        if (~desirable).any():
            logged["rewards/rejected"] = rewards[~desirable.to(rewards.device)]
        self.record(logged)
        loss = losses.mean()
        return (loss, outputs) if return_outputs else loss
