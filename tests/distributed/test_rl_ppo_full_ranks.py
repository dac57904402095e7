"""task=ppo under method=full on 2 DDP ranks equals one process: the separate value model is
wrapped for DDP like the policy, so its gradients are the whole batch's on every rank."""

from __future__ import annotations

import pytest

from bigft.config import compose_config
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


def test_full_ppo_on_two_ddp_ranks_equals_one_process(tmp_path, tiny_llama_dir):
    base = [
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
    result = run_ranks(
        [*base, "distributed=ddp", "trainer.micro_batch_size=2", "name=two"], timeout=900
    )
    ok(result)
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
