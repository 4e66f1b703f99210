"""The ``grpo`` recipe's Trainer: Group Relative Policy Optimization (Shao et al., 2024, "DeepSeekMath") on multimodal
prompts, with rewards from ``register_rewards`` plugins.

Each batch of B prompts (conversations up to their last answer, which is the reference; or a preference pair's
prompt, its chosen answer the reference; or an unpaired answer's prompt) is answered
``num_generations`` (G) times by sampling; every answer gets the weighted sum of the rewards; advantages are the rewards
less their group's mean (over the prompt's G answers), divided by the group's spread; the loss is PPO's clipped
objective per answer token plus β times the KL estimate to the model as the run starts (:class:`StartingPoint`).
The options are TRL's GRPOConfig's: ``num_iterations`` (μ) optimizer steps on each batch of answers, ``epsilon`` (ε)
and ``epsilon_high`` the clipping range, ``loss_type``, ``scale_rewards``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Sampler

from mmllm_sdk.data.examples import Conversation
from mmllm_sdk.default_plugins.recipes.data import prompt_and_reference
from mmllm_sdk.default_plugins.recipes.preference import RecordingTrainer
from mmllm_sdk.default_plugins.rewards import WeightedReward, resolve_rewards
from mmllm_sdk.errors import DataError, MMLLMError, TrainingError
from mmllm_sdk.model.processor import IGNORE_INDEX

if TYPE_CHECKING:
    from mmllm_sdk.model.modeling import MMLLM

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo")


@dataclass
class PromptCollator:
    """Examples -> ``{"prompts": [Conversation], "references": [str | None]}`` (:func:`prompt_and_reference`): the
    Trainer samples the answers."""

    model: MMLLM
    max_length: int | None

    def __call__(self, examples: Sequence[Any]) -> dict[str, Any]:
        prompts, references = zip(*(prompt_and_reference(example) for example in examples), strict=True)
        return {"prompts": list(prompts), "references": list(references)}


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float,
    epsilon: float,
    epsilon_high: float,
    loss_type: str,
    max_completion_length: int,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped policy-gradient loss with a KL penalty, per answer token, aggregated as ``loss_type`` says.

    ``logps``, ``old_logps``, ``ref_logps``, ``mask``: (N, K) per answer token (the policy, the policy that sampled,
    the reference); ``advantages``: (N,). Per token: -min(r·A, clip(r, 1-ε, 1+ε_high)·A) + β·KL with
    r = exp(logp - old) and KL = exp(ref - logp) - (ref - logp) - 1 (Schulman's k3 estimator, as GRPO's paper).
    ``grpo``: each answer's mean over its tokens, then the mean over answers (the paper); ``bnpo``: the mean over every
    answer token of the batch; ``dr_grpo``: the sum over tokens divided by N × ``max_completion_length`` (Dr. GRPO).
    Returns the loss and (detached) the mean KL and the share of tokens whose ratio was clipped.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type {loss_type!r}; it is one of {', '.join(LOSS_TYPES)}")
    mask = mask.to(logps.dtype)
    ratio = torch.exp(logps - old_logps)
    gain = advantages.unsqueeze(1)
    per_token = -torch.min(ratio * gain, ratio.clamp(1 - epsilon, 1 + epsilon_high) * gain)
    clipped = ((ratio < 1 - epsilon) & (gain < 0)) | ((ratio > 1 + epsilon_high) & (gain > 0))
    tokens = mask.sum().clamp(min=1)
    stats = {"clip_ratio": (clipped * mask).sum().detach() / tokens}
    if ref_logps is not None:
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + beta * kl
        stats["kl"] = (kl * mask).sum().detach() / tokens
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()
    elif loss_type == "bnpo":
        loss = (per_token * mask).sum() / tokens
    else:
        loss = (per_token * mask).sum() / (logps.shape[0] * max_completion_length)
    return loss, stats


def group_advantages(rewards: torch.Tensor, group: int, scale: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards (B·G,) -> advantages (B·G,): less their group's mean, divided by the group's standard deviation
    (``scale`` "group"), the batch's ("batch") or not at all ("none"); and each group's standard deviation (B,)."""
    grouped = rewards.view(-1, group)
    spread = grouped.std(dim=1)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "group":
        advantages = advantages / (spread.unsqueeze(1) + 1e-4)
    elif scale == "batch":
        advantages = advantages / (rewards.std() + 1e-4)
    return advantages.flatten(), spread


