"""The demo base build: a killed build resumes in its own directory and leaves nothing behind."""

from __future__ import annotations

import pytest

from bigft.config import compose_config
from bigft.demo import base


def test_a_killed_build_resumes_from_its_checkpoints_and_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "cache" / "demo_base"
    target.parent.mkdir()
    stale = target.parent / ".demo_base-build-x1y2z3"  # what older builds left when killed
    stale.mkdir()
    work = target.parent / ".demo_base-build"
    runs = []

    def killed(init, run_dir):
        runs.append((init, run_dir))
        raise KeyboardInterrupt  # the build is interrupted mid-pre-training

    monkeypatch.setattr(base, "pretrain", killed)
    with pytest.raises(KeyboardInterrupt):
        base.build_demo_base(target)
    init_written = (work / base.INIT_DONE).stat().st_mtime_ns
    assert not stale.exists() and not target.exists()

    def finishing(init, run_dir):
        runs.append((init, run_dir))
        # The initial model was kept, not built again.
        assert (work / base.INIT_DONE).stat().st_mtime_ns == init_written
        (run_dir / "model").mkdir(parents=True)
        (run_dir / "model" / "config.json").write_text("{}")

    monkeypatch.setattr(base, "pretrain", finishing)
    assert base.build_demo_base(target) == target
    # The same run directory and initial model both times, so the second run resumes.
    assert runs[0] == runs[1] == (work / "init", work / "run")
    assert (target / "config.json").is_file()
    assert sorted(p.name for p in target.parent.iterdir()) == [".demo_base-build.lock", "demo_base"]


def test_the_pre_training_resumes_and_checkpoints_on_the_way():
    cfg = compose_config(["experiment=demo_base_pretrain", "model.path=x", *base.RESUMABLE])
    assert cfg.trainer.resume == "auto" and 0 < cfg.trainer.save_every < cfg.trainer.max_steps


def test_a_short_real_build_publishes_the_model_and_removes_its_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(base, "RESUMABLE", [*base.RESUMABLE, "trainer.max_steps=2"])
    target = tmp_path / "demo_base"
    base.build_demo_base(target)
    assert (target / "config.json").is_file() and (target / "model.safetensors").is_file()
    assert not (tmp_path / ".demo_base-build").exists()
