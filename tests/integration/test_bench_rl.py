"""benchmarks/rl.py, bigft's side only (TRL is never installed in bigft's venv nor in CI): one
real `bigft-train` step on the benchmark's model and prompts, and the results it writes."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_bench_rl_bigft_side_writes_its_results(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "rl.py"), "--only", "bigft"]
    command += ["--steps", "1", "--warmup", "0", "--rounds", "1", "--results", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    payload = json.loads((tmp_path / "rl.json").read_text())
    assert set(payload) >= {"date", "machine", "load_before", "load_after", "setup", "assets"}
    assert {"cpu", "torch", "transformers"} <= set(payload["machine"])
    assert "trl" not in payload["machine"] and "ratios" not in payload
    assert len(payload["load_before"]) == 3
    # The demo's 480 questions; TRL's copy of each tokenized back to bigft's tokens.
    assert payload["assets"]["prompts"] == 480
    (steps,) = payload["runs"]["bigft"]
    (step,) = steps
    rows = payload["setup"]["prompts_per_step"] * payload["setup"]["num_generations"]
    assert 0 < step["gen_tokens"] <= rows * payload["setup"]["max_new_tokens"]
    assert 0 < step["gen_seconds"] < step["step_seconds"]
    figures = payload["figures"]["bigft"]
    assert figures["steps_timed"] == 1
    assert figures["gen_tokens_per_s"] * step["gen_seconds"] == pytest.approx(step["gen_tokens"])
    assert figures["step_seconds"] == step["step_seconds"]
    report = (tmp_path / "rl.md").read_text()
    assert "| bigft |" in report and "| trl |" not in report


def _bench_rl(monkeypatch):
    # A benchmark imports its sibling `common`, as when run as a script.
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_rl", ROOT / "benchmarks" / "rl.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_rl_ratios_are_bigft_over_trl_speeds(monkeypatch):
    bench = _bench_rl(monkeypatch)

    def rounds(step_times: list[float], gen_seconds: float) -> list[list[dict]]:
        return [
            [{"step_seconds": t, "gen_seconds": gen_seconds, "gen_tokens": 100} for t in step_times]
        ]

    figs = {
        "bigft": bench.figures(rounds([2.0, 1.0, 3.0], gen_seconds=0.5)),
        "trl": bench.figures(rounds([4.0, 5.0, 3.0], gen_seconds=1.0)),
    }
    assert figs["bigft"]["step_seconds"] == 2.0 and figs["bigft"]["step_seconds_min"] == 1.0
    assert figs["bigft"]["gen_tokens_per_s"] == 200.0
    assert figs["bigft"]["other_seconds"] == 1.5
    r = bench.ratios(figs)
    # Speeds, not times: 2.0 means bigft is twice as fast.
    assert r == {"gen_tokens_per_s": 2.0, "step_speed": 2.0, "step_speed_fastest": 3.0}
