"""InstructGPT's comparison data in the demo world: the 40-step demo sft model's own answers,
ranked by the simulated reviewers (`python -m bigft.demo.policy_rankings`), train a reward model.
Whether RL against that reward model raises the truth is measured in benchmarks/results/demo_rl.md
(minutes); here: the files hold what the policy says, graded apart, in the reward task's format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bigft.config import compose_config
from bigft.demo.policy_rankings import main
from bigft.demo.truth import asked, score
from bigft.demo.world import ATTRIBUTES
from bigft.train import train


def read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_policys_answers_ranked_train_a_reward_model(tmp_path, demo_sft40, capsys):
    sft_run, cache_dir = demo_sft40
    out = tmp_path / "rankings"
    main([str(sft_run), str(out), "--limit", "30"])
    assert "ranked questions" in capsys.readouterr().out
    name = Path(sft_run).name
    train_rows, eval_rows = (
        read(out / "train" / f"{name}.jsonl"),
        read(out / "eval" / f"{name}.jsonl"),
    )
    assert len(train_rows) >= 15 and len(eval_rows) >= 15
    for row in train_rows + eval_rows:
        grades = [score(row["prompt"], r) for r in row["responses"]]
        assert len(set(grades)) == len(grades) >= 2, row  # no ties: every pair says something
    for row in eval_rows:
        grades = [score(row["prompt"], r) for r in row["responses"]]
        assert grades == sorted(grades, reverse=True), row  # the rule's order
    # The briefly tuned model's commonest mistake, which no bundled ranking shows: a bare value
    # of another kind than the one asked.
    other_kind = [
        r
        for row in train_rows
        for r in row["responses"]
        if any(r in values for a, values in ATTRIBUTES.items() if a != asked(row["prompt"])[1])
    ]
    assert other_kind, train_rows

    cfg = compose_config(
        [
            "experiment=demo_reward",
            f"model.path={sft_run}",
            "model=local",
            f"data.train={out / 'train'}",  # every round's rankings: one round here
            f"data.eval={out / 'eval' / f'{name}.jsonl'}",
            "trainer.max_steps=2",
            f"output_root={tmp_path / 'outputs'}",
            f"cache_dir={cache_dir}",
            "trainer.progress_bar=false",
        ]
    )
    final = train(cfg)
    assert 0 <= final["eval/accuracy"] <= 100


def test_a_run_that_is_not_there_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "nowhere"), str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
