"""The demo world's RL proof for PPO, reduced: PPO rewarded by the hidden rule, with its value
adapter on the policy's base, raises the held-out ground-truth score of a briefly
instruction-tuned demo model (questions about the 40 creatures no tuning data names, answered
greedily)."""

from __future__ import annotations

from .runs import from_demo_sft40


def test_ppo_on_the_ground_truth_raises_the_held_out_ground_truth_score(tmp_path, demo_sft40):
    before, metrics = from_demo_sft40(
        demo_sft40,
        tmp_path / "outputs",
        "experiment=demo_ppo",
        "reward.fn=bigft.demo.truth:score",
        "trainer.eval_every=0",
    )
    # Measured: 0.296 → 0.577 on these 90 questions (0.266 → 0.528 at step 20 → 0.573 on all 240).
    assert metrics["eval/reward_fn"] > before["eval/reward_fn"] + 0.08, (before, metrics)
    assert metrics["train/kl"] > 0 and metrics["train/value_loss"] > 0
