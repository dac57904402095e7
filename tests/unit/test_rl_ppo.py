"""task=ppo's own pieces: the advantage/target wiring on a hand-made rollout, explained variance,
the value loss's aggregation, and the value adapter + head (which weights each loss reaches)."""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaForCausalLM

from bigft.rl.advantages import explained_variance
from bigft.rl.losses import value_loss
from bigft.rl.ppo import ppo_targets
from bigft.rl.rollout import Rollout, response_logits
from bigft.rl.setup import reference_context
from bigft.rl.value import VALUE_HEAD, adapter_values, attach_value_adapter


def T(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def test_ppo_targets_by_hand():
    # γ = λ = 1: advantages are rewards-to-go minus the value. β = 0.5, k1 = old − ref.
    # Row 0 (4 tokens, score 1): KL [0.1, 0, 0.2, 0] → rewards [−0.05, 0, −0.1, 1.0],
    #   to go [0.85, 0.9, 0.9, 1.0], values [0.5, 0.4, 0.6, 0.8] → A [0.35, 0.5, 0.3, 0.2].
    # Row 1 (2 tokens, score −0.5; padding's KL 7 and value 9 ignored): KL [0.5, −0.5] →
    #   rewards [−0.25, 0.25 − 0.5], to go [−0.5, −0.25], values [0.2, 0.3] → A [−0.7, −0.55].
    mask = T([[1, 1, 1, 1], [1, 1, 0, 0]])
    ref = T([[-1.0, -1.0, -1.0, -1.0], [-1.0, -1.0, -1.0, -1.0]])
    old = ref + T([[0.1, 0.0, 0.2, 0.0], [0.5, -0.5, 7.0, 7.0]])
    values = T([[0.5, 0.4, 0.6, 0.8], [0.2, 0.3, 9.0, 9.0]])
    out = ppo_targets(
        T([1.0, -0.5]), values, old, ref, mask, kl_coef=0.5, gamma=1.0, lam=1.0, reduce=lambda x: x
    )
    raw = T([[0.35, 0.5, 0.3, 0.2], [-0.7, -0.55, 0.0, 0.0]])
    torch.testing.assert_close(out.raw_advantages, raw)
    torch.testing.assert_close(out.returns, T([[0.85, 0.9, 0.9, 1.0], [-0.5, -0.25, 0.0, 0.0]]))
    real = T([0.35, 0.5, 0.3, 0.2, -0.7, -0.55])
    whitened = (real - real.mean()) / real.std()
    torch.testing.assert_close(out.advantages[mask.bool()], whitened, atol=1e-5, rtol=1e-5)
    assert out.advantages[1, 2:].abs().sum() == 0


def test_ppo_targets_without_a_reference_have_no_kl_and_whiten_with_the_summed_statistics():
    mask = torch.ones(1, 3)
    sums = []

    def reduce(local: torch.Tensor) -> torch.Tensor:
        sums.append(local.clone())
        return local * 2  # another rank with the same statistics: mean and std unchanged

    out = ppo_targets(
        T([2.0]), torch.zeros(1, 3), torch.zeros(1, 3), None, mask,
        kl_coef=0.5, gamma=1.0, lam=1.0, reduce=reduce,
    )  # fmt: skip
    assert out.kl.abs().sum() == 0
    torch.testing.assert_close(out.returns, T([[2.0, 2.0, 2.0]]))
    assert len(sums) == 1 and float(sums[0][0]) == 3.0


def test_explained_variance_by_hand():
    mask = T([[1, 1, 1, 0]])
    returns = T([[0.0, 2.0, 4.0, 100.0]])
    # Residuals [−1, 0, 1]: variance 2/3 against the returns' 8/3, so 1 − 1/4.
    assert explained_variance(T([[1.0, 2.0, 3.0, 0.0]]), returns, mask) == pytest.approx(0.75)
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full((1, 4), 2.0), returns, mask) == pytest.approx(0.0)
    assert math.isnan(explained_variance(torch.zeros(1, 4), torch.ones(1, 4), mask))


def test_value_loss_aggregated_per_sequence_by_hand():
    values = T([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    returns = T([[0.0, 0.0, 5.0], [1.0, 5.0, 5.0]])
    mask = T([[1, 1, 0], [1, 0, 0]])
    # ½(V − R)²: row 0 [0.5, 2] → mean 1.25; row 1 [2] → 2. Sequence: 3.25 over 2 units.
    terms = value_loss(values, values, returns, mask, clip_range=None, aggregation="sequence")
    assert float(terms.loss_sum) == pytest.approx(3.25) and terms.units == 2.0
    tokens = value_loss(values, values, returns, mask, clip_range=None)
    assert float(tokens.loss_sum) == pytest.approx(4.5) and tokens.units == 3.0


@pytest.fixture
def policy_with_value(tiny_llama_dir):
    torch.manual_seed(0)
    base = LlamaForCausalLM.from_pretrained(tiny_llama_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0)
    model = get_peft_model(base, config)
    attach_value_adapter(model)
    return model


def _rollout() -> Rollout:
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, 100, (2, 4), generator=g)
    response = torch.randint(3, 100, (2, 3), generator=g)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return Rollout(prompt, torch.ones_like(prompt), response, mask, mask[:, -1].bool(), 0.0)


def test_the_value_head_starts_at_zero_and_both_adapters_train(policy_with_value):
    model = policy_with_value
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {f"{VALUE_HEAD}.weight", f"{VALUE_HEAD}.bias"} <= trainable
    assert any(".value." in n for n in trainable) and any(".default." in n for n in trainable)
    assert getattr(model, VALUE_HEAD).weight.dtype == torch.float32
    values = adapter_values(model, _rollout())
    assert values.shape == (2, 3) and values.abs().sum() == 0
    # The reference pass (every adapter disabled) leaves both adapters training: peft's
    # re-enabling would freeze the inactive one.
    with reference_context("lora", model, kl_coef=0.1)() as reference:
        response_logits(reference, _rollout())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable


def test_the_value_loss_reaches_only_the_value_adapter_and_the_policy_loss_only_the_policy_one(
    policy_with_value,
):
    model = policy_with_value
    head = getattr(model, VALUE_HEAD)
    torch.nn.init.normal_(head.weight)  # a trained head, so gradients reach the value adapter
    for name, param in model.named_parameters():
        if "lora_B" in name:  # non-zero B: every adapter changes its layer's output
            torch.nn.init.normal_(param, std=0.1)
    rollout = _rollout()
    logits_before = response_logits(model, rollout).detach()
    values = adapter_values(model, rollout)
    # The adapter switch is undone: the policy's forward is the same as before the value's.
    torch.testing.assert_close(response_logits(model, rollout), logits_before)
    with model.disable_adapter():
        ref_values = adapter_values(model, rollout)
    assert not torch.allclose(values, ref_values)  # the value adapter is in use

    def grads(loss: torch.Tensor) -> set[str]:
        model.zero_grad()
        loss.backward()
        return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}

    value_grads = grads(adapter_values(model, rollout).square().sum())
    policy_grads = grads(response_logits(model, rollout).square().sum())
    assert value_grads and all(".value." in n or n.startswith(VALUE_HEAD) for n in value_grads)
    assert policy_grads and all(".default." in n for n in policy_grads)
