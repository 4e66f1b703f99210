"""The preference losses, as functions of sequence log-probabilities: one place for each paper's formula.

Every function takes per-pair tensors of shape (B,) and returns the per-pair losses (B,); the Trainers average them.
``policy_*`` and ``reference_*`` are log-probabilities of the chosen and rejected answers: sums over their tokens, or
means where a loss is defined on length-normalised ones (IPO, SimPO, ORPO; the Trainers pass what each needs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """DPO's family, on the margin ``h = (log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l))``:

    - ``sigmoid`` (Rafailov et al., 2023): ``-(1 - ε) log σ(β h) - ε log σ(-β h)``, ε the label smoothing
      (conservative DPO; 0 is the paper's loss);
    - ``ipo`` (Azar et al., 2023, eq. 17): ``(h - 1 / (2β))²``, on length-normalised log-probabilities (β is τ);
    - ``hinge`` (SLiC, Zhao et al., 2023): ``max(0, 1 - β h)``.
    """
    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    if loss_type == "sigmoid":
        return -(1 - label_smoothing) * F.logsigmoid(beta * margin) - label_smoothing * F.logsigmoid(-beta * margin)
    if loss_type == "ipo":
        return (margin - 1 / (2 * beta)) ** 2
    if loss_type == "hinge":
        return torch.relu(1 - beta * margin)
    raise ValueError(f"dpo_loss: loss_type {loss_type!r} is not one of {', '.join(DPO_LOSS_TYPES)}")


def simpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    *,
    beta: float,
    gamma: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """SimPO (Meng et al., 2024), reference-free: ``-log σ(β (mean log π(y_w) - mean log π(y_l)) - γ)`` on
    length-normalised log-probabilities, γ the target reward margin (with label smoothing as in DPO's sigmoid)."""
    logits = beta * (policy_chosen - policy_rejected) - gamma
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def orpo_odds_ratio_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, *, beta: float) -> torch.Tensor:
    """ORPO's (Hong et al., 2024) odds-ratio term ``-β log σ(log odds(y_w) - log odds(y_l))``, with
    ``odds(y) = P(y) / (1 - P(y))`` and ``log P(y)`` the mean token log-probability; the Trainer adds the chosen
    answer's NLL. β is the paper's λ."""
    log_odds = (policy_chosen - policy_rejected) - (
        torch.log1p(-torch.exp(policy_chosen).clamp(max=1 - 1e-6))
        - torch.log1p(-torch.exp(policy_rejected).clamp(max=1 - 1e-6))
    )
    return -beta * F.logsigmoid(log_odds)


def kto_loss(
    policy: torch.Tensor,
    reference: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """KTO (Ethayarajh et al., 2024) on unpaired answers: with ``r = log π(y|x) - log π_ref(y|x)`` (sums) and ``z`` the
    batch's KL estimate ``kl`` (clamped at 0, no gradient), a desirable answer's loss is
    ``λ_D (1 - σ(β (r - z)))`` and an undesirable one's ``λ_U (1 - σ(β (z - r)))``."""
    z = kl.detach().clamp(min=0)
    rewards = policy - reference
    good = desirable_weight * (1 - torch.sigmoid(beta * (rewards - z)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (z - rewards)))
    return torch.where(desirable, good, bad)
