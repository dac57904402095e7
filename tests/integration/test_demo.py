"""`make demo` end to end: bigft pre-trains its toy base, tunes it, and the tuning shows."""

from __future__ import annotations

from pathlib import Path

from bigft.config import compose_config
from bigft.train import train

from .runs import read_metrics


def test_demo_tuned_model_beats_the_base_by_30_points(tmp_path):
    cfg = compose_config(
        [
            f"output_root={tmp_path / 'outputs'}",
            f"cache_dir={tmp_path / 'cache'}",
            "logger=none",
            "trainer.progress_bar=false",
        ]
    )
    metrics = train(cfg)
    base = read_metrics(Path(cfg.output_dir))[0]
    assert base["step"] == 0
    assert metrics["eval/exact_match"] - base["eval/exact_match"] >= 30
    # The base was built by bigft itself (task=lm on the bundled corpus) and cached.
    assert (tmp_path / "cache" / "demo_base" / "config.json").is_file()
