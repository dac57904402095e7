"""task=dpo measured against the demo world's ground truth: eval/truth_score and eval/win_rate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bigft.config import DEMO_DATA_DIR, compose_config
from bigft.data.readers import Record
from bigft.errors import ConfigError
from bigft.export import output_dir_of
from bigft.outputs import load_output
from bigft.tasks import build_task
from bigft.train import train

from .rl_rewards import letters
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


def _greedy_scores(model, tokenizer, cfg) -> list[float]:
    """letters() of each held-out prompt's greedy answer, generated here with transformers."""
    lines = Path(cfg.data.eval).read_text().splitlines()[: cfg.data.max_eval_examples]
    task = build_task(cfg.task, tokenizer)
    scores = []
    for n, line in enumerate(lines):
        ids = task.encode(Record(json.loads(line), f"eval:{n}"))[0]["prompt_ids"]
        out = model.generate(
            torch.tensor([ids]),
            max_new_tokens=cfg.task.max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )[0, len(ids) :].tolist()
        if tokenizer.eos_token_id in out:
            out = out[: out.index(tokenizer.eos_token_id)]
        prompt = tokenizer.decode(ids, skip_special_tokens=True)
        scores.append(letters(prompt, tokenizer.decode(out, skip_special_tokens=True)))
    return scores


def test_truth_score_and_win_rate_are_the_greedy_answers_scores(tmp_path, tiny_llama_dir):
    """With a score that varies on the tiny model's byte soup (the demo truth gives it 0 every
    time): eval/truth_score is the mean score of the greedy answers, before and after training,
    and eval/win_rate counts how many answers beat the first evaluation's, a tie half."""
    score_fn = "task.eval_score_fn=tests.integration.rl_rewards:letters"
    cfg = _dpo_on_demo_preferences(
        tmp_path, tiny_llama_dir, score_fn, "trainer.max_steps=3", "optim.lr=1e-2"
    )
    train(cfg)
    evals = [m for m in read_metrics(Path(cfg.output_dir)) if "eval/truth_score" in m]
    trained, tokenizer = load_output(output_dir_of(Path(cfg.output_dir)))
    after = _greedy_scores(trained.eval(), tokenizer, cfg)
    with trained.disable_adapter():  # the initial lora model is its base
        before = _greedy_scores(trained, tokenizer, cfg)
    assert len(before) == 3 and sum(after) != sum(before)  # training moved the answers
    assert evals[0]["eval/truth_score"] == pytest.approx(sum(before) / 3, rel=1e-6)
    assert evals[-1]["eval/truth_score"] == pytest.approx(sum(after) / 3, rel=1e-6)
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(after, before, strict=True))
    assert evals[-1]["eval/win_rate"] == pytest.approx(100 * wins / 3)


def test_eval_generate_without_a_score_function_is_refused(tmp_path, tiny_llama_dir):
    cfg = _dpo_on_demo_preferences(tmp_path, tiny_llama_dir, "task.eval_score_fn=null")
    with pytest.raises(ConfigError, match=r"task\.eval_score_fn"):
        train(cfg)
