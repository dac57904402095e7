"""RL losses against hand-computed values and reference computations."""

from __future__ import annotations

import math

import pytest
import torch

from bigft.rl import losses
from bigft.rl.losses import (
    aggregate,
    kl_estimate,
    kl_loss,
    ppo_policy_loss,
    token_entropy,
    token_logprobs,
    value_loss,
)

T = torch.tensor


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_and_their_gradient_match_log_softmax(monkeypatch, temperature):
    # A chunk of 3 rows (of 8 x 11 = 88) exercises the chunked loop, uneven last chunk included.
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 3 * 11)
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 11, requires_grad=True)
    tokens = torch.randint(0, 11, (2, 4))
    weights = torch.randn(2, 4)
    ours = token_logprobs(logits, tokens, temperature=temperature)
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), logits)
    ref = torch.log_softmax(logits / temperature, -1).gather(-1, tokens[..., None]).squeeze(-1)
    (grad_ref,) = torch.autograd.grad((ref * weights).sum(), logits)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(grad_ours, grad_ref)


def test_token_logprobs_read_a_strided_slice_in_place(monkeypatch):
    # The response part of a forward's logits is a non-contiguous slice; reshaping it to
    # [tokens, vocab] would copy all of it. Blocks of 2 rows (of 3 per sequence) cover it.
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 2 * 13)
    torch.manual_seed(1)
    full = torch.randn(2, 5, 13, requires_grad=True)
    logits = full[:, 1:4]
    assert not logits.is_contiguous()
    tokens = torch.randint(0, 13, (2, 3))
    copies = []
    monkeypatch.setattr(torch.Tensor, "reshape", _spy(torch.Tensor.reshape, copies))
    ours = token_logprobs(logits, tokens)
    monkeypatch.undo()
    assert copies == []
    (grad_ours,) = torch.autograd.grad(ours.sum(), full)
    ref = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    (grad_ref,) = torch.autograd.grad(ref.sum(), full)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(grad_ours, grad_ref)


def test_token_logprobs_take_whole_rows_together(monkeypatch):
    # 5 responses of 3 tokens, blocks of up to 6 positions: 3 blocks of 2, 2 and 1 whole rows
    # (one kernel call each, not one per row), the numbers those of a plain log_softmax.
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 6 * 17)
    torch.manual_seed(2)
    full = torch.randn(5, 6, 17, requires_grad=True)
    logits = full[:, 2:5]
    tokens = torch.randint(0, 17, (5, 3))
    calls = []
    logsumexp = torch.logsumexp
    monkeypatch.setattr(
        torch, "logsumexp", lambda x, dim: calls.append(x.shape) or logsumexp(x, dim)
    )
    ours = token_logprobs(logits, tokens)
    monkeypatch.undo()
    assert calls == [(2, 3, 17), (2, 3, 17), (1, 3, 17)]
    (grad_ours,) = torch.autograd.grad(ours.sum(), full)
    ref = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    (grad_ref,) = torch.autograd.grad(ref.sum(), full)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(grad_ours, grad_ref)


def _spy(reshape, copies):
    def spied(tensor, *shape):
        out = reshape(tensor, *shape)
        if tensor.numel() > 20 and out.data_ptr() != tensor.data_ptr():
            copies.append(tuple(out.shape))
        return out

    return spied


def test_token_logprobs_are_float32_from_bfloat16_logits():
    logits = torch.randn(3, 7).to(torch.bfloat16).requires_grad_()
    out = token_logprobs(logits, T([1, 2, 3]))
    assert out.dtype == torch.float32
    out.sum().backward()
    assert logits.grad.dtype == torch.bfloat16
    expected = torch.log_softmax(logits.detach().float(), -1)[torch.arange(3), T([1, 2, 3])]
    torch.testing.assert_close(out.detach(), expected)


def test_entropy_of_uniform_and_peaked_distributions():
    logits = torch.zeros(2, 5)
    logits[1, 2] = 100.0
    torch.testing.assert_close(token_entropy(logits), T([math.log(5), 0.0]), atol=1e-5, rtol=0)
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 9)
    p = torch.softmax(logits, -1)
    torch.testing.assert_close(token_entropy(logits), -(p * p.log()).sum(-1))


