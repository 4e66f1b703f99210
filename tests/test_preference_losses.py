"""Each preference loss against its paper's formula, computed by hand on fixed log-probabilities."""

from __future__ import annotations

import math

import pytest
import torch

from mmllm_sdk.default_plugins.recipes.preference_losses import dpo_loss, kto_loss, orpo_odds_ratio_loss, simpo_loss


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def softplus(x):  # -log σ(x)
    return math.log1p(math.exp(-x))


# policy chosen -1, rejected -3; reference -2 for both: the margin h = (-1 + 2) - (-3 + 2) = 2
PAIR = (t(-1.0), t(-3.0), t(-2.0), t(-2.0))


def test_dpo_sigmoid_is_minus_log_sigmoid_of_beta_times_the_margin():
    assert dpo_loss(*PAIR, beta=0.5).item() == pytest.approx(softplus(0.5 * 2))


def test_dpo_label_smoothing_mixes_in_the_flipped_pair():
    loss = dpo_loss(*PAIR, beta=0.5, label_smoothing=0.1).item()
    assert loss == pytest.approx(0.9 * softplus(1.0) + 0.1 * softplus(-1.0))


def test_ipo_is_the_squared_distance_of_the_margin_from_one_over_two_beta():
    assert dpo_loss(*PAIR, beta=0.25, loss_type="ipo").item() == pytest.approx((2 - 1 / 0.5) ** 2)
    assert dpo_loss(*PAIR, beta=1.0, loss_type="ipo").item() == pytest.approx((2 - 0.5) ** 2)


def test_hinge_is_zero_past_the_margin_and_linear_before_it():
    assert dpo_loss(*PAIR, beta=0.5, loss_type="hinge").item() == pytest.approx(0.0)
    assert dpo_loss(*PAIR, beta=0.25, loss_type="hinge").item() == pytest.approx(1 - 0.25 * 2)


def test_dpo_losses_keep_one_value_per_pair():
    losses = dpo_loss(t(-1.0, -2.0), t(-3.0, -1.0), t(-2.0, -2.0), t(-2.0, -2.0), beta=1.0)
    assert losses.tolist() == pytest.approx([softplus(2.0), softplus(-1.0)])


def test_simpo_compares_mean_log_probabilities_with_a_margin():
    # mean token log-probabilities -0.5 and -1.5: β (−0.5 + 1.5) − γ = 2 − 0.5
    assert simpo_loss(t(-0.5), t(-1.5), beta=2.0, gamma=0.5).item() == pytest.approx(softplus(1.5))


def test_orpo_odds_ratio_term_from_probabilities():
    # P(chosen) 1/2 (odds 1), P(rejected) 1/4 (odds 1/3): -β log σ(log 3) = -β log(3/4)
    loss = orpo_odds_ratio_loss(t(math.log(0.5)), t(math.log(0.25)), beta=0.1).item()
    assert loss == pytest.approx(-0.1 * math.log(0.75))


def test_kto_weighs_desirable_and_undesirable_answers_against_the_kl_estimate():
    policy, reference, kl = t(-1.0, -1.0), t(-2.0, -2.0), t(0.5)  # reward 1 for both answers
    losses = kto_loss(policy, reference, torch.tensor([True, False]), kl, beta=1.0, undesirable_weight=2.0)
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert losses.tolist() == pytest.approx([1 - sigmoid(1 - 0.5), 2 * (1 - sigmoid(0.5 - 1))])


def test_kto_clamps_a_negative_kl_estimate_at_zero():
    losses = kto_loss(t(-1.0), t(-2.0), torch.tensor([True]), t(-3.0), beta=1.0)
    assert losses.item() == pytest.approx(1 - 1 / (1 + math.exp(-1.0)))


# TRL exposes its reference-free losses as trainer methods (CPOTrainer.cpo_loss, ORPOTrainer.odds_ratio_loss) that read
# their settings from the trainer: called here on an object holding just those settings. DPO's loss types are CPO's on
# the margin against the reference; TRL 1.16 has no callable for DPO's, KTO's or GRPO's losses (inline in its trainers).
pytestmark = pytest.mark.filterwarnings("ignore:You are importing from 'trl.experimental'")  # its API is not ours
CHOSEN, REJECTED = t(-1.0, -2.5, -0.2), t(-3.0, -1.0, -0.4)
REF_CHOSEN, REF_REJECTED = t(-2.0, -2.0, -0.3), t(-2.5, -1.5, -0.1)


def trl_settings(**settings):
    from types import SimpleNamespace

    defaults = {"alpha": 0.0, "label_smoothing": 0.0, "simpo_gamma": 0.5, "accelerator": SimpleNamespace(device="cpu")}
    return SimpleNamespace(**{**defaults, **settings})


@pytest.mark.parametrize(
    ("loss_type", "beta", "label_smoothing"),
    [("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.2), ("ipo", 0.25, 0.0), ("hinge", 0.5, 0.0)],
)
def test_dpo_losses_equal_trls_on_the_margin_against_the_reference(loss_type, beta, label_smoothing):
    from trl.experimental.cpo import CPOTrainer

    settings = trl_settings(loss_type=loss_type, beta=beta, label_smoothing=label_smoothing)
    theirs, _, _ = CPOTrainer.cpo_loss(settings, CHOSEN - REF_CHOSEN, REJECTED - REF_REJECTED)
    ours = dpo_loss(
        CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED, beta=beta, loss_type=loss_type, label_smoothing=label_smoothing
    )
    assert ours.tolist() == pytest.approx(theirs.tolist())


@pytest.mark.parametrize(("beta", "gamma", "label_smoothing"), [(2.0, 0.5, 0.0), (2.5, 1.4, 0.1)])
def test_simpo_equals_trls(beta, gamma, label_smoothing):
    from trl.experimental.cpo import CPOTrainer

    settings = trl_settings(loss_type="simpo", beta=beta, simpo_gamma=gamma, label_smoothing=label_smoothing)
    theirs, _, _ = CPOTrainer.cpo_loss(settings, CHOSEN, REJECTED)
    ours = simpo_loss(CHOSEN, REJECTED, beta=beta, gamma=gamma, label_smoothing=label_smoothing)
    assert ours.tolist() == pytest.approx(theirs.tolist())


def test_orpo_odds_ratio_term_equals_trls():
    from trl.experimental.orpo import ORPOTrainer

    theirs = ORPOTrainer.odds_ratio_loss(trl_settings(beta=0.1), CHOSEN, REJECTED)[0]
    assert orpo_odds_ratio_loss(CHOSEN, REJECTED, beta=0.1).tolist() == pytest.approx(
        (-theirs).tolist()
    )  # TRL subtracts it
