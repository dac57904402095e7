"""task=grpo on 2 ranks equals one process: same prompts and per-sample seeds, hence the same
rollouts, rewards and losses (the rollout batch is split across ranks, the groups are not)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bigft.config import compose_config
from bigft.train import train
from tests.distributed.test_distributed import _same_eval, ok, run_ranks
from tests.integration.runs import read_metrics, train_overrides

pytestmark = pytest.mark.distributed


def rewards_and_losses(run_dir: Path) -> list[tuple[float, float]]:
    return [
        (m["train/reward"], m["train/loss"]) for m in read_metrics(run_dir) if "train/reward" in m
    ]


def kl_to_reference(run_dir: Path) -> list[float]:
    return [m["train/kl"] for m in read_metrics(run_dir) if "train/kl" in m]


@pytest.mark.parametrize(
    ("method", "mode", "eval_examples"),
    # 3 eval prompts in one batch of 5: rank 1 has no batch of its own to count. full under
    # zero3: the KL (task.kl_coef=0.04) is to a second, sharded model; one process's is a copy.
    [("lora", "zero3", 5), ("full", "ddp", 5), ("lora", "ddp", 3), ("full", "zero3", 5)],
)
def test_grpo_on_two_ranks_equals_one_process(
    tmp_path, tiny_llama_dir, method, mode, eval_examples
):
    base = [
        *train_overrides(tmp_path, tiny_llama_dir, "grpo", method),
        "reward.fn=tests.integration.rl_rewards:letters",
        "method.dropout=0",
        "task.max_new_tokens=5",
        "task.ppo_epochs=2",
        "optim.lr=1e-2",
        "trainer.max_steps=3",
        f"data.max_eval_examples={eval_examples}",
        f"trainer.eval_batch_size={2 if eval_examples == 5 else 5}",
        "trainer.eval_at_start=true",
    ]
    two_ranks = run_ranks([*base, f"distributed={mode}", "trainer.micro_batch_size=2", "name=two"])
    ok(two_ranks)
    if (method, mode) == ("full", "zero3"):
        # The reference is a second model, sharded: rank 0 holds half of its weights.
        held = re.search(r"reference: .* (\d+) of its (\d+) weights on this rank", two_ranks.stdout)
        assert held and 2 * int(held[1]) == pytest.approx(int(held[2]), rel=0.01), held
    train(compose_config([*base, "trainer.micro_batch_size=4", "name=one"]))
    out = tmp_path / "outputs"
    two, one = rewards_and_losses(out / "two"), rewards_and_losses(out / "one")
    assert len(two) == 3
    assert [r for r, _ in two] == pytest.approx([r for r, _ in one], rel=1e-5)
    assert [x for _, x in two] == pytest.approx([x for _, x in one], rel=1e-4, abs=1e-6)
    # The KL to the reference (task.kl_coef > 0) is the same, and the policy has moved from it.
    two_kl, one_kl = kl_to_reference(out / "two"), kl_to_reference(out / "one")
    assert two_kl == pytest.approx(one_kl, rel=1e-4, abs=1e-6) and two_kl[-1] > 0
    _same_eval(out / "two", out / "one")
