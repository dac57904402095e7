"""task=ppo end to end through train(): the metrics a step reports, a killed run resuming to the
uninterrupted run's numbers (value adapter and head, KL controller and reward normaliser all in
the checkpoint), and what cannot work refused at start-up with the reason."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bigft.engine.loop import Faults
from bigft.errors import ConfigError
from bigft.train import train

from .runs import step_metrics

REWARD = "reward.fn=tests.integration.rl_rewards:letters"
FAST = ("task.max_new_tokens=6", "trainer.micro_batch_size=4", "optim.lr=1e-2")
KEYS = ("train/reward", "train/loss", "train/value_loss", "train/score", "train/kl_coef")


def test_ppo_resume_reproduces_the_uninterrupted_run(make_cfg):
    # LoRA dropout (the RNG), an adaptive β and the running reward normaliser must all come
    # back, and the value adapter and head with the weights, for every number to match.
    common = (
        REWARD, *FAST, "method.dropout=0.1", "task.normalize_rewards=true",
        "task.kl_target=0.01", "task.kl_horizon=8", "task.num_generations=2",
        "trainer.max_steps=5", "trainer.save_every=2", "task.mini_batches=2", "task.ppo_epochs=2",
    )  # fmt: skip
    whole = make_cfg("ppo", "lora", "name=whole", *common)
    metrics = train(whole)
    expected = step_metrics(Path(whole.output_dir), KEYS)
    broken = make_cfg("ppo", "lora", "name=broken", *common)
    with pytest.raises(RuntimeError, match="simulated crash after step 3"):
        train(broken, faults=Faults(crash_after_step=3))
    train(broken)
    resumed = step_metrics(Path(broken.output_dir), KEYS)
    assert sorted(resumed) == [1, 2, 3, 4, 5]
    for step, values in expected.items():
        assert resumed[step] == pytest.approx(values, rel=1e-5, abs=1e-7), step
    # β adapted; the normalised scores are not the raw rewards (the normaliser was in use).
    assert metrics["train/kl_coef"] != pytest.approx(0.05, rel=0.01)
    assert metrics["train/score"] != pytest.approx(metrics["train/reward"], abs=1e-3)
    for key in (
        "train/value_loss", "train/value_clip_fraction", "train/explained_variance",
        "train/value_mean", "train/returns_mean", "train/clip_fraction", "train/approx_kl",
        "train/advantage_mean", "train/advantage_std", "train/kl", "train/entropy",
        "train/eos_fraction", "train/gen_tokens_per_sec", "eval/reward",
    ):  # fmt: skip
        assert key in metrics and math.isfinite(metrics[key]), key
    assert (Path(whole.output_dir) / "model" / "value").is_dir()  # the value adapter, saved


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("method=prefix",), "method=prefix with task=ppo"),
        # Under ZeRO-3 the value model is the policy loaded again, partitioned; not the reward
        # model (ZeRO-1/2 give either start a DeepSpeed engine of its own).
        (
            (
                "method=full",
                "distributed=zero3",
                "task.value_init=reward",
                "reward.model=/no/reward",
            ),
            "task.value_init=reward with method=full under distributed=zero3",
        ),
        (("method=full", "task.value_init=reward"), "task.value_init=reward needs reward.model"),
        (("task.value_init=reward",), "task.value_init=reward with method=lora"),
        (("task.kl_in=loss",), "task.kl_in"),
        (("task.lam=1.5",), "task.lam=1.5"),
        (("task.gamma=0",), "task.gamma=0"),
        (("task.value_clip_range=0",), "task.value_clip_range=0"),
        (("task.num_generations=0",), "task.num_generations=0"),
        # grpo's settings would be ignored by ppo without a word.
        (("task.advantage=rloo",), "task.advantage=rloo is a task=grpo setting"),
        (("task.scale_rewards=false",), "task.scale_rewards=False is a task=grpo setting"),
    ],
)
def test_ppo_refuses_what_cannot_work_at_start_up(make_cfg, overrides, message):
    method = next((o.split("=")[1] for o in overrides if o.startswith("method=")), "lora")
    more = [o for o in overrides if not o.startswith("method=")]
    cfg = make_cfg("ppo", method, REWARD, *more)
    with pytest.raises(ConfigError, match=message):
        train(cfg)


def test_ppo_trains_a_value_adapter_over_a_4bit_base(make_cfg):
    cfg = make_cfg(
        "ppo", "qlora", REWARD, "task.max_new_tokens=4", "trainer.max_steps=2",
        "trainer.eval_every=0", "data.max_eval_examples=2",
    )  # fmt: skip
    metrics = train(cfg)
    assert metrics["train/value_loss"] > 0 and math.isfinite(metrics["train/loss"])
    model = Path(cfg.output_dir) / "model"
    assert (model / "adapter_model.safetensors").is_file() and (model / "value").is_dir()
