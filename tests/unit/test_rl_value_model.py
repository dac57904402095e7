"""task=ppo's separate value model (method=full|freeze): built from the policy or the reward
model, reading V where the policy's logits are, sharing no weight with the policy."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaForSequenceClassification,
)

from bigft.errors import ConfigError
from bigft.models.toy import build_tokenizer
from bigft.rl.rollout import Rollout, response_logits
from bigft.rl.value_model import value_from_policy, value_from_reward


@pytest.fixture
def policy(tiny_llama_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir)


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory, tiny_llama_dir):
    config = AutoConfig.from_pretrained(tiny_llama_dir, num_labels=1)
    torch.manual_seed(3)
    model = LlamaForSequenceClassification(config)
    out = tmp_path_factory.mktemp("reward_model")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(out)
    return out


def _rollout() -> Rollout:
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, 100, (2, 4), generator=g)
    response = torch.randint(3, 100, (2, 3), generator=g)
    mask = torch.ones_like(response)
    return Rollout(prompt, torch.ones_like(prompt), response, mask, mask[:, -1].bool(), 0.0)


def _values(model, rollout: Rollout) -> torch.Tensor:
    from bigft.rl.rollout import rollout_inputs

    return model(**rollout_inputs(rollout), width=rollout.response_ids.shape[1])


def test_a_policy_copy_starts_at_zero_reads_the_policys_states_and_shares_no_weight(policy):
    value = value_from_policy(policy)
    rollout = _rollout()
    assert _values(value, rollout).abs().sum() == 0  # the zero head: V ≡ 0 at the start
    torch.nn.init.normal_(value.head.weight)
    # V(s_t) is the head on the hidden state that the policy's logits for token t come from.
    with torch.no_grad():
        ids = torch.cat([rollout.prompt_ids, rollout.response_ids], -1)
        hidden = policy.model(input_ids=ids).last_hidden_state[:, 3:6]
        expected = value.head(hidden).squeeze(-1)
    torch.testing.assert_close(_values(value, rollout), expected)
    policy_ptrs = {p.data_ptr() for p in policy.parameters()}
    assert not policy_ptrs & {p.data_ptr() for p in value.parameters()}
    # The value loss's gradients stay in the value model; the policy loss's in the policy.
    _values(value, rollout).square().sum().backward()
    assert all(p.grad is None for p in policy.parameters())
    assert all(p.grad is not None for p in value.parameters())
    value.zero_grad(set_to_none=True)
    response_logits(policy, rollout).square().sum().backward()
    assert all(p.grad is None for p in value.parameters())


def test_a_policy_copy_trains_what_the_method_trains_in_the_policy(policy):
    for name, param in policy.named_parameters():
        param.requires_grad_(".layers.1." in name)  # method=freeze's last block
    value = value_from_policy(policy)
    trains = {n for n, p in value.named_parameters() if p.requires_grad}
    assert trains == {n for n, p in value.named_parameters() if ".layers.1." in n} | {
        "head.weight",
        "head.bias",
    }


def test_a_reward_model_copy_values_each_prefix_as_the_reward_model_scores_it(
    policy, reward_dir, tiny_llama_dir
):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    value = value_from_reward(str(reward_dir), policy, tokenizer, torch.device("cpu"))
    reward = LlamaForSequenceClassification.from_pretrained(reward_dir).eval()
    rollout = _rollout()
    ids = torch.cat([rollout.prompt_ids, rollout.response_ids], -1)
    with torch.no_grad():
        # V before response token t is the reward model's score of the text up to there.
        expected = torch.stack([reward(input_ids=ids[:, :n]).logits[:, 0] for n in (4, 5, 6)], 1)
        got = _values(value, rollout)
    torch.testing.assert_close(got, expected)
    assert value.head.weight.dtype == torch.float32
    assert all(p.requires_grad for p in value.parameters())


def test_a_reward_model_with_another_tokenizer_is_refused(policy, reward_dir):
    other = build_tokenizer(["a different corpus altogether, with its own words"] * 5, 120)
    with pytest.raises(ConfigError, match="tokenizer is not the policy's"):
        value_from_reward(str(reward_dir), policy, other, torch.device("cpu"))


def test_the_weight_check_before_each_checkpoint_covers_a_separate_value_model(policy):
    from types import SimpleNamespace

    from bigft.distributed.engine import PlainEngine
    from bigft.distributed.env import DistEnv
    from bigft.rl.ppo import PPOLoop
    from bigft.rl.value_model import AdapterValues, SeparateValues

    value = value_from_policy(policy)
    env = DistEnv()
    engine = PlainEngine(value, torch.optim.SGD(value.parameters(), lr=0.1), env, None)
    values = SeparateValues(engine, None)
    assert [id(p) for p in values.parameters()] == [id(p) for p in value.parameters()]
    assert AdapterValues(policy).parameters() == []
    # Loop.weights_are_finite checks trainable_parameters(): the policy's and the value's.
    loop = object.__new__(PPOLoop)  # only the two fields the method reads
    loop.engine, loop.values = SimpleNamespace(module=policy), values
    checked = {id(p) for p in loop.trainable_parameters()}
    assert checked == {id(p) for p in [*policy.parameters(), *value.parameters()]}
