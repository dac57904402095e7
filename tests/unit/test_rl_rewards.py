"""Reward sources: functions named on the command line, sums, the EOS penalty, metrics."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from bigft.errors import ConfigError, DataError, TrainingError, exit_on_user_error
from bigft.rl.rewards import (
    FunctionReward,
    RewardScores,
    RewardSum,
    apply_missing_eos_penalty,
    batched,
    load_function,
    reward_stats,
    summarize_reward_stats,
)

MODULE = """
from bigft.rl.rewards import batched

def length(prompt, response):
    return len(response)

def exact(prompt, response, answer):
    return response.strip() == answer

def anything(prompt, response, **fields):
    return float(len(fields))

@batched
def many(prompts, responses, answer=None):
    return [float(r == a) for r, a in zip(responses, answer)]

def broken(prompt, response):
    return "high"

NOT_A_FUNCTION = 3
"""


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    path = tmp_path / "my_rewards.py"
    path.write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return path


def test_per_sample_function_from_module_spec(reward_module):
    source = FunctionReward("my_rewards:length")
    assert source.name == "length" and not source.batched
    out = source.score(["p", "q"], ["abc", ""])
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([3.0, 0.0]))


def test_function_from_a_py_file_path(reward_module):
    out = FunctionReward(f"{reward_module}:length").score(["p"], ["abcd"])
    torch.testing.assert_close(out, torch.tensor([4.0]))


def test_record_fields_reach_functions_that_name_them(reward_module):
    fields = [{"answer": "blue", "id": 1}, {"answer": "red", "id": 2}]
    exact = FunctionReward("my_rewards:exact").score(["p", "q"], [" blue", "blue"], fields)
    torch.testing.assert_close(exact, torch.tensor([1.0, 0.0]))
    # **fields takes every field; `length` (no extra parameters) takes none.
    anything = FunctionReward("my_rewards:anything").score(["p"], ["r"], fields[:1])
    torch.testing.assert_close(anything, torch.tensor([2.0]))
    torch.testing.assert_close(
        FunctionReward("my_rewards:length").score(["p"], ["r"], fields[:1]), torch.tensor([1.0])
    )


def test_a_missing_field_names_the_parameter_and_the_prompt(reward_module):
    with pytest.raises(DataError, match=r"takes 'answer', but the record of prompt 1"):
        FunctionReward("my_rewards:exact").score(["p", "q"], ["a", "b"], [{"answer": "a"}, {}])


def test_batched_function_gets_lists(reward_module):
    source = FunctionReward("my_rewards:many")
    assert source.batched
    out = source.score(["p", "q", "r"], ["a", "b", "c"], [{"answer": a} for a in "abz"])
    torch.testing.assert_close(out, torch.tensor([1.0, 1.0, 0.0]))


def test_in_process_functions_and_the_batched_switch():
    def lengths(prompts, responses):
        return torch.tensor([len(r) for r in responses])

    out = FunctionReward(lengths, batched=True).score(["p", "q"], ["ab", "c"])
    torch.testing.assert_close(out, torch.tensor([2.0, 1.0]))
    # numpy scalars and arrays, and booleans (a verifier's verdict), are numbers too.
    out = FunctionReward(lambda ps, rs: np.array([0.5, 2], dtype=np.float32), batched=True)
    torch.testing.assert_close(out.score(["p", "q"], ["a", "b"]), torch.tensor([0.5, 2.0]))
    out = FunctionReward(lambda p, r: r == "yes").score(["p", "q"], ["yes", "no"])
    torch.testing.assert_close(out, torch.tensor([1.0, 0.0]))
    assert batched(lambda p, r: 0.0).batched


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("my_rewards", r"expected <module>:<function>"),
        ("no_such_module_xyz:score", r"cannot import module 'no_such_module_xyz'"),
        ("my_rewards:nope", r"module 'my_rewards' has no function 'nope' \(it defines: .*length"),
        ("my_rewards:NOT_A_FUNCTION", r"'NOT_A_FUNCTION' is a int, not a function"),
        ("/no/such/file.py:score", r"file '/no/such/file.py' does not exist"),
    ],
)
def test_spec_mistakes_are_config_errors_naming_the_key_and_value(reward_module, spec, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_function(spec)
    assert str(err.value).startswith(f"reward.fn={spec!r}")


def test_a_non_numeric_reward_stops_training_with_the_function_named(reward_module):
    with pytest.raises(TrainingError, match=r"my_rewards:broken.*returned 'high' for sample 0"):
        FunctionReward("my_rewards:broken").score(["p"], ["r"])
    with pytest.raises(TrainingError, match=r"returned nan"):
        FunctionReward(lambda p, r: float("nan")).score(["p"], ["r"])
    with pytest.raises(TrainingError, match=r"returned 1 rewards for 2 responses"):
        FunctionReward(lambda ps, rs: [1.0], batched=True).score(["p", "q"], ["r", "s"])


class Constant:
    def __init__(self, name, values):
        self.name, self.values = name, torch.tensor(values)

    def score(self, prompts, responses, fields=None):
        return self.values


def test_weighted_sum_with_an_eval_only_source():
    rm = Constant("model", [1.0, 2.0])
    rule = Constant("length", [10.0, 0.0])
    truth = Constant("truth", [0.0, 1.0])
    scores = RewardSum([(rm, 0.5, False), (rule, 0.1, False), (truth, 1.0, True)]).score(
        ["p", "q"], ["a", "b"]
    )
    # 0.5 * 1 + 0.1 * 10 = 1.5;  0.5 * 2 + 0.1 * 0 = 1.0; truth is reported, not added.
    torch.testing.assert_close(scores.total, torch.tensor([1.5, 1.0]))
    assert set(scores.per_source) == {"model", "length", "truth"}
    torch.testing.assert_close(scores.per_source["truth"], torch.tensor([0.0, 1.0]))


def test_reward_sum_refuses_duplicate_names_and_nothing_to_train_on():
    with pytest.raises(ConfigError, match="distinct names"):
        RewardSum([(Constant("a", [0.0]), 1.0, False), (Constant("a", [0.0]), 1.0, False)])
    with pytest.raises(ConfigError, match="eval-only"):
        RewardSum([(Constant("a", [0.0]), 1.0, True)])


def test_missing_eos_penalty_hits_only_unfinished_responses():
    rewards = torch.tensor([1.0, 1.0, -2.0])
    ended = torch.tensor([True, False, False])
    out = apply_missing_eos_penalty(rewards, ended, 0.5)
    torch.testing.assert_close(out, torch.tensor([1.0, 0.5, -2.5]))
    assert apply_missing_eos_penalty(rewards, ended, None) is rewards


def test_reward_metrics_from_summed_statistics_across_batches():
    a = RewardScores(torch.tensor([1.0, 3.0]), {"truth": torch.tensor([0.0, 1.0])})
    b = RewardScores(torch.tensor([5.0]), {"truth": torch.tensor([1.0])})
    sa, sb = reward_stats(a), reward_stats(b)
    metrics = summarize_reward_stats({k: sa[k] + sb[k] for k in sa})
    # Total rewards 1, 3, 5: mean 3, unbiased std 2.  Truth 0, 1, 1: mean 2/3, std sqrt(1/3).
    assert metrics["reward"] == pytest.approx(3.0)
    assert metrics["reward_std"] == pytest.approx(2.0)
    assert metrics["reward_truth"] == pytest.approx(2 / 3)
    assert metrics["reward_truth_std"] == pytest.approx((1 / 3) ** 0.5)


def test_a_bad_spec_exits_2_with_one_line_and_no_traceback(reward_module, capsys):
    @exit_on_user_error
    def main():
        FunctionReward("my_rewards:scor")

    with pytest.raises(SystemExit) as err:
        main()
    assert err.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("bigft: error: reward.fn='my_rewards:scor': module 'my_rewards' has")
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
