"""task=ppo under method=full on 2 ranks equals one process: the separate value model is wrapped
for DDP like the policy, or (ZeRO-1/2) is a DeepSpeed engine of its own with its own backward,
so its gradients are the whole batch's on every rank."""

from __future__ import annotations

import re

import pytest

from bigft.config import compose_config
from bigft.engine.checkpoint import latest_checkpoint
from bigft.train import train
from tests.distributed.test_distributed import ok, run_ranks
from tests.integration.runs import step_metrics, train_overrides

pytestmark = pytest.mark.distributed

KEYS = (
    "train/reward",
    "train/loss",
    "train/value_loss",
    "train/value_grad_norm",
    "train/explained_variance",
)


def ppo_overrides(tmp_path, tiny_llama_dir) -> list[str]:
    return [
        *train_overrides(tmp_path, tiny_llama_dir, "ppo", "full"),
        "reward.fn=tests.integration.rl_rewards:letters",
        "task.max_new_tokens=5",
        "task.num_generations=2",
        "task.ppo_epochs=2",
        "optim.lr=1e-3",
        "trainer.max_steps=3",
        "trainer.eval_every=0",
        "trainer.save_model=false",
    ]


@pytest.mark.parametrize("mode", ["ddp", "zero2", "zero3"])
def test_full_ppo_on_two_ranks_equals_one_process(tmp_path, tiny_llama_dir, mode):
    base = ppo_overrides(tmp_path, tiny_llama_dir)
    result = run_ranks(
        [*base, f"distributed={mode}", "trainer.micro_batch_size=2", "name=two"], timeout=900
    )
    ok(result)
    if mode == "zero3":  # the value model is a second partitioned model: rank 0 holds half
        held = re.search(r"value model: .* (\d+) of its (\d+) weights on this rank", result.stdout)
        assert held and 2 * int(held[1]) == pytest.approx(int(held[2]), rel=0.01), held
    train(compose_config([*base, "trainer.micro_batch_size=4", "name=one"]))
    out = tmp_path / "outputs"
    two, one = (list(step_metrics(out / n, KEYS).values()) for n in ("two", "one"))
    assert len(two) == 3
    for got, want in zip(two, one, strict=True):
        assert got[0] == pytest.approx(want[0], rel=1e-5)
        # The value model's gradient norm is of the whole batch's gradient: one rank's half
        # alone (no all-reduce) would be off by far more than float noise.
        assert got[1:4] == pytest.approx(want[1:4], rel=3e-3)
        assert got[4] == pytest.approx(want[4], abs=2e-3)


@pytest.mark.parametrize("mode", ["zero2", "zero3"])
def test_killed_zero_ppo_run_resumes_its_value_engine_to_the_uninterrupted_run(
    tmp_path, tiny_llama_dir, mode
):
    """2 ranks under ZeRO checkpoint at step 2 and die after step 3; resumed, steps 3 and 4
    equal the uninterrupted run's. At lr 1e-2 a value model restarted from its initial weights
    or a fresh optimizer would change the value losses far beyond float noise."""
    base = [
        *ppo_overrides(tmp_path, tiny_llama_dir),
        f"distributed={mode}",
        "trainer.micro_batch_size=2",
        "trainer.max_steps=4",
        "trainer.save_every=2",
        "optim.lr=1e-2",
    ]
    ok(run_ranks([*base, "name=whole"], timeout=900))
    crashed = run_ranks([*base, "name=broken"], env={"BIGFT_CRASH_AFTER_STEP": "3"}, timeout=900)
    assert crashed.returncode != 0
    out = tmp_path / "outputs"
    step_2 = latest_checkpoint(out / "broken")
    assert step_2.name == "step_00000002"
    assert (step_2 / "value" / "deepspeed").is_dir()  # the value engine's own ZeRO shards
    ok(run_ranks([*base, "name=broken"], timeout=900))
    whole, resumed = (step_metrics(out / n, KEYS) for n in ("whole", "broken"))
    assert sorted(resumed) == [1, 2, 3, 4]
    for step, want in whole.items():
        assert resumed[step] == pytest.approx(want, rel=1e-5, abs=1e-7), step
    if mode == "zero2":  # its shards load only at the world size that wrote them: said so
        # (last: a failed start still rewrites the run's config.yaml)
        moved = run_ranks([*base, "name=broken", "trainer.micro_batch_size=4"], nproc=1)
        assert moved.returncode != 0
        assert "on another number of ranks than wrote the checkpoint" in moved.stderr
