"""The ``dpo`` recipe's Trainer: Direct Preference Optimization against the model as the run starts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from mmllm_sdk.model.scoring import sequence_logprobs
from mmllm_sdk.training.trainer import MMTrainer


class DPOTrainer(MMTrainer):
    """Direct Preference Optimization (Rafailov et al., 2023).

    ``loss = -log σ(β [(log π(y_w|x) - log π_ref(y_w|x)) - (log π(y_l|x) - log π_ref(y_l|x))])``.

    The reference π_ref is the model as DPO starts (the SFT model, as in the paper): the
    starting values of the trained tensors (the adapters, and a projector if it trains) are
    copied once, megabytes rather than a second LLM, and put in place, in eval mode, for the
    reference pass of each step. So a DPO stage that continues from an SFT checkpoint with
    trained adapters stays close to that checkpoint, not to the model without its adapters.
    """

    token_weighted_loss = False  # a mean over the batch's pairs

    def __init__(self, *args: Any, beta: float = 0.1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.beta = beta
        self._metrics: dict[str, list[float]] = {}
        self._reference = {  # name -> starting value, of every tensor this run trains
            name: param.detach().clone() for name, param in self.model.named_parameters() if param.requires_grad
        }

    @contextlib.contextmanager
    def reference_policy(self, model: torch.nn.Module) -> Iterator[None]:
        """Within this block ``model`` computes π_ref: the trained tensors hold their starting values, eval mode."""
        params = dict(model.named_parameters())
        current = {name: params[name].detach().clone() for name in self._reference}
        training = model.training
        with torch.no_grad():
            for name, start in self._reference.items():
                params[name].copy_(start)
        model.eval()
        try:
            yield
        finally:
            model.train(training)
            with torch.no_grad():
                for name, value in current.items():
                    params[name].copy_(value)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        unwrapped = self.accelerator.unwrap_model(model)
        with torch.no_grad(), self.reference_policy(unwrapped):  # first: the policy pass's graph needs its weights
            reference_out = unwrapped(**inputs, supervised_only=True)
            reference = sequence_logprobs(reference_out.logits, reference_out.targets)  # (2B,)
        outputs = model(**inputs, supervised_only=True)
        policy = sequence_logprobs(outputs.logits, outputs.targets)  # (2B,)
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
