"""The RL table (bigft/demo/rl_report.py) on hand-written run directories."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bigft.demo.rl_report import rl_result, rl_table
from bigft.errors import DataError


def write_run(root: Path, name: str, lines: list[dict], reward: dict | None = None) -> Path:
    run = root / name
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if reward is not None:
        rows = "".join(f"  {k}: {'null' if v is None else v}\n" for k, v in reward.items())
        (run / "config.yaml").write_text(f"name: {name}\nreward:\n{rows}")
    return run


RM_RUN = [
    {"step": 0, "eval/reward": 0.1, "eval/reward_model": 0.1, "eval/reward_eval_fn": 0.30},
    {"step": 1, "train/loss": 0.5, "train/kl": 0.02},
    {"step": 2, "train/loss": 0.4, "train/kl": 0.25},
    {"step": 2, "eval/reward": 1.5, "eval/reward_model": 1.5, "eval/reward_eval_fn": 0.45},
]


def test_a_reward_model_run_reports_truth_and_rm_score_before_and_after_and_the_last_kl(
    tmp_path,
):
    run = write_run(
        tmp_path,
        "grpo-rm",
        RM_RUN,
        {"fn": None, "model": "/x/outputs/demo-reward", "eval_fn": "bigft.demo.truth:score"},
    )
    r = rl_result(run)
    assert (r.run, r.reward, r.steps) == ("grpo-rm", "reward model demo-reward", 2)
    assert (r.truth_before, r.truth_after) == (0.30, 0.45)
    assert (r.model_before, r.model_after) == (0.1, 1.5)
    assert r.kl_end == 0.25
    table = rl_table([run]).splitlines()
    assert table[0].count("|") == table[1].count("|") == table[2].count("|") == 9
    assert table[2] == (
        "| grpo-rm | reward model demo-reward | 2 | 0.300 | 0.450 | 0.100 | 1.500 | 0.25 |"
    )


def test_the_truth_as_reward_fn_is_the_truth_column_and_the_rm_columns_stay_empty(tmp_path):
    lines = [
        {"step": 0, "eval/reward_fn": 0.27},
        {"step": 40, "train/kl": 0.61},
        {"step": 40, "eval/reward_fn": 0.48},
    ]
    truth = write_run(tmp_path, "fn", lines, {"fn": "bigft.demo.truth:score", "model": None})
    other = write_run(tmp_path, "other", lines, {"fn": "my_rewards:length", "model": None})
    rows = rl_table([truth, other]).splitlines()[2:]
    assert rows[0] == (
        "| fn | reward.fn bigft.demo.truth:score | 40 | 0.270 | 0.480 | — | — | 0.61 |"
    )
    # Another function's score is what it trained on, not a ground truth.
    assert rows[1] == "| other | reward.fn my_rewards:length | 40 | — | — | — | — | 0.61 |"


def test_a_task_truth_score_counts_and_a_run_without_a_step_0_eval_has_no_before(tmp_path):
    lines = [
        {"step": 5, "train/kl": 0.1},
        {"step": 5, "eval/reward_model": 2.0, "eval/truth_score": 0.5},
    ]
    r = rl_result(write_run(tmp_path, "ppo", lines))
    assert (r.truth_before, r.truth_after, r.model_before, r.model_after) == (None, 0.5, None, 2.0)
    assert r.reward == "?"


def test_unreadable_runs_name_the_directory_or_the_line(tmp_path):
    with pytest.raises(DataError, match=r"no metrics\.jsonl"):
        rl_result(tmp_path / "missing")
    bad = write_run(tmp_path, "bad", [{"step": 0, "eval/reward_fn": 1.0}])
    with (bad / "metrics.jsonl").open("a") as f:
        f.write("{cut short\n")
    with pytest.raises(DataError, match=r"bad/metrics\.jsonl:2: not a JSON line"):
        rl_result(bad)
    sft = write_run(tmp_path, "sft", [{"step": 1, "train/loss": 1.0}])
    with pytest.raises(DataError, match="no eval/ metrics"):
        rl_result(sft)


def test_the_command_prints_the_table_and_a_missing_run_is_a_user_error(tmp_path):
    run = write_run(tmp_path, "grpo-rm", RM_RUN, {"model": "rm"})
    cmd = [sys.executable, "-m", "bigft.demo.rl_report"]
    ok = subprocess.run([*cmd, str(run)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[2].startswith("| grpo-rm | reward model rm | 2 | 0.300 |")
    bad = subprocess.run([*cmd, str(tmp_path / "nope")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    assert f"bigft: error: {tmp_path / 'nope'}: no metrics.jsonl" in bad.stderr
