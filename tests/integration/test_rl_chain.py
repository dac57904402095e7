"""The RLHF chain's plumbing on the tiny Llama: a reward model trained on a small preference set,
GRPO rewarded by it with an eval-only check beside it, and the reward-hacking table reading both
scores back. Whether the truth rises is test_demo_grpo's job; here the table's figures must be
the runs' own metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from bigft.config import compose_config
from bigft.demo.rl_report import rl_result, rl_table
from bigft.train import train

from .runs import read_metrics, train_overrides


def test_reward_model_then_grpo_then_the_table_of_both_scores(tmp_path, tiny_llama_dir):
    rm = compose_config([*train_overrides(tmp_path, tiny_llama_dir, "reward", "full"), "name=rm"])
    train(rm)
    rl = compose_config(
        [
            *train_overrides(tmp_path, tiny_llama_dir, "grpo", "lora"),
            "name=grpo-rm",
            f"reward.model={rm.output_dir}",
            "reward.eval_fn=tests.integration.rl_rewards:printable",
            "task.max_new_tokens=6",
            "trainer.max_steps=3",
            "trainer.eval_at_start=true",
        ]
    )
    final = train(rl)
    metrics = read_metrics(Path(rl.output_dir))
    start = metrics[0]
    assert start["step"] == 0
    r = rl_result(rl.output_dir)
    assert (r.run, r.reward, r.steps) == ("grpo-rm", "reward model rm", 3)
    assert r.truth_before == start["eval/reward_eval_fn"]
    assert r.model_before == start["eval/reward_model"]
    assert r.truth_after == final["eval/reward_eval_fn"]
    assert r.model_after == final["eval/reward_model"]
    assert r.kl_end == final["train/kl"] > 0  # LoRA moved the policy off its reference
    # A learned score is unbounded and differs from the check's: two columns, not one.
    assert r.model_after != pytest.approx(r.truth_after)
    row = rl_table([rl.output_dir]).splitlines()[2]
    assert row == (
        f"| grpo-rm | reward model rm | 3 | {r.truth_before:.3f} | {r.truth_after:.3f} "
        f"| {r.model_before:.3f} | {r.model_after:.3f} | {r.kl_end:.2f} |"
    )
