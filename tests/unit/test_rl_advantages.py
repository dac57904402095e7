"""Advantages checked against arithmetic written out by hand."""

from __future__ import annotations

import pytest
import torch

from bigft.rl.advantages import (
    gae,
    group_advantages,
    kl_penalised_scores,
    masked_mean,
    masked_sums,
    masked_var,
    ppo_token_rewards,
    rloo_advantages,
    rloo_baselines,
    sequence_to_tokens,
    whiten,
)

T = torch.tensor


def close(actual: torch.Tensor, expected: list, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, T(expected, dtype=actual.dtype), atol=atol, rtol=0)


def test_gae_on_four_tokens_by_hand():
    # gamma = 0.9, lam = 0.8, so gamma * lam = 0.72.
    # Row 0: four real tokens, the score on the last one.
    #   t=3: delta = 1 + 0.9*0   - 0.8 = 0.2                    A3 = 0.2
    #   t=2: delta = 0 + 0.9*0.8 - 0.6 = 0.12   A2 = 0.12 + 0.72*0.2     = 0.264
    #   t=1: delta = 0 + 0.9*0.6 - 0.4 = 0.14   A1 = 0.14 + 0.72*0.264   = 0.33008
    #   t=0: delta = 0 + 0.9*0.4 - 0.5 = -0.14  A0 = -0.14 + 0.72*0.33008 = 0.0976576
    #   returns = A + V = [0.5976576, 0.73008, 0.864, 1.0]
    # Row 1: three real tokens then padding whose reward (9) and value (7) must be ignored:
    #   t=2: delta = 0.5 + 0.9*0 - 0.4 = 0.1                     A2 = 0.1
    #   t=1: delta = -0.2 + 0.9*0.4 - 0.3 = -0.14  A1 = -0.14 + 0.72*0.1      = -0.068
    #   t=0: delta = 0.1 + 0.9*0.3 - 0.2 = 0.17    A0 = 0.17 + 0.72*(-0.068) = 0.12104
    #   returns = [0.32104, 0.232, 0.5, 0]
    rewards = T([[0.0, 0.0, 0.0, 1.0], [0.1, -0.2, 0.5, 9.0]])
    values = T([[0.5, 0.4, 0.6, 0.8], [0.2, 0.3, 0.4, 7.0]])
    mask = T([[1, 1, 1, 1], [1, 1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    close(adv, [[0.0976576, 0.33008, 0.264, 0.2], [0.12104, -0.068, 0.1, 0.0]])
    close(ret, [[0.5976576, 0.73008, 0.864, 1.0], [0.32104, 0.232, 0.5, 0.0]])


def test_gae_with_gamma_and_lambda_one_is_the_monte_carlo_return_minus_the_value():
    rewards = T([[0.5, -1.0, 2.0, 0.25, 3.0]])
    values = T([[0.1, 0.2, 0.3, 0.4, 5.0]])
    mask = T([[1, 1, 1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    # Rewards-to-go of the 4 real tokens: 1.75, 1.25, 2.25, 0.25.
    close(ret, [[1.75, 1.25, 2.25, 0.25, 0.0]])
    close(adv, [[1.65, 1.05, 1.95, -0.15, 0.0]])


def test_gae_lambda_zero_is_the_one_step_td_error():
    rewards = T([[1.0, 2.0, 3.0]])
    values = T([[0.5, 0.25, 1.0]])
    adv, _ = gae(rewards, values, torch.ones(1, 3), gamma=0.5, lam=0.0)
    # delta_t = r_t + 0.5 V_{t+1} - V_t; the last token has no next value.
    close(adv, [[1.0 + 0.125 - 0.5, 2.0 + 0.5 - 0.25, 3.0 - 1.0]])


def test_gae_does_not_backpropagate_into_values():
    values = T([[0.5, 0.4]], requires_grad=True)
    adv, ret = gae(T([[0.0, 1.0]]), values, torch.ones(1, 2), gamma=1.0, lam=0.95)
    assert not adv.requires_grad and not ret.requires_grad


def test_gae_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same"):
        gae(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3), gamma=1.0, lam=1.0)


def test_masked_statistics_ignore_padding():
    values = T([[2.0, 4.0, 100.0], [6.0, -50.0, -50.0]])
    mask = T([[1, 1, 0], [1, 0, 0]])
    close(masked_mean(values, mask), 4.0)
    # (2-4)² + 0 + (6-4)² = 8, over n-1 = 2.
    close(masked_var(values, mask), 4.0)
    close(masked_var(values, mask, unbiased=False), 8.0 / 3.0)
    close(masked_mean(values, torch.zeros_like(mask)), 0.0)


def test_whiten_by_hand_with_and_without_the_mean():
    # Masked values 2, 4, 6: mean 4, unbiased variance 4, std 2.
    values = T([[2.0, 4.0], [6.0, 99.0]])
    mask = T([[1, 1], [1, 0]])
    close(whiten(values, mask), [[-1.0, 0.0], [1.0, 0.0]])
    close(whiten(values, mask, shift_mean=False), [[3.0, 4.0], [5.0, 0.0]])


def test_whiten_from_summed_statistics_equals_whole_batch():
    # Two "ranks" holding halves of a batch: all-reduced sums give the whole batch's whitening.
    torch.manual_seed(0)
    values = torch.randn(4, 6) * 3 + 10
    mask = (torch.rand(4, 6) > 0.3).float()
    sums = masked_sums(values[:2], mask[:2]) + masked_sums(values[2:], mask[2:])
    whole = whiten(values, mask)
    torch.testing.assert_close(whiten(values[:2], mask[:2], sums=sums), whole[:2])
    torch.testing.assert_close(whiten(values[2:], mask[2:], sums=sums), whole[2:])


def test_ppo_token_rewards_put_the_score_on_the_last_real_token():
    scores = T([2.0, -1.0])
    kl = T([[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.5, 9.0]])
    mask = T([[1, 1, 1, 1], [1, 1, 1, 0]])
    rewards = ppo_token_rewards(scores, kl, mask, kl_coef=0.1)
    close(rewards, [[-0.01, -0.02, -0.03, -0.04 + 2.0], [-0.05, -0.05, -0.05 - 1.0, 0.0]])


def test_kl_penalised_scores_subtract_the_summed_response_kl():
    # Row 0: 2 - 0.1 * (0.5 + 1.5) = 1.8;  row 1: 1 - 0.1 * 3 = 0.7 (the padded 9 is ignored).
    kl = T([[0.5, 1.5], [3.0, 9.0]])
    out = kl_penalised_scores(T([2.0, 1.0]), kl, T([[1, 1], [1, 0]]), kl_coef=0.1)
    close(out, [1.8, 0.7])


def test_group_advantages_by_hand():
    # Row 0: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = sqrt(1/3) = 0.5773503.
    # Row 1: every sample equal: no signal, advantage 0 (not NaN).
    rewards = T([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    a = 0.5 / (0.5773503 + 1e-4)
    close(group_advantages(rewards), [[a, -a, -a, a], [0.0, 0.0, 0.0, 0.0]], atol=1e-5)
    # Dr. GRPO: the mean is subtracted, the scale kept.
    close(group_advantages(rewards, scale=False), [[0.5, -0.5, -0.5, 0.5], [0.0] * 4])


def test_group_advantages_need_groups():
    with pytest.raises(ValueError, match="at least 2 samples"):
        group_advantages(torch.ones(3, 1))
    with pytest.raises(ValueError, match="prompts, samples per prompt"):
        rloo_baselines(torch.ones(6))


def test_rloo_baselines_and_advantages_by_hand():
    # Baseline of each sample: the mean of the other three.
    #   1: (2+3+6)/3 = 11/3   2: (1+3+6)/3 = 10/3   3: (1+2+6)/3 = 3   6: (1+2+3)/3 = 2
    rewards = T([[1.0, 2.0, 3.0, 6.0], [0.0, 1.0, 0.0, 1.0]])
    close(rloo_baselines(rewards), [[11 / 3, 10 / 3, 3.0, 2.0], [2 / 3, 1 / 3, 2 / 3, 1 / 3]])
    close(rloo_advantages(rewards), [[-8 / 3, -4 / 3, 0.0, 4.0], [-2 / 3, 2 / 3, -2 / 3, 2 / 3]])
    # Equivalently N/(N-1) * (r - mean): 4/3 * (1 - 3) = -8/3.
    expected = 4 / 3 * (rewards - rewards.mean(-1, keepdim=True))
    torch.testing.assert_close(rloo_advantages(rewards), expected)


def test_sequence_advantages_spread_over_response_tokens():
    mask = T([[1, 1, 0], [1, 1, 1]])
    close(sequence_to_tokens(T([[0.5], [-2.0]]), mask), [[0.5, 0.5, 0.0], [-2.0, -2.0, -2.0]])
