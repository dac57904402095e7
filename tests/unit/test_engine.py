"""The loop's building blocks: batch plan, schedules, checkpoint files."""

from __future__ import annotations

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from bigft.config.schema import OptimConfig
from bigft.distributed.engine import PlainEngine
from bigft.distributed.env import DistEnv
from bigft.engine.batches import BatchPlan, eval_batches
from bigft.engine.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_trainable_weights,
    load_training_state,
    read_state,
    save_checkpoint,
)
from bigft.engine.optim import build_optimizer, build_scheduler, lr_multiplier
from bigft.errors import ConfigError

COS45 = math.cos(math.pi / 4)


def plan(mb: int, acc: int, world: int = 1, n: int = 37) -> BatchPlan:
    return BatchPlan(num_examples=n, micro_batch_size=mb, grad_accum=acc, world_size=world, seed=3)


def flat(micro: list[list[int]]) -> list[int]:
    return [i for mb in micro for i in mb]


def test_global_batch_is_independent_of_micro_batch_and_ranks():
    for step in range(20):
        whole = flat(plan(4, 1).micro_batches(step, 0))
        assert flat(plan(1, 4).micro_batches(step, 0)) == whole
        assert flat(plan(2, 2).micro_batches(step, 0)) == whole
        halves = plan(1, 2, world=2)
        assert flat(halves.micro_batches(step, 0)) + flat(halves.micro_batches(step, 1)) == whole
        assert [len(mb) for mb in plan(1, 4).micro_batches(step, 0)] == [1, 1, 1, 1]


def test_an_epoch_visits_distinct_examples_and_epochs_reshuffle():
    p = plan(4, 2, n=40)
    assert p.steps_per_epoch == 5
    epoch0 = [i for s in range(5) for i in flat(p.micro_batches(s, 0))]
    epoch1 = [i for s in range(5, 10) for i in flat(p.micro_batches(s, 0))]
    assert sorted(epoch0) == list(range(40)) == sorted(epoch1)
    assert epoch0 != epoch1
    assert flat(p.micro_batches(7, 0)) == flat(plan(4, 2, n=40).micro_batches(7, 0))


@pytest.mark.parametrize(("n", "size", "world"), [(8, 3, 2), (10, 2, 3), (3, 4, 4), (7, 7, 1)])
def test_eval_batches_split_the_eval_set_once_with_equal_forwards(n, size, world):
    shares = [eval_batches(n, size, rank, world) for rank in range(world)]
    counted = [list(b) for share in shares for b, kept in share if kept]
    # Together the ranks count exactly one process's batches, each once.
    assert sorted(counted) == [list(range(s, min(s + size, n))) for s in range(0, n, size)]
    # Every rank runs the same number of forwards (ZeRO-3's lockstep), at least one.
    assert len({len(share) for share in shares}) == 1 and len(shares[0]) >= 1


def test_replicated_eval_batches_count_only_on_rank_0():
    assert eval_batches(5, 2, 0, 2, replicate=True) == [
        (range(0, 2), True),
        (range(2, 4), True),
        (range(4, 5), True),
    ]
    assert all(not kept for _, kept in eval_batches(5, 2, 1, 2, replicate=True))


def test_too_little_data_for_one_batch_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"3 examples, fewer than one global batch .*= 8"):
        plan(4, 2, n=3).check()


@pytest.mark.parametrize(
    ("scheduler", "expected"),
    [
        ("constant", [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]),
        ("linear", [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]),
        ("cosine", [0.5, 1.0, 1.0, (1 + COS45) / 2, 0.5, (1 - COS45) / 2]),
    ],
)
def test_schedules_warm_up_then_decay(scheduler, expected):
    cfg = OmegaConf.structured(OptimConfig(scheduler=scheduler, warmup_steps=2))
    got = [lr_multiplier(step, cfg, total_steps=6) for step in range(6)]
    assert got == pytest.approx(expected)


def test_min_lr_ratio_is_the_floor():
    cfg = OmegaConf.structured(OptimConfig(scheduler="cosine", min_lr_ratio=0.1))
    assert lr_multiplier(10, cfg, total_steps=10) == pytest.approx(0.1)


def _tiny_training_objects():
    model = torch.nn.Linear(3, 2)
    cfg = OmegaConf.structured(OptimConfig(lr=0.1, scheduler="linear"))
    engine = PlainEngine(model, build_optimizer(model, cfg), DistEnv(), max_grad_norm=1.0)
    return model, engine, build_scheduler(engine.optimizer, cfg, total_steps=10)


def _step(model, engine, sched):
    engine.backward(model(torch.ones(1, 3)).sum())
    assert engine.step()[0]
    sched.step()


def _save(tmp_path, step, engine, sched, state=None):
    return save_checkpoint(
        tmp_path,
        step=step,
        engine=engine,
        scheduler=sched,
        state=state or {},
        keep_last=2,
        env=DistEnv(),
    )


def test_checkpoint_round_trip_restores_weights_optimizer_schedule_and_rng(tmp_path):
    model, engine, sched = _tiny_training_objects()
    _step(model, engine, sched)
    path = _save(tmp_path, 1, engine, sched, {"wandb_id": "abc"})
    expected_rng = torch.rand(3)
    _step(model, engine, sched)
    expected_weight = model.weight.detach().clone()

    model2, engine2, sched2 = _tiny_training_objects()
    load_trainable_weights(path, model2)
    load_training_state(path, engine=engine2, scheduler=sched2, env=DistEnv(), saved_world=1)
    assert read_state(path) == {"wandb_id": "abc", "step": 1, "world_size": 1}
    assert torch.equal(torch.rand(3), expected_rng)
    _step(model2, engine2, sched2)
    assert torch.equal(model2.weight, expected_weight)
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_checkpoints_keep_last_k_and_ignore_incomplete_writes(tmp_path):
    _model, engine, sched = _tiny_training_objects()
    for step in (2, 4, 6):
        _save(tmp_path, step, engine, sched)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004", "step_00000006"]
    # A crash mid-write leaves a temp dir (or a dir without state.json): never picked up.
    (tmp_path / "checkpoints" / ".tmp-step_00000008").mkdir()
    (tmp_path / "checkpoints" / "step_00000010").mkdir()
    assert latest_checkpoint(tmp_path).name == "step_00000006"
    assert json.loads((latest_checkpoint(tmp_path) / "state.json").read_text())["step"] == 6


def test_one_process_deepspeed_group_leaves_no_rank_variables_behind():
    import os

    from bigft.distributed.env import close_process_group, init_process_group

    before = {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    init_process_group(DistEnv(), "gloo", 1, deepspeed=True)
    assert os.environ["WORLD_SIZE"] == "1"
    close_process_group()
    # A child started later (e.g. by launcher.nproc_per_node) must not look like a rank.
    assert {k: os.environ.get(k) for k in before} == before
