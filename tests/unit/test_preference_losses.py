"""The DPO-family losses against the papers' formulas, on numbers worked out by hand.

Parity with TRL: TRL is not a dependency of bigft (not in the shared environment), so instead of
calling it, these tests write out the formulas of the papers, which TRL 1.16's
`DPOTrainer` uses as well (its wheel's dpo_trainer.py was read for this: sigmoid is
−logσ(β·Δ); ipo is (Δ_avg − 1/(2β))² with Δ_avg the token-averaged log-ratio difference; TRL's
CPO trainer's SimPO is −logσ(β·(mean log π_w − mean log π_l) − γ)). The conservative-DPO
smoothing is Mitchell's (2023), as TRL wrote it before 1.0: −(1−ε)logσ(βΔ) − εlogσ(−βΔ).
The SFT term is RPO's (Pang et al. 2024): the chosen response's NLL divided by its length.
"""

from __future__ import annotations

import math

import pytest
import torch

from bigft.tasks.preference_losses import ipo_loss, sft_loss, sigmoid_loss, simpo_loss


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_sigmoid_is_dpo_of_the_paper():
    # Δ = (−5 − (−6)) − (−7 − (−6)) = 2, β = 0.1: −log σ(0.2) = log(1 + e^−0.2)
    loss = sigmoid_loss(t(-5.0), t(-7.0), t(-6.0), t(-6.0), beta=0.1)
    assert loss.item() == pytest.approx(0.5981388693815918, abs=1e-12)
    # A pair the policy ranks as the reference does has Δ = 0: log 2.
    same = sigmoid_loss(t(-3.0), t(-4.0), t(-3.0), t(-4.0), beta=0.5)
    assert same.item() == pytest.approx(math.log(2), abs=1e-12)


def test_sigmoid_label_smoothing_is_conservative_dpo():
    # −0.9 log σ(0.2) − 0.1 log σ(−0.2)
    loss = sigmoid_loss(t(-5.0), t(-7.0), t(-6.0), t(-6.0), beta=0.1, label_smoothing=0.1)
    assert loss.item() == pytest.approx(0.6181388693815918, abs=1e-12)


def test_ipo_averages_the_log_ratios_over_tokens():
    # chosen: (−5 − (−6)) / 4 tokens = 0.25; rejected: (−7 − (−6)) / 2 tokens = −0.5;
    # h = 0.75, 1/(2β) = 5: (0.75 − 5)² = 18.0625
    loss = ipo_loss(
        t(-5.0),
        t(-7.0),
        t(-6.0),
        t(-6.0),
        beta=0.1,
        chosen_tokens=t(4.0),
        rejected_tokens=t(2.0),
    )
    assert loss.item() == pytest.approx(18.0625, abs=1e-12)


def test_simpo_is_reference_free_and_length_normalised():
    # β·(−4/4) − β·(−6/2) − γ = −2 + 6 − 0.5 = 3.5 with β = 2, γ = 0.5: log(1 + e^−3.5)
    loss = simpo_loss(
        t(-4.0), t(-6.0), beta=2.0, gamma=0.5, chosen_tokens=t(4.0), rejected_tokens=t(2.0)
    )
    assert loss.item() == pytest.approx(0.029750418272620607, abs=1e-12)


def test_losses_are_per_pair_and_fall_as_the_chosen_response_gains():
    gains = t(-2.0, 0.0, 2.0)
    zeros = torch.zeros(3, dtype=torch.float64)
    tokens = torch.full((3,), 3.0, dtype=torch.float64)
    dpo = sigmoid_loss(gains, zeros, zeros, zeros, beta=0.1)
    simpo = simpo_loss(
        gains, zeros, beta=1.0, gamma=0.0, chosen_tokens=tokens, rejected_tokens=tokens
    )
    assert dpo.shape == simpo.shape == (3,)
    assert dpo[0] > dpo[1] > dpo[2] and simpo[0] > simpo[1] > simpo[2]
    # IPO is a regression to the margin 1/(2β): it is smallest there, not beyond it.
    ipo = ipo_loss(
        t(1.5, 3.0), zeros[:2], zeros[:2], zeros[:2], beta=1.0,
        chosen_tokens=t(3.0, 3.0), rejected_tokens=t(3.0, 3.0),
    )  # fmt: skip
    assert ipo.tolist() == pytest.approx([0.0, 0.25])


def test_sft_term_is_the_chosen_responses_nll_per_token():
    # −(−6)/4 = 1.5 and −(−3)/1 = 3; an empty response (0 tokens) divides by 1, not 0.
    nll = sft_loss(t(-6.0, -3.0, 0.0), chosen_tokens=t(4.0, 1.0, 0.0))
    assert nll.tolist() == pytest.approx([1.5, 3.0, 0.0], abs=1e-12)
    # A longer response with the same per-token likelihood costs the same: no length bias.
    assert sft_loss(t(-12.0), t(8.0)).item() == sft_loss(t(-6.0), t(4.0)).item()
