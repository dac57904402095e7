"""task=dpo measured against the demo world's ground truth: eval/truth_score and eval/win_rate."""

from __future__ import annotations

from pathlib import Path

import pytest

from bigft.config import DEMO_DATA_DIR, compose_config
from bigft.errors import ConfigError
from bigft.train import train

from .runs import read_metrics, train_overrides


def _dpo_on_demo_preferences(tmp_path: Path, model_dir: Path, *extra: str):
    return compose_config(
        [
            *train_overrides(tmp_path, model_dir, "dpo", "lora"),
            f"data.train={DEMO_DATA_DIR / 'preferences_train.jsonl'}",
            f"data.eval={DEMO_DATA_DIR / 'preferences_eval.jsonl'}",
            "data.max_train_examples=32",
            "data.max_eval_examples=3",
            "task.eval_generate=true",
            "task.eval_score_fn=bigft.demo.truth:score",
            "task.max_new_tokens=4",
            "trainer.eval_at_start=true",
            *extra,
        ]
    )


def test_truth_score_and_win_rate_before_and_after(tmp_path, tiny_llama_dir):
    cfg = _dpo_on_demo_preferences(tmp_path, tiny_llama_dir, "trainer.max_steps=2")
    final = train(cfg)
    base = read_metrics(Path(cfg.output_dir))[0]
    assert base["step"] == 0
    # The first evaluation is the baseline: against itself every prompt ties.
    assert base["eval/win_rate"] == 50.0
    assert 0.0 <= base["eval/truth_score"] <= 1.0
    assert 0.0 <= final["eval/win_rate"] <= 100.0
    assert 0.0 <= final["eval/truth_score"] <= 1.0
    # Pairs are still evaluated as pairs alongside the generation.
    assert "eval/rewards/accuracy" in final


def test_eval_generate_without_a_score_function_is_refused(tmp_path, tiny_llama_dir):
    cfg = _dpo_on_demo_preferences(tmp_path, tiny_llama_dir, "task.eval_score_fn=null")
    with pytest.raises(ConfigError, match=r"task\.eval_score_fn"):
        train(cfg)
