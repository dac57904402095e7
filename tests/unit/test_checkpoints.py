"""Checkpoint completeness (the manifest), replacing a step safely, and loading without pickle."""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch
from omegaconf import OmegaConf

from bigft.config.schema import OptimConfig
from bigft.distributed.engine import PlainEngine
from bigft.distributed.env import DistEnv
from bigft.engine import checkpoint as ckpt
from bigft.engine.checkpoint import (
    MANIFEST_FILE,
    TRAINABLE_FILE,
    latest_checkpoint,
    list_checkpoints,
    load_trainable_weights,
    load_training_state,
    save_checkpoint,
    scan_checkpoints,
)
from bigft.engine.optim import build_optimizer, build_scheduler
from bigft.engine.resume import resume_point
from bigft.errors import CheckpointError
from bigft.tracking import keep_metrics_through


def _objects(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    cfg = OmegaConf.structured(OptimConfig(lr=0.1, scheduler="linear"))
    engine = PlainEngine(model, build_optimizer(model, cfg), DistEnv(), max_grad_norm=1.0)
    return model, engine, build_scheduler(engine.optimizer, cfg, total_steps=10)


def _save(run_dir, step, engine, sched, keep_last=2):
    return save_checkpoint(
        run_dir,
        step=step,
        engine=engine,
        scheduler=sched,
        state={},
        keep_last=keep_last,
        env=DistEnv(),
    )


def _cfg():
    return OmegaConf.create({"trainer": {"resume": "auto"}})


def test_manifest_lists_every_file_with_its_size(tmp_path):
    _, engine, sched = _objects()
    path = _save(tmp_path, 1, engine, sched)
    files = json.loads((path / MANIFEST_FILE).read_text())["files"]
    on_disk = {p.name: p.stat().st_size for p in path.iterdir() if p.name != MANIFEST_FILE}
    assert files == on_disk
    assert {"state.json", TRAINABLE_FILE, "optimizer.pt", "scheduler.pt"} <= set(files)


@pytest.mark.parametrize("damage", ["remove_weights", "truncate_weights", "remove_manifest"])
def test_a_damaged_checkpoint_is_skipped_for_the_previous_complete_one(tmp_path, damage, caplog):
    _, engine, sched = _objects()
    _save(tmp_path, 2, engine, sched)
    last = _save(tmp_path, 4, engine, sched)
    if damage == "remove_weights":
        (last / TRAINABLE_FILE).unlink()  # state.json stays: it used to pass for complete
    elif damage == "truncate_weights":
        (last / TRAINABLE_FILE).write_bytes((last / TRAINABLE_FILE).read_bytes()[:-10])
    else:
        (last / MANIFEST_FILE).unlink()
    with caplog.at_level(logging.WARNING):
        found = resume_point(_cfg(), tmp_path)
    assert found is not None and found.name == "step_00000002"
    assert f"skipping checkpoint {last}" in caplog.text


def test_asking_for_an_incomplete_checkpoint_by_path_is_an_error(tmp_path):
    _, engine, sched = _objects()
    path = _save(tmp_path, 1, engine, sched)
    (path / TRAINABLE_FILE).unlink()
    cfg = OmegaConf.create({"trainer": {"resume": str(path)}})
    with pytest.raises(CheckpointError, match=re.escape(f"{path} is not a complete checkpoint")):
        resume_point(cfg, tmp_path)


def test_a_complete_checkpoint_that_fails_to_load_is_an_error_naming_it(tmp_path):
    model, engine, sched = _objects()
    path = _save(tmp_path, 1, engine, sched)
    size = (path / TRAINABLE_FILE).stat().st_size
    (path / TRAINABLE_FILE).write_bytes(b"\0" * size)  # same size: the manifest cannot tell
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {path} cannot be loaded")):
        load_trainable_weights(path, model)
    (path / TRAINABLE_FILE).unlink()
    with pytest.raises(CheckpointError, match=re.escape(TRAINABLE_FILE)):
        load_trainable_weights(path, model)


class _Boom:
    """What a malicious checkpoint would carry: unpickling it runs code."""

    def __reduce__(self):
        return (print, ("pickle ran code",))


@pytest.mark.parametrize("name", ["scheduler.pt", "rng_rank0.pt", "optimizer.pt"])
def test_resuming_never_unpickles_objects(tmp_path, name, capsys):
    _, engine, sched = _objects()
    path = _save(tmp_path, 1, engine, sched)
    torch.save({"state": _Boom()}, path / name)
    with pytest.raises(CheckpointError, match=name if name != "optimizer.pt" else "optimizer"):
        load_training_state(path, engine=engine, scheduler=sched, env=DistEnv(), saved_world=1)
    assert "pickle ran code" not in capsys.readouterr().out


class _Killed(Exception):
    pass


@pytest.mark.parametrize("point", ["sharded", "state", "manifest", "aside", "renamed"])
def test_resaving_a_step_killed_at_any_point_leaves_a_complete_copy(tmp_path, point, monkeypatch):
    model, engine, sched = _objects()
    first = _save(tmp_path, 5, engine, sched, keep_last=1)
    old_weights = (first / TRAINABLE_FILE).read_bytes()
    with torch.no_grad():
        model.weight.add_(1.0)

    def die(step, at):
        if at == point:
            raise _Killed

    monkeypatch.setattr(ckpt, "_fault_point", die)
    with pytest.raises(_Killed):
        _save(tmp_path, 5, engine, sched, keep_last=1)
    found = list_checkpoints(tmp_path)
    assert len(found) == 1 and found[0].name.endswith("step_00000005"), found
    weights = (found[0] / TRAINABLE_FILE).read_bytes()
    # Until the old copy is moved aside it is the one; from then on, the new (complete) one.
    assert (weights == old_weights) == (point in ("sharded", "state", "manifest"))
    # The next save finishes the swap and leaves no temporary directories.
    monkeypatch.undo()
    _save(tmp_path, 6, engine, sched, keep_last=1)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_00000006"]


def test_a_copy_left_aside_by_a_kill_is_used_and_settled(tmp_path):
    _, engine, sched = _objects()
    path = _save(tmp_path, 3, engine, sched)
    aside = path.with_name(".old-" + path.name)
    path.rename(aside)
    assert latest_checkpoint(tmp_path) == aside
    _save(tmp_path, 4, engine, sched)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]
    assert scan_checkpoints(tmp_path).skipped == []


def test_metrics_past_the_resumed_step_are_dropped_and_a_fresh_start_empties_them(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "train/loss": 1.0 / s}) for s in (1, 2, 3, 4)]
    metrics.write_text("\n".join(lines) + '\n{"step": 5, "train/lo')  # a kill cut the last line
    keep_metrics_through(metrics, 2)
    assert [json.loads(x)["step"] for x in metrics.read_text().splitlines()] == [1, 2]
    keep_metrics_through(metrics, None)
    assert metrics.read_text() == ""
