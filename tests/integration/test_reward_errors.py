"""A bad ranking stops `bigft-train task=reward` with the file and line, exit 2, no traceback."""

from __future__ import annotations

import json

from .runs import train_overrides
from .test_cli import run_cli


def test_a_ranking_that_is_not_a_permutation_exits_2_naming_file_and_line(tmp_path, tiny_llama_dir):
    bad = tmp_path / "ranked.jsonl"
    rows = [
        {"prompt": "p", "responses": ["a", "b", "c"], "rankings": [[0, 1, 2], [2, 1, 0]]},
        {"prompt": "q", "responses": ["a", "b", "c"], "rankings": [[0, 1, 2], [1, 1, 0]]},
    ]
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [*train_overrides(tmp_path, tiny_llama_dir, "reward", "full"), f"data.train={bad}"]
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert f"{bad}:2: rankings[1] = [1, 1, 0] is not a permutation of 0..2" in result.stderr
