"""The demo base build: a killed build resumes in its own directory and leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest

import bigft.train
from bigft.demo import base


def test_a_killed_build_resumes_from_its_checkpoints_and_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "cache" / "demo_base"
    target.parent.mkdir()
    stale = target.parent / ".demo_base-build-x1y2z3"  # what older builds left when killed
    stale.mkdir()
    runs = []

    def killed_train(cfg):
        runs.append(cfg)
        raise KeyboardInterrupt  # the build is interrupted mid-pre-training

    monkeypatch.setattr(bigft.train, "train", killed_train)
    with pytest.raises(KeyboardInterrupt):
        base.build_demo_base(target)
    work = target.parent / ".demo_base-build"
    init_written = (work / base.INIT_DONE).stat().st_mtime_ns
    assert not stale.exists() and not target.exists()

    def finishing_train(cfg):
        runs.append(cfg)
        # The initial model was kept, not built again.
        assert (work / base.INIT_DONE).stat().st_mtime_ns == init_written
        model = Path(cfg.output_dir) / "model"
        model.mkdir(parents=True)
        (model / "config.json").write_text("{}")
        return {}

    monkeypatch.setattr(bigft.train, "train", finishing_train)
    assert base.build_demo_base(target) == target
    first, second = runs
    # The same run directory and initial model both times, resumed, with checkpoints on the way.
    assert first.output_dir == second.output_dir == str(work / "run")
    assert first.model.path == second.model.path == str(work / "init")
    assert second.trainer.resume == "auto" and second.trainer.save_every == base.BUILD_SAVE_EVERY
    assert (target / "config.json").is_file()
    assert sorted(p.name for p in target.parent.iterdir()) == [".demo_base-build.lock", "demo_base"]