class RepeatedSteps(Sampler[int]):
    """The indices of ``sampler`` in chunks of one optimizer step's prompts, each chunk ``times`` in a row: the
    optimizer steps of GRPO's ``num_iterations`` see the same prompts (their answers are sampled once)."""

    def __init__(self, sampler: Sampler[int], chunk: int, times: int) -> None:
        self.sampler, self.chunk, self.times = sampler, chunk, times

    def __iter__(self) -> Iterator[int]:
        indices = list(self.sampler)
        for start in range(0, len(indices), self.chunk):
            for _ in range(self.times):
                yield from indices[start : start + self.chunk]

    def __len__(self) -> int:
        return len(self.sampler) * self.times


@contextlib.contextmanager
def without_dropout(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode within the block (gradients still flow): the policy's passes are the policy that sampled."""
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


class GRPOTrainer(RecordingTrainer):
    """GRPO on batches of prompts (:class:`PromptCollator`): B prompts give B × ``num_generations`` answers. See the
    module's text for the objective; the options are the ``grpo`` recipe's (``GRPOOptions``)."""

    def __init__(
        self,
        *args: Any,
        rewards: Sequence[Any] = ("exact",),
        num_generations: int = 8,
        max_completion_length: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        beta: float = 0.04,
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        num_iterations: int = 1,
        scale_rewards: str = "group",
        loss_type: str = "grpo",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if num_generations < 2:
            raise ValueError(
                f"grpo needs num_generations of at least 2 (got {num_generations}): an answer's advantage is its "
                "reward against the other answers to the same prompt"
            )
        self.rewards: list[WeightedReward] = resolve_rewards(rewards)
        self.num_generations, self.max_completion_length = num_generations, max_completion_length
        self.sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k}
        self.beta, self.epsilon, self.epsilon_high = (
            beta,
            epsilon,
            epsilon_high if epsilon_high is not None else epsilon,
        )
        self.num_iterations, self.scale_rewards, self.loss_type = num_iterations, scale_rewards, loss_type
        self._check_references()
        self.uses_reference = bool(beta)  # β 0: no KL term, no reference pass
        self._rollouts: dict[int, dict[str, Any]] = {}  # micro-batch slot -> its sampled answers, reused μ times
        self._rollout_step, self._slot = -1, 0

    def _check_references(self) -> None:
        """Every prompt has a reference when a reward compares answers with it: refused before training starts."""
        needing = [reward.name for reward in self.rewards if reward.reward.needs_reference]
        if not needing:
            return
        for dataset in (self.train_dataset, self.eval_dataset):
            for example in getattr(dataset, "examples", dataset or ()):
                prompt, reference = prompt_and_reference(example)
                if reference is None:
                    raise DataError(
                        f"{prompt.source or 'An example'} has no reference answer (a conversation that ends with a "
                        f"user turn, or an answer labelled undesirable), and reward {needing[0]!r} compares each answer "
                        "with it; give every example its answer, or use rewards that need none (format, or a plugin's)."
                    )

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if self.num_iterations == 1:
            return sampler
        args = self.args
        chunk = args.train_batch_size * args.gradient_accumulation_steps * args.world_size
        return RepeatedSteps(sampler, chunk, self.num_iterations)

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """A batch of prompts -> their sampled answers, scored. In training, the answers of an optimizer step's
        micro-batches are kept and reused for ``num_iterations`` optimizer steps (the sampler repeats the prompts)."""
        if "advantages" in inputs:  # already sampled and scored
            return inputs
        if not self.model.training:
            return self._rollout(inputs)
        if self.state.global_step != self._rollout_step:
            self._rollout_step, self._slot = self.state.global_step, 0
        slot, self._slot = self._slot, self._slot + 1
        if self.state.global_step % self.num_iterations == 0 or slot not in self._rollouts:
            self._rollouts[slot] = self._rollout(inputs)
        return self._rollouts[slot]

    @torch.no_grad()
    def _rollout(self, inputs: dict[str, Any]) -> dict[str, Any]:
        model: MMLLM = self.accelerator.unwrap_model(self.model)
        group = self.num_generations
        prompts = [prompt for prompt in inputs["prompts"] for _ in range(group)]
        references = [reference for reference in inputs["references"] for _ in range(group)]
        with without_dropout(model):
            responses = model.generate_batch(
                prompts, text_only=True, max_new_tokens=self.max_completion_length, **self.sampling
            )
        completions = [response.text for response in responses]
        rewards = self._score(completions, references, prompts)
        advantages, spread = group_advantages(rewards, group, self.scale_rewards)
        batch = self._answered(model, prompts, [response.token_ids for response in responses])
        lengths = torch.tensor([len(response.token_ids) for response in responses], dtype=torch.float)
        ends = model.llm.end_token_ids()
        unfinished = [not response.token_ids or response.token_ids[-1] not in ends for response in responses]
        self.record(
            {
                "reward": rewards,
                "reward_std": spread,
                "completions/mean_length": lengths,
                "completions/min_length": lengths.min(),
                "completions/max_length": lengths.max(),
                "completions/clipped_ratio": torch.tensor(unfinished, dtype=torch.float),
            }
        )
        rollout = {"batch": batch, "advantages": advantages.to(model.device)}
        if self.num_iterations > 1:  # the policy that sampled, against which the later iterations' ratios are taken
            with without_dropout(model):
                rollout["old_logps"], _ = self._token_logprobs(model, batch)
        if self.uses_reference:
            with self.starting_point().in_place(model):
                rollout["ref_logps"], _ = self._token_logprobs(model, batch)
        return rollout

    def _score(self, completions: list[str], references: list[str | None], prompts: list[Conversation]) -> torch.Tensor:
        """Each completion's total: the weighted sum of the rewards that apply to it (a reward's None does not)."""
        total = torch.zeros(len(completions))
        where = f"step {self.state.global_step + 1}"
        for named in self.rewards:
            label = f"Reward {named.name!r} (plugin {named.plugin!r})"
            try:
                values = list(named.reward.score(completions, references=references, prompts=prompts))
            except MMLLMError:
                raise
            except Exception as exc:
                raise TrainingError(f"{label} failed at {where}: {type(exc).__name__}: {exc}") from exc
            if len(values) != len(completions):
                raise TrainingError(
                    f"{label} returned {len(values)} values for {len(completions)} completions at {where}; a reward "
                    "returns one number per completion (None where it does not apply)."
                )
            bad = next((v for v in values if v is not None and not _real(v)), None)
            if bad is not None:
                raise TrainingError(
                    f"{label} returned {bad!r} at {where}; a reward returns finite numbers (None where it does not apply)."
                )
            scored = torch.tensor([math.nan if v is None else float(v) for v in values])
            applies = ~scored.isnan()
            total += named.weight * scored.nan_to_num(0.0)
            if applies.any():
                kept = scored[applies]
                spread = kept.std() if kept.numel() > 1 else torch.tensor(0.0)
                self.record({f"rewards/{named.name}/mean": kept.mean(), f"rewards/{named.name}/std": spread})
        return total

    @staticmethod
    def _answered(model: MMLLM, prompts: list[Conversation], answers: list[list[int]]) -> dict[str, Any]:
        """Each prompt's tokens (as generation saw them) followed by its sampled answer's, padded right; labels on the
        answer tokens only, so that ``forward(supervised_only=True)`` gives their log-probabilities."""
        batch = model.processor(prompts, add_generation_prompt=True, padding_side="right")
        ids, mask = batch.pop("input_ids"), batch.pop("attention_mask")
        rows = [row[: int(n)].tolist() for row, n in zip(ids, mask.sum(dim=1), strict=True)]
        length = max(len(row) + len(answer) for row, answer in zip(rows, answers, strict=True))
        shape = (len(rows), length)
        pad = model.llm.tokenizer.pad_token_id
        input_ids = torch.full(shape, pad, dtype=torch.long)
        labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros(shape, dtype=torch.long)
        for index, (row, answer) in enumerate(zip(rows, answers, strict=True)):
            input_ids[index, : len(row) + len(answer)] = torch.tensor(row + answer, dtype=torch.long)
            labels[index, len(row) : len(row) + len(answer)] = torch.tensor(answer, dtype=torch.long)
            attention[index, : len(row) + len(answer)] = 1
        batch.update(input_ids=input_ids, attention_mask=attention, labels=labels)
        return {
            key: value.to(model.device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()
        }

    def _token_logprobs(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each answer token's log-probability at the sampling temperature (N, K), and which positions are answer
        tokens (N, K)."""
        temperature = self.sampling["temperature"]
        outputs = model(**batch, supervised_only=True, token_logprobs=True, temperature=temperature)
        return outputs.logprobs, outputs.targets != IGNORE_INDEX

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        unwrapped = self.accelerator.unwrap_model(model)
        with without_dropout(unwrapped):
            logps, mask = self._token_logprobs(model, inputs["batch"])
        old = inputs.get("old_logps")
        loss, stats = grpo_loss(
            logps,
            old if old is not None else logps.detach(),
            inputs.get("ref_logps"),
            inputs["advantages"],
            mask,
            beta=self.beta,
            epsilon=self.epsilon,
            epsilon_high=self.epsilon_high,
            loss_type=self.loss_type,
            max_completion_length=self.max_completion_length,
        )
        self.record(stats)
        loss = self.trains_something(model, loss)
        return (loss, None) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation: answers sampled for the held-out prompts, and the loss on them (their rewards are logged)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


def _real(value: Any) -> bool:
    try:
        return math.isfinite(float(value)) and not isinstance(value, (str, bytes))
    except (TypeError, ValueError):
        return False
