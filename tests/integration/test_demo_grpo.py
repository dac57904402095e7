"""The demo world's RL proof, reduced: GRPO rewarded by the hidden rule raises the held-out
ground-truth score of a briefly instruction-tuned demo model (questions about the 40 creatures
no tuning data names, answered greedily)."""

from __future__ import annotations

from pathlib import Path

from bigft.config import compose_config
from bigft.train import train

from .runs import read_metrics


def test_grpo_on_the_ground_truth_raises_the_held_out_ground_truth_score(tmp_path, demo_sft40):
    sft_run, cache_dir = demo_sft40
    rl = compose_config(
        [
            f"output_root={tmp_path / 'outputs'}",
            f"cache_dir={cache_dir}",
            "logger=none",
            "trainer.progress_bar=false",
            "experiment=demo_grpo",
            f"model.path={sft_run}",
            "reward.fn=bigft.demo.truth:score",
            "trainer.max_steps=40",
            "trainer.eval_every=0",
            "data.max_eval_examples=90",
        ]
    )
    metrics = train(rl)
    before = read_metrics(Path(rl.output_dir))[0]
    assert before["step"] == 0
    # Measured: 0.30 → 0.46 on these 90 questions (0.27 → 0.48 on all 240); 24 steps gave +0.06.
    assert metrics["eval/reward_fn"] > before["eval/reward_fn"] + 0.08, (before, metrics)
    assert metrics["train/kl"] > 0
