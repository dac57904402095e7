"""`make demo` end to end: bigft pre-trains its toy base, tunes it, and the tuning shows."""

from __future__ import annotations

from pathlib import Path

from .runs import read_metrics


def test_demo_tuned_model_beats_the_base_by_30_points(demo_run):
    cfg, metrics = demo_run
    base = read_metrics(Path(cfg.output_dir))[0]
    assert base["step"] == 0
    assert metrics["eval/exact_match"] - base["eval/exact_match"] >= 30
    # The base was built by bigft itself (task=lm on the bundled corpus) and cached.
    assert (Path(cfg.cache_dir) / "demo_base" / "config.json").is_file()
