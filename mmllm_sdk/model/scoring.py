"""Scoring answers without generating them: the log-likelihood the model gives an answer to a conversation.

One place for what DPO's loss, ``loglik-choice`` evaluation and lmms-eval's ``loglikelihood`` requests compute: the
sum of the log-probabilities of an answer's supervised tokens (its text and the end of its turn), given everything
before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from mmllm_sdk.components.llm import target_logprobs
from mmllm_sdk.errors import InputError
from mmllm_sdk.model.processor import IGNORE_INDEX

if TYPE_CHECKING:
    from mmllm_sdk.model.modeling import MMLLM


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of the log-probabilities of each row's supervised target tokens: (B, K, V), (B, K) -> (B,)."""
    return target_logprobs(logits, targets).sum(dim=-1)


@dataclass(frozen=True)
class AnswerScore:
    """An answer's log-likelihood (a sum over its tokens), how many tokens it has, and whether greedy decoding would
    have produced every one of them."""

    logprob: float
    tokens: int
    greedy: bool


@torch.no_grad()
def answer_logprobs(model: MMLLM, conversations: list[Any], *, batch_size: int = 8) -> list[AnswerScore]:
    """The log-likelihood of each conversation's last assistant turn given the turns before it.

    ``conversations``: lists of messages (or :class:`~mmllm_sdk.data.examples.Conversation`) that end with the answer
    to score. Batches of ``batch_size`` run in eval mode; the model's mode is restored after."""
    if batch_size < 1:
        raise InputError(f"answer_logprobs() needs a batch_size of at least 1; got {batch_size}.")
    was_training, scores = model.training, []
    model.eval()
    try:
        for first in range(0, len(conversations), batch_size):
            batch = model.processor(conversations[first : first + batch_size], train_on="last_assistant")
            batch = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            out = model(**batch, supervised_only=True)
            supervised = out.targets != IGNORE_INDEX  # (B, K)
            totals = sequence_logprobs(out.logits, out.targets).tolist()
            hits = ((out.logits.argmax(dim=-1) == out.targets) | ~supervised).all(dim=-1).tolist()
            counts = supervised.sum(dim=-1).tolist()
            scores += [AnswerScore(t, n, h) for t, n, h in zip(totals, counts, hits, strict=True)]
    finally:
        model.train(was_training)
    return scores
