"""The demo world's RL proof, reduced: GRPO rewarded by the hidden rule raises the held-out
ground-truth score of a briefly instruction-tuned demo model (questions about the 40 creatures
no tuning data names, answered greedily)."""

from __future__ import annotations

from .runs import from_demo_sft40


def test_grpo_on_the_ground_truth_raises_the_held_out_ground_truth_score(tmp_path, demo_sft40):
    before, metrics = from_demo_sft40(
        demo_sft40,
        tmp_path / "outputs",
        "experiment=demo_grpo",
        "reward.fn=bigft.demo.truth:score",
        "trainer.eval_every=0",
    )
    # Measured on these 90 questions: 0.226 → 0.311 from the demo as built on an AMD machine
    # (0.246 → 0.38-0.44 on all 240, three seeds), 0.296 → 0.458 from an Intel build with 8
    # prompts a step. Training on the rule is what moves it: with 8 prompts a step the AMD build
    # moved by -0.03 to +0.01 in four seeds.
    assert metrics["eval/reward_fn"] > before["eval/reward_fn"] + 0.05, (before, metrics)
    assert metrics["train/kl"] > 0
