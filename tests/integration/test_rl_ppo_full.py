"""task=ppo under method=full|freeze through train(): the separate value model (a copy of the
policy or of the reward model) trains with its own optimizer and schedule, rides in the
checkpoint, and a killed run resumes to the uninterrupted run's numbers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bigft.engine.checkpoint import list_checkpoints
from bigft.engine.loop import Faults
from bigft.errors import CheckpointError
from bigft.rl.value_model import VALUE_FILE, VALUE_OPTIMIZER_FILE, VALUE_SCHEDULER_FILE
from bigft.train import train

from .runs import read_metrics, step_metrics

REWARD = "reward.fn=tests.integration.rl_rewards:letters"
FAST = ("task.max_new_tokens=6", "trainer.micro_batch_size=4", "optim.lr=1e-3")
KEYS = ("train/reward", "train/loss", "train/value_loss", "train/kl", "train/value_grad_norm")


def test_full_ppo_resume_reproduces_the_uninterrupted_run(make_cfg):
    # A warmup-then-decay schedule: the value model's own schedule must come back at its step.
    common = (
        REWARD, *FAST, "task.num_generations=2", "trainer.max_steps=4", "trainer.save_every=2",
        "task.mini_batches=2", "task.ppo_epochs=2", "optim.warmup_steps=2",
        "trainer.eval_every=0", "trainer.save_model=false",
    )  # fmt: skip
    whole = make_cfg("ppo", "full", "name=whole", *common)
    metrics = train(whole)
    expected = step_metrics(Path(whole.output_dir), KEYS)
    broken = make_cfg("ppo", "full", "name=broken", *common)
    with pytest.raises(RuntimeError, match="simulated crash after step 3"):
        train(broken, faults=Faults(crash_after_step=3))
    train(broken)
    resumed = step_metrics(Path(broken.output_dir), KEYS)
    assert sorted(resumed) == [1, 2, 3, 4]
    for step, values in expected.items():
        assert resumed[step] == pytest.approx(values, rel=1e-5, abs=1e-7), step
    for key in (
        "train/value_loss",
        "train/explained_variance",
        "train/kl",
        "train/value_grad_norm",
    ):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert metrics["train/value_grad_norm"] > 0
    # The policy copy's zero head: the first rollout is valued at exactly 0.
    first = next(m for m in read_metrics(Path(whole.output_dir)) if "train/value_mean" in m)
    assert first["step"] == 1 and first["train/value_mean"] == 0
    last = list_checkpoints(Path(whole.output_dir))[-1]
    for name in (VALUE_FILE, VALUE_OPTIMIZER_FILE, VALUE_SCHEDULER_FILE):
        assert (last / name).is_file(), name
    saved = load_file(last / VALUE_FILE)
    # The head started at zero and learnt; the decoder is the policy's, trained apart from it.
    assert float(saved["head.weight"].abs().sum()) > 0
    assert any(k.startswith("decoder.layers.") for k in saved)
    assert torch.load(last / VALUE_SCHEDULER_FILE, weights_only=True)["last_epoch"] == 4


def test_freeze_ppo_starts_the_value_model_from_the_reward_model(
    make_cfg, tmp_path, tiny_llama_dir
):
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    config = AutoConfig.from_pretrained(tiny_llama_dir, num_labels=1)
    torch.manual_seed(5)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(tmp_path / "rm")
    overrides = (
        *FAST, "method.train_last_n_blocks=1", f"reward.model={tmp_path / 'rm'}",
        "task.value_init=reward", "trainer.max_steps=2", "trainer.eval_every=0",
    )  # fmt: skip
    cfg = make_cfg("ppo", "freeze", *overrides)
    metrics = train(cfg)
    assert metrics["train/value_loss"] > 0 and math.isfinite(metrics["train/loss"])
    saved = load_file(list_checkpoints(Path(cfg.output_dir))[-1] / VALUE_FILE)
    # The blocks method=freeze trains in the policy, and the reward model's score head (no bias).
    assert any(k.startswith("decoder.layers.1.") for k in saved)
    assert not any(k.startswith("decoder.layers.0.") for k in saved)
    assert "head.weight" in saved and "head.bias" not in saved
    # The final model is the policy alone: the value model is a training aid, in checkpoints.
    model = Path(cfg.output_dir) / "model"
    assert (model / "config.json").is_file() and not (model / "value").exists()
    # A value model that cannot be read back stops the resume with the reason.
    value_file = list_checkpoints(Path(cfg.output_dir))[-1] / VALUE_FILE
    value_file.write_bytes(b"x" * value_file.stat().st_size)
    with pytest.raises(CheckpointError, match="cannot be loaded: the value model"):
        train(make_cfg("ppo", "freeze", *overrides, "trainer.max_steps=3"))


def test_full_ppo_starts_the_value_model_from_a_bigft_lora_reward_run(
    make_cfg, tmp_path, tiny_llama_dir
):
    from bigft.config import compose_config

    from .runs import train_overrides

    rm = compose_config(
        [*train_overrides(tmp_path, tiny_llama_dir, "reward", "lora"), "name=rm",
         "trainer.max_steps=2"]
    )  # fmt: skip
    train(rm)
    cfg = make_cfg(
        "ppo", "full", *FAST, f"reward.model={rm.output_dir}", "task.value_init=reward",
        "trainer.max_steps=1", "trainer.eval_every=0", "trainer.save_model=false",
    )  # fmt: skip
    train(cfg)
    first = next(m for m in read_metrics(Path(cfg.output_dir)) if "train/value_mean" in m)
    # The reward model's merged weights and head value the first rollout (a policy copy's zero
    # head would give exactly 0).
    assert first["train/value_mean"] != 0 and math.isfinite(first["train/value_loss"])
