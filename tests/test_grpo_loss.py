"""GRPO's objective and advantages against their formulas, computed by hand on fixed log-probabilities."""

from __future__ import annotations

import math

import pytest
import torch

from mmllm_sdk.default_plugins.recipes.grpo import group_advantages, grpo_loss

# two answers: the first of two tokens, the second of one (its second position is padding)
LOGPS = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]], dtype=torch.float64)
OLD = torch.tensor([[-1.0, -2.5], [-0.2, 0.0]], dtype=torch.float64)  # ratios 1, e^0.5 = 1.65 and e^-0.3 = 0.74
MASK = torch.tensor([[True, True], [True, False]])
ADVANTAGES = torch.tensor([1.0, -1.0], dtype=torch.float64)
# per token -min(ρA, clip(ρ, 0.8, 1.2)A): -1 (ρ 1), -1.2 (ρ clipped at 1.2), +0.8 (ρ 0.74 clipped at 0.8, A < 0)
TOKENS = [[-1.0, -1.2], [0.8]]


def loss(loss_type, ref=None, beta=0.0):
    options = {"beta": beta, "epsilon": 0.2, "epsilon_high": 0.2, "max_completion_length": 4}
    return grpo_loss(LOGPS, OLD, ref, ADVANTAGES, MASK, loss_type=loss_type, **options)


@pytest.mark.parametrize(
    ("loss_type", "expected"),
    [
        ("grpo", ((-1.0 - 1.2) / 2 + 0.8) / 2),  # each answer's mean over its tokens, then over answers
        ("bnpo", (-1.0 - 1.2 + 0.8) / 3),  # the mean over the batch's answer tokens
        ("dr_grpo", (-1.0 - 1.2 + 0.8) / (2 * 4)),  # the sum over answers x max_completion_length
    ],
)
def test_the_clipped_objective_is_aggregated_as_loss_type_says(loss_type, expected):
    value, stats = loss(loss_type)
    assert value.item() == pytest.approx(expected)
    assert stats["clip_ratio"].item() == pytest.approx(2 / 3) and "kl" not in stats


def test_the_kl_penalty_is_the_k3_estimate_against_the_reference():
    ref = LOGPS.clone()
    ref[0, 0] = -1.5  # ref - logp = -0.5 on one token, 0 elsewhere
    kl = math.exp(-0.5) + 0.5 - 1
    value, stats = loss("grpo", ref=ref, beta=0.1)
    assert stats["kl"].item() == pytest.approx(kl / 3)
    assert value.item() == pytest.approx(((-1.0 + 0.1 * kl - 1.2) / 2 + 0.8) / 2)


def test_at_ratio_one_the_gradient_raises_the_log_probability_of_answers_with_a_positive_advantage():
    logps = LOGPS.clone().requires_grad_()
    value, _ = grpo_loss(
        logps,
        LOGPS,
        None,
        ADVANTAGES,
        MASK,
        beta=0.0,
        epsilon=0.2,
        epsilon_high=0.2,
        loss_type="grpo",
        max_completion_length=4,
    )
    value.backward()
    assert logps.grad.flatten().tolist() == pytest.approx([-0.25, -0.25, 0.5, 0.0])  # -A / (tokens x answers)


def test_advantages_are_relative_to_the_group_and_scaled_by_its_spread():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    advantages, spread = group_advantages(rewards, 4, "group")
    assert spread.tolist() == pytest.approx([0.5, 0.0])  # the unbiased standard deviation of each group
    assert advantages.tolist() == pytest.approx(
        [0.75 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, 0, 0, 0, 0]
    )
    unscaled, _ = group_advantages(rewards, 4, "none")
    assert unscaled.tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0])
    batch, _ = group_advantages(rewards, 4, "batch")
    assert batch.tolist() == pytest.approx((unscaled / (rewards.std() + 1e-4)).tolist())
