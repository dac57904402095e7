"""KL controllers and the running reward statistics, by hand and across ranks."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bigft.rl.kl_control import (
    AdaptiveKLController,
    FixedKLController,
    RunningMoments,
    kl_controller,
)


def test_fixed_controller_never_moves():
    ctl = kl_controller(0.05)
    assert isinstance(ctl, FixedKLController)
    assert ctl.update(current_kl=100.0, n_steps=512) == 0.05


def test_adaptive_controller_by_hand():
    # target 6, horizon 10000, 1000 samples per update: at most ±0.2 * 1000/10000 = ±2 % a step.
    #   KL 9:   e = clip(9/6 - 1 = 0.5)   = 0.2   beta = 0.1 * 1.02      = 0.102
    #   KL 3:   e = clip(3/6 - 1 = -0.5)  = -0.2  beta = 0.102 * 0.98    = 0.09996
    #   KL 6.6: e = 6.6/6 - 1             = 0.1   beta = 0.09996 * 1.01  = 0.1009596
    ctl = kl_controller(0.1, target=6.0, horizon=10000)
    assert isinstance(ctl, AdaptiveKLController)
    assert ctl.update(9.0, 1000) == pytest.approx(0.102)
    assert ctl.update(3.0, 1000) == pytest.approx(0.09996)
    assert ctl.update(6.6, 1000) == pytest.approx(0.1009596)


def test_adaptive_controller_state_survives_json_and_resumes_identically():
    ctl = AdaptiveKLController(0.2, target=1.0, horizon=100)
    for kl in (2.0, 0.5, 1.5):
        ctl.update(kl, 10)
    state = json.loads(json.dumps(ctl.state_dict()))
    resumed = AdaptiveKLController(0.2, target=1.0, horizon=100)
    resumed.load_state_dict(state)
    assert resumed.value == ctl.value != 0.2
    assert resumed.update(3.0, 10) == ctl.update(3.0, 10)


def test_adaptive_controller_rejects_a_zero_target():
    with pytest.raises(ValueError, match="target > 0"):
        AdaptiveKLController(0.1, target=0.0, horizon=100)


def test_running_moments_by_hand_from_two_batches():
    # [1, 2] then [3, 4] (a padded 5th entry masked out): count 4, mean 2.5,
    # M2 = 2.25 + 0.25 + 0.25 + 2.25 = 5, unbiased variance 5/3.
    # Chan's merge: batch moments (2, 1.5, 0.5) and (2, 3.5, 0.5), delta 2:
    #   mean = 1.5 + 2 * 2/4 = 2.5;  M2 = 0.5 + 0.5 + 2² * 2*2/4 = 5.
    rm = RunningMoments()
    rm.update(torch.tensor([1.0, 2.0]))
    rm.update(torch.tensor([3.0, 4.0, 99.0]), torch.tensor([1, 1, 0]))
    assert (rm.count, rm.mean, rm.m2) == (4.0, 2.5, 5.0)
    assert rm.var == pytest.approx(5 / 3)
    std = math.sqrt(5 / 3)
    out = rm.normalize(torch.tensor([2.5, 4.0]))
    torch.testing.assert_close(out, torch.tensor([0.0, 1.5 / std]))
    out = rm.normalize(torch.tensor([2.5]), shift_mean=False)
    torch.testing.assert_close(out, torch.tensor([2.5 / std]))


def test_running_moments_equal_the_whole_for_any_split_and_resume():
    torch.manual_seed(0)
    values = torch.randn(1000, dtype=torch.float64) * 5 + 100
    rm = RunningMoments()
    for part in values.split([1, 7, 300, 2, 690]):
        rm.update(part)
    assert rm.mean == pytest.approx(values.mean().item(), rel=1e-12)
    assert rm.var == pytest.approx(values.var().item(), rel=1e-10)
    resumed = RunningMoments()
    resumed.load_state_dict(json.loads(json.dumps(rm.state_dict())))
    assert resumed.state_dict() == rm.state_dict()


def test_an_empty_normaliser_leaves_values_unscaled():
    rm = RunningMoments()
    rm.update(torch.tensor([]))
    rm.update(torch.tensor([3.0]))
    torch.testing.assert_close(rm.normalize(torch.tensor([5.0])), torch.tensor([2.0]))


def _rank(rank: int, world: int, init_file: str, values: torch.Tensor, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    rm = RunningMoments()
    for step in range(2):
        # Each rank holds a different, differently sized share of each step's batch.
        rm.update(values[step][rank::world])
    torch.save(rm.state_dict(), f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.distributed
def test_running_moments_across_two_ranks_equal_one_process(tmp_path):
    torch.manual_seed(0)
    values = torch.randn(2, 9) * 3 + 1
    out = str(tmp_path / "state")
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), values, out), nprocs=2)
    single = RunningMoments()
    for step in range(2):
        single.update(values[step])
    states = [torch.load(f"{out}.{r}") for r in range(2)]
    assert states[0] == states[1]
    for key, value in single.state_dict().items():
        assert states[0][key] == pytest.approx(value, rel=1e-12)