def test_entropy_only_where_masked():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 9)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    out = token_entropy(logits, mask)
    torch.testing.assert_close(out, token_entropy(logits) * mask)
    assert out[0, 2] == 0 and out[1, 1:].abs().sum() == 0


def test_kl_estimators_on_hand_values():
    # Policy gives the sampled token p = 0.5, the reference 0.25: log r = log(0.25/0.5) = -log 2.
    #   k1 = -log r = log 2 = 0.693147;  k2 = ½ (log 2)² = 0.240227;  k3 = r - 1 - log r = 0.193147
    logp, ref = T([math.log(0.5)]), T([math.log(0.25)])
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(math.log(2))
    assert kl_estimate(logp, ref, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(0.5 - 1 + math.log(2))
    # Where the reference is the more likely one, k1 goes negative; k3 never does.
    assert kl_estimate(ref, logp, "k1").item() < 0
    torch.manual_seed(0)
    a, b = torch.randn(1000) * 3, torch.randn(1000) * 3
    assert (kl_estimate(a, b, "k3") >= 0).all()
    with pytest.raises(ValueError, match="k1"):
        kl_estimate(a, b, "k4")  # type: ignore[arg-type]


def test_k1_and_k3_are_unbiased_k2_is_not():
    # Exact expectations under the policy q over a 3-token vocabulary: E_q[k] vs KL(q || p).
    q = T([0.7, 0.2, 0.1], dtype=torch.float64)
    p = T([0.3, 0.3, 0.4], dtype=torch.float64)
    kl = (q * (q / p).log()).sum()
    expect = {k: (q * kl_estimate(q.log(), p.log(), k)).sum() for k in ("k1", "k2", "k3")}
    torch.testing.assert_close(expect["k1"], kl)
    torch.testing.assert_close(expect["k3"], kl)
    assert abs(expect["k2"] - kl) > 1e-3


def test_kl_loss_does_not_differentiate_the_reference():
    logp = T([[-1.0, -2.0]], requires_grad=True)
    ref = T([[-1.5, -1.0]], requires_grad=True)
    terms = kl_loss(logp, ref, torch.ones(1, 2), kind="k1")
    assert terms.loss.item() == pytest.approx((0.5 - 1.0) / 2)
    terms.loss_sum.backward()
    assert ref.grad is None
    torch.testing.assert_close(logp.grad, T([[1.0, 1.0]]))


# Six tokens, clip range 0.2 (ratios allowed in [0.8, 1.2]). Per token, by hand:
#   A    ratio  -A*ratio  -A*clip(ratio)  loss (the max)  clipped?  d loss / d log-prob
#   +1   1.1    -1.1      -1.1            -1.1            no        -1.1   (= -A * ratio)
#   +1   1.5    -1.5      -1.2            -1.2            yes        0
#   +1   0.5    -0.5      -0.8            -0.5            no        -0.5
#   -1   1.5     1.5       1.2             1.5            no         1.5
#   -1   0.5     0.5       0.8             0.8            yes        0
#   -1   0.9     0.9       0.9             0.9            no         0.9
ADVANTAGES = [1.0, 1.0, 1.0, -1.0, -1.0, -1.0]
RATIOS = [1.1, 1.5, 0.5, 1.5, 0.5, 0.9]


def _policy_case():
    old = torch.full((1, 6), math.log(0.5))
    logp = (old + T(RATIOS).log()).requires_grad_()
    return logp, old, T([ADVANTAGES])


def test_ppo_clipped_loss_by_hand():
    logp, old, adv = _policy_case()
    terms = ppo_policy_loss(logp, old, adv, torch.ones(1, 6), clip_range=0.2)
    per_token = [-1.1, -1.2, -0.5, 1.5, 0.8, 0.9]
    assert terms.loss_sum.item() == pytest.approx(sum(per_token))
    assert terms.units == 6
    assert terms.loss.item() == pytest.approx(sum(per_token) / 6)
    assert terms.stats["clipped"] == 2 and terms.stats["tokens"] == 6
    k3 = sum(r - 1 - math.log(r) for r in RATIOS)
    assert terms.stats["approx_kl_sum"] == pytest.approx(k3, rel=1e-5)


def test_ppo_gradient_is_zero_exactly_where_clipped():
    logp, old, adv = _policy_case()
    ppo_policy_loss(logp, old, adv, torch.ones(1, 6), clip_range=0.2).loss_sum.backward()
    torch.testing.assert_close(logp.grad, T([[-1.1, 0.0, -0.5, 1.5, 0.0, 0.9]]))


def test_ppo_clip_higher_widens_the_upper_bound_only():
    logp, old, adv = _policy_case()
    terms = ppo_policy_loss(logp, old, adv, torch.ones(1, 6), clip_range=0.2, clip_range_high=0.6)
    # Ratio 1.5 with A = +1 is now inside [0.8, 1.6]: -1.5 instead of -1.2; the rest unchanged.
    assert terms.loss_sum.item() == pytest.approx(-1.1 - 1.5 - 0.5 + 1.5 + 0.8 + 0.9)
    assert terms.stats["clipped"] == 1


def test_ppo_masked_tokens_count_for_nothing():
    logp, old, adv = _policy_case()
    mask = T([[1, 1, 1, 0, 0, 0]])
    terms = ppo_policy_loss(logp, old, adv, mask, clip_range=0.2)
    assert terms.loss_sum.item() == pytest.approx(-1.1 - 1.2 - 0.5)
    assert terms.units == 3 and terms.stats["clipped"] == 1
    terms.loss_sum.backward()
    assert logp.grad[0, 3:].abs().sum() == 0


def test_token_and_sequence_aggregation_by_hand():
    # Ratio 1 everywhere, so each token's loss is -A: row 0 has one token (4), row 1 three (1 each).
    #   token:    (4 + 1 + 1 + 1) / 4 tokens          = 1.75
    #   sequence: (4/1 + (1 + 1 + 1)/3) / 2 responses = 2.5
    adv = T([[-4.0, 9.0, 9.0], [-1.0, -1.0, -1.0]])
    mask = T([[1, 0, 0], [1, 1, 1]])
    logp = torch.zeros(2, 3)
    token = ppo_policy_loss(logp, logp, adv, mask, clip_range=0.2, aggregation="token")
    seq = ppo_policy_loss(logp, logp, adv, mask, clip_range=0.2, aggregation="sequence")
    assert (token.loss.item(), token.units) == (pytest.approx(1.75), 4)
    assert (seq.loss.item(), seq.units) == (pytest.approx(2.5), 2)
    with pytest.raises(ValueError, match="aggregation"):
        aggregate(adv, mask, "batch")  # type: ignore[arg-type]


# Value clip range 0.2 around old values of 1.0. Per token, by hand:
#   V     R    (V-R)²   V_clip  (V_clip-R)²   ½·max        clipped?  d loss / dV
#   1.1   2    0.81     1.1     0.81          0.405        no        1.1 - 2 = -0.9
#   1.5   2    0.25     1.2     0.64          0.32         yes       0
#   0.5   2    2.25     0.8     1.44          1.125        no        0.5 - 2 = -1.5
#   1.5   0    2.25     1.2     1.44          1.125        no        1.5
def test_value_loss_clipping_by_hand():
    values = T([[1.1, 1.5, 0.5, 1.5]], requires_grad=True)
    old = torch.ones(1, 4)
    returns = T([[2.0, 2.0, 2.0, 0.0]])
    terms = value_loss(values, old, returns, torch.ones(1, 4), clip_range=0.2)
    assert terms.loss_sum.item() == pytest.approx(0.405 + 0.32 + 1.125 + 1.125)
    assert terms.units == 4 and terms.stats["value_clipped"] == 1
    terms.loss_sum.backward()
    torch.testing.assert_close(values.grad, T([[-0.9, 0.0, -1.5, 1.5]]))


def test_value_loss_without_clipping_is_half_the_squared_error():
    values = T([[1.5, 0.0]])
    terms = value_loss(values, torch.ones(1, 2), T([[2.0, 5.0]]), T([[1, 0]]), clip_range=None)
    assert terms.loss_sum.item() == pytest.approx(0.5 * 0.25)
    assert terms.units == 1
