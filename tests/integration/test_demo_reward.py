"""The demo world's preferences train a reward model that generalises to held-out creatures."""

from __future__ import annotations

from pathlib import Path

from bigft.config import compose_config
from bigft.train import train

from .runs import read_metrics

# Pairs of the held-out eval ranked by the ground-truth rule; a score that knows nothing is right
# on half of them. A reduced run (a tiny random Llama, 60 steps) learns the rule's form at least:
# a sentence beats a bare word, an answer beats junk.
CHANCE, MARGIN = 50.0, 10.0


def test_a_reward_model_on_the_demo_rankings_beats_chance_on_held_out_creatures(
    tmp_path, tiny_llama_dir
):
    cfg = compose_config(
        [
            "experiment=demo_reward",
            "model=local",
            f"model.path={tiny_llama_dir}",
            "trainer.max_steps=60",
            "trainer.micro_batch_size=8",
            "data.max_eval_examples=60",
            "trainer.progress_bar=false",
            f"output_root={tmp_path / 'outputs'}",
            f"cache_dir={tmp_path / 'cache'}",
        ]
    )
    metrics = train(cfg)
    first = read_metrics(Path(cfg.output_dir))[0]
    assert first["step"] == 0 and "eval/accuracy" in first  # eval_at_start: the untrained head
    assert metrics["eval/accuracy"] >= CHANCE + MARGIN
    assert metrics["eval/accuracy"] > first["eval/accuracy"] + 5
