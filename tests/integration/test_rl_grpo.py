"""task=grpo end to end through train(): the reward rises, metrics and samples are written, a
killed run resumes to the uninterrupted run's numbers, and what cannot work is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bigft.engine.checkpoint import list_checkpoints
from bigft.engine.loop import Faults
from bigft.errors import ConfigError
from bigft.train import train

from .runs import read_metrics

REWARD = "reward.fn=tests.integration.rl_rewards:letters"
CHECK = "reward.eval_fn=tests.integration.rl_rewards:printable"
FAST = ("task.max_new_tokens=6", "trainer.micro_batch_size=4", "optim.lr=1e-2")


def train_rewards(run_dir: Path) -> dict[int, tuple[float, float]]:
    return {
        m["step"]: (m["train/reward"], m["train/loss"])
        for m in read_metrics(run_dir)
        if "train/reward" in m
    }


def test_grpo_raises_the_reward_and_reports_what_it_did(make_cfg):
    cfg = make_cfg(
        "grpo", "full", REWARD, CHECK, *FAST,
        "trainer.max_steps=16", "task.ppo_epochs=2", "trainer.eval_every=8",
        "trainer.eval_at_start=true",
    )  # fmt: skip
    metrics = train(cfg)
    run_dir = Path(cfg.output_dir)
    rewards = [r for r, _ in train_rewards(run_dir).values()]
    # About 0.28 → 0.85 (the share of lowercase letters in a 6-token response of a random
    # Llama); with the advantages' sign flipped it falls toward 0.
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.25, rewards
    start = read_metrics(run_dir)[0]
    assert start["step"] == 0 and metrics["eval/reward_fn"] > start["eval/reward_fn"] + 0.2
    for key in (
        "train/reward_std", "train/reward_eval_fn", "train/kl", "train/entropy",
        "train/response_length", "train/eos_fraction", "train/clip_fraction", "train/approx_kl",
        "train/advantage_mean", "train/advantage_std", "train/gen_tokens_per_sec",
        "train/tokens_per_sec", "eval/reward_eval_fn",
    ):  # fmt: skip
        assert key in metrics, key
    assert metrics["train/kl"] > 0.1  # the policy moved away from the frozen initial copy
    samples = [json.loads(x) for x in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {0, 8, 16}
    assert set(samples[0]) == {"step", "prompt", "response", "reward", "fn", "eval_fn"}


def test_grpo_resume_reproduces_the_uninterrupted_run(make_cfg):
    # LoRA dropout, an adaptive KL coefficient and rloo: RNG, controller state and seeds must
    # all come back for the rewards and losses to match.
    common = (
        REWARD, *FAST, "method.dropout=0.1", "task.advantage=rloo",
        "task.kl_target=0.01", "task.kl_horizon=8",
        "trainer.max_steps=6", "trainer.save_every=2", "task.mini_batches=2",
    )  # fmt: skip
    whole = make_cfg("grpo", "lora", "name=whole", *common)
    train(whole)
    expected = train_rewards(Path(whole.output_dir))
    broken = make_cfg("grpo", "lora", "name=broken", *common)
    with pytest.raises(RuntimeError, match="simulated crash after step 3"):
        train(broken, faults=Faults(crash_after_step=3))
    train(broken)
    resumed = train_rewards(Path(broken.output_dir))
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    for step, (reward, loss) in expected.items():
        assert resumed[step][0] == pytest.approx(reward, rel=1e-6), step
        assert resumed[step][1] == pytest.approx(loss, rel=1e-5, abs=1e-7), step
    coefs = [m.get("train/kl_coef") for m in read_metrics(Path(broken.output_dir))]
    assert coefs[-2] != pytest.approx(0.04, rel=0.05)  # β adapted, and came back on resume


def test_grpo_checkpoints_every_few_minutes(make_cfg):
    # A few milliseconds: every step of a slowed run is past the interval.
    cfg = make_cfg(
        "grpo", "lora", REWARD, *FAST, "trainer.max_steps=3", "trainer.save_every_minutes=0.0001"
    )
    train(cfg, faults=Faults(slow_step_seconds=0.05))
    # keep_last=2 pruned step 1's; step 2's was written by time, step 3's at the end.
    assert [p.name[-1] for p in list_checkpoints(Path(cfg.output_dir))] == ["2", "3"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("method=prefix",), "method=prefix with task=grpo"),
        (("task.num_generations=1",), "task.num_generations=1"),
        (("task.mini_batches=3",), "task.mini_batches=3"),
        ((), "needs a reward"),
        # ppo's settings would be ignored by grpo without a word.
        (("task.lam=0.9",), "task.lam=0.9 is a task=ppo setting that task=grpo does not use"),
        (("task.value_init=reward",), "task.value_init=reward is a task=ppo setting"),
    ],
)
def test_grpo_refuses_what_cannot_work_at_start_up(make_cfg, overrides, message):
    reward = () if message == "needs a reward" else (REWARD,)
    cfg = make_cfg("grpo", "full", *reward, *overrides)
    with pytest.raises(ConfigError, match=message):
        train(cfg)
