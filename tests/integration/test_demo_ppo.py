"""The demo world's RL proof for PPO, reduced: PPO rewarded by the hidden rule, with its value
adapter on the policy's base, raises the held-out ground-truth score of a briefly
instruction-tuned demo model (questions about the 40 creatures no tuning data names, answered
greedily)."""

from __future__ import annotations

from pathlib import Path

from bigft.config import compose_config
from bigft.train import train

from .runs import read_metrics


def test_ppo_on_the_ground_truth_raises_the_held_out_ground_truth_score(tmp_path, demo_sft40):
    sft_run, cache_dir = demo_sft40
    rl = compose_config(
        [
            f"output_root={tmp_path / 'outputs'}",
            f"cache_dir={cache_dir}",
            "logger=none",
            "trainer.progress_bar=false",
            "experiment=demo_ppo",
            f"model.path={sft_run}",
            "reward.fn=bigft.demo.truth:score",
            "trainer.eval_every=0",
            "data.max_eval_examples=90",
        ]
    )
    metrics = train(rl)
    before = read_metrics(Path(rl.output_dir))[0]
    assert before["step"] == 0
    # Measured on all 240 questions from the lead's demo-sft-40 (experiment=demo_ppo, 40 steps):
    # 0.266 → 0.528 at step 20 → 0.573. This reduced form (90 questions) passed in CI; its own
    # figures were not recorded.
    assert metrics["eval/reward_fn"] > before["eval/reward_fn"] + 0.08, (before, metrics)
    assert metrics["train/kl"] > 0 and metrics["train/value_loss"] > 0
