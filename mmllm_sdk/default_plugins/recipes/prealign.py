"""The ``prealign`` recipe: a cheap first stage that needs no pass through the LLM.

Each caption example's soft tokens P_X are pulled towards the mean of its caption's token embeddings in the LLM's own
embedding table: the projector learns to put an item where the words that describe it already are, at their scale.
Only the embedding table is read, so a step costs the projector's forward and backward (with cached features, far
less than one LLM forward); PT or SFT then starts from soft tokens the LLM can already read as words.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from mmllm_sdk.errors import InputError
from mmllm_sdk.model.processor import IGNORE_INDEX
from mmllm_sdk.training.trainer import MMTrainer

if TYPE_CHECKING:
    from mmllm_sdk.model.modeling import MMLLM


def caption_targets(model: MMLLM, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each row's mean embedding over its supervised (caption) tokens: (B, D_llm), no gradient."""
    supervised = (labels != IGNORE_INDEX).unsqueeze(-1)  # (B, T, 1)
    with torch.no_grad():
        embeddings = model.llm.get_input_embeddings()(input_ids).float()  # (B, T, D)
        return (embeddings * supervised).sum(dim=1) / supervised.sum(dim=1).clamp(min=1)


def prealign_loss(model: MMLLM, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean squared distance of every soft token to its caption's mean embedding, over that embedding's mean square (a
    loss of 1 is the distance of a zero token)."""
    input_ids, labels = inputs["input_ids"], inputs["labels"]
    targets = caption_targets(model, input_ids, labels)  # (B, D)
    losses = []
    for modality, placeholder in model.placeholder_ids.items():
        if modality not in inputs:
            continue
        rows = (input_ids == placeholder).any(dim=1).nonzero().flatten()  # the rows holding this modality, in order
        soft = model.get_modality_features(modality, **inputs[modality]).float()  # (items, M, D)
        if soft.shape[0] != rows.numel():
            raise InputError(
                f"prealign pairs each {modality} item with its caption, and a batch row holds more than one "
                f"{modality} item; use caption examples (one file, then its caption)."
            )
        target = targets[rows].unsqueeze(1)  # (items, 1, D)
        losses.append(((soft - target) ** 2).mean(dim=(1, 2)) / (target**2).mean(dim=(1, 2)))
    if not losses:
        raise InputError(
            "prealign needs input items (caption examples: one file, then its caption); this batch has none."
        )
    return torch.cat(losses).mean()


class PrealignTrainer(MMTrainer):
    """Trains the input projectors on :func:`prealign_loss`; the LLM runs only its embedding lookup."""

    token_weighted_loss = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = self.through_wrapper(model, prealign_loss, inputs)
        return (loss, {"loss": loss}) if return_outputs else loss
