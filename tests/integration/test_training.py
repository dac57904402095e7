"""End-to-end runs of the one loop: every method × task, equivalences, resume, failure handling."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from bigft.engine.checkpoint import latest_checkpoint, list_checkpoints
from bigft.engine.loop import Faults
from bigft.errors import ConfigError, DataError, TrainingError
from bigft.train import train

from .runs import read_metrics, train_losses

METHODS = ["full", "freeze", "lora", "qlora", "prefix"]
TASKS = ["lm", "sft", "classify", "reward", "dpo"]
# Combinations the libraries cannot do: refused at start-up, with the reason.
REFUSED = {
    ("prefix", "classify"): "prefix tuning cannot train a classification or reward head",
    ("prefix", "reward"): "prefix tuning cannot train a classification or reward head",
}


def _output_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    model_dir = run_dir / "model"
    files = sorted(model_dir.glob("*.safetensors"))
    assert files, f"no safetensors written in {model_dir}"
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        weights.update(load_file(f))
    return weights


def _check_what_trained(method: str, task: str, run_dir: Path, base_dir: Path) -> None:
    """The saved output shows that the method's parameters, and only those, moved."""
    if method in ("lora", "qlora"):
        lora_b = {k: v for k, v in _output_weights(run_dir).items() if "lora_B" in k}
        assert lora_b and all(v.abs().sum() > 0 for v in lora_b.values())
        return
    if method == "prefix":
        assert any("prompt_embeddings" in k or "embedding" in k for k in _output_weights(run_dir))
        return
    head_task = task in ("classify", "reward")
    cls = AutoModelForSequenceClassification if head_task else AutoModelForCausalLM
    tuned = dict(cls.from_pretrained(run_dir / "model").named_parameters())
    base = dict(AutoModelForCausalLM.from_pretrained(base_dir).named_parameters())
    for name, param in tuned.items():
        if name not in base:  # the new classification / reward head
            continue
        changed = not torch.equal(param, base[name])
        if method == "full":
            # Every tensor that received a gradient moved (the embedding of unused tokens
            # may not, so compare tensors, not rows).
            assert changed or "embed" in name, name
        else:  # freeze, 0 blocks: only the head trains
            assert changed == (name.startswith("lm_head") and not head_task), name


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_every_task(make_cfg, tiny_llama_dir, method, task):
    cfg = make_cfg(task, method)
    if (method, task) in REFUSED:
        with pytest.raises(ConfigError, match=REFUSED[method, task]):
            train(cfg)
        assert not (Path(cfg.output_dir) / "metrics.jsonl").exists()
        return
    metrics = train(cfg)
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["eval/loss"])
    run_dir = Path(cfg.output_dir)
    assert [m["step"] for m in read_metrics(run_dir) if "train/loss" in m] == [1, 2]
    _check_what_trained(method, task, run_dir, tiny_llama_dir)


def _losses(make_cfg, *overrides: str, task: str = "sft") -> list[float]:
    cfg = make_cfg(task, "full", *overrides, "optim.scheduler=cosine", "trainer.max_steps=3")
    train(cfg)
    return list(train_losses(Path(cfg.output_dir)).values())


@pytest.mark.parametrize("task", ["sft", "classify"])
def test_accumulation_is_equivalent_to_a_larger_micro_batch(make_cfg, task):
    big = _losses(
        make_cfg, "name=mb4", "trainer.micro_batch_size=4", "trainer.grad_accum=1", task=task
    )
    small = _losses(
        make_cfg, "name=mb1", "trainer.micro_batch_size=1", "trainer.grad_accum=4", task=task
    )
    assert len(big) == 3
    assert small == pytest.approx(big, rel=1e-5, abs=1e-6)
    # The updates matter: later losses differ from the first, so the test compares training.
    assert big[2] != pytest.approx(big[0], rel=1e-4)


@pytest.mark.parametrize(
    "reward",
    ["task.pair_weighting=per_ranking", "task.pair_weighting=per_pair", "task.aggregate=pairs"],
)
def test_reward_accumulation_is_equivalent_to_a_larger_micro_batch(make_cfg, reward):
    # Rankings of 2 to 4 responses, some with two reviewers: the units of a micro-batch (rankings
    # or pairs) vary, and the loop's normalisation by the window's units must still hold.
    big = _losses(make_cfg, "name=mb4", reward, "trainer.micro_batch_size=4", task="reward")
    small = _losses(
        make_cfg,
        "name=mb1",
        reward,
        "trainer.micro_batch_size=1",
        "trainer.grad_accum=4",
        task="reward",
    )
    assert small == pytest.approx(big, rel=1e-5, abs=1e-6)
    assert big[2] != pytest.approx(big[0], rel=1e-4)


def test_resume_reproduces_the_uninterrupted_run(make_cfg):
    # LoRA dropout makes the RNG state part of what must be restored.
    common = (
        "method.dropout=0.1",
        "trainer.max_steps=6",
        "trainer.save_every=2",
        "optim.scheduler=cosine",
    )
    whole = make_cfg("sft", "lora", "name=whole", *common)
    train(whole)
    expected = train_losses(Path(whole.output_dir))

    broken = make_cfg("sft", "lora", "name=broken", *common)
    with pytest.raises(RuntimeError, match="simulated crash after step 3"):
        train(broken, faults=Faults(crash_after_step=3))
    assert latest_checkpoint(Path(broken.output_dir)).name == "step_00000002"
    train(broken)  # trainer.resume=auto is the default
    resumed = train_losses(Path(broken.output_dir))
    assert resumed == pytest.approx(expected, rel=1e-6)
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]


def test_rerun_with_a_different_config_or_resume_never_is_refused(make_cfg):
    cfg = make_cfg("lm", "full", "trainer.save_every=1")
    train(cfg)
    with pytest.raises(ConfigError, match=r"optim.lr: 0.001 → 0.002"):
        train(make_cfg("lm", "full", "trainer.save_every=1", optim__lr=0.002))
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        train(make_cfg("lm", "full", "trainer.resume=never"))
    # A finished run resumed with more steps continues where it stopped.
    more = make_cfg("lm", "full", "trainer.save_every=1", trainer__max_steps=3)
    train(more)
    assert sorted(train_losses(Path(more.output_dir))) == [1, 2, 3]


def test_non_finite_steps_are_skipped_then_training_stops_keeping_good_checkpoints(make_cfg):
    cfg = make_cfg(
        "lm",
        "full",
        "optim.name=sgd",
        "optim.lr=1e30",
        "optim.max_grad_norm=null",
        "trainer.max_steps=10",
        "trainer.save_every=1",
        "trainer.max_bad_steps=2",
    )
    with pytest.raises(TrainingError, match="2 steps in a row had a non-finite loss"):
        train(cfg)
    run_dir = Path(cfg.output_dir)
    for checkpoint in list_checkpoints(run_dir):
        weights = load_file(checkpoint / "trainable.safetensors")
        assert all(torch.isfinite(t).all() for t in weights.values()), checkpoint


def test_metrics_and_config_are_written_to_the_run_directory(make_cfg):
    cfg = make_cfg("sft", "lora", "trainer.eval_at_start=true")
    train(cfg)
    run_dir = Path(cfg.output_dir)
    metrics = read_metrics(run_dir)
    train_keys = {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_sec"}
    assert train_keys <= set(metrics[1])
    assert "eval/loss" in metrics[0] and metrics[0]["step"] == 0  # the base model's eval
    assert "eval/loss" in metrics[-1]
    # The saved config is the resolved config that ran.
    saved = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    assert saved == OmegaConf.to_container(cfg, resolve=True)
    assert saved["optim"]["lr"] == 0.001


def test_wandb_offline_run_is_written_and_resumed_under_the_same_id(make_cfg, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = make_cfg("lm", "full", "logger=wandb", "trainer.max_steps=4", "trainer.save_every=2")
    with pytest.raises(RuntimeError):
        train(cfg, faults=Faults(crash_after_step=3))
    state = json.loads((latest_checkpoint(Path(cfg.output_dir)) / "state.json").read_text())
    run_id = state["wandb_id"]
    assert run_id
    train(cfg)
    # One offline run directory per launch, both logging to the same run id. (The directory
    # name is not the place to look: when both launches start within one second, wandb adds a
    # "-1" suffix to the second one's name.)
    runs = sorted((Path(cfg.output_dir) / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    assert all((r / f"run-{run_id}.wandb").is_file() for r in runs)


def test_bad_data_stops_before_training(make_cfg, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": broken\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2"):
        train(make_cfg("lm", "full", f"data.train={bad}"))


@pytest.mark.parametrize("optimizer", ["adamw_8bit", "paged_adamw", "paged_adamw_8bit"])
def test_bitsandbytes_optimizers_train_qlora(make_cfg, optimizer):
    cfg = make_cfg("sft", "qlora", f"optim={optimizer}", "trainer.max_steps=3")
    metrics = train(cfg)
    assert math.isfinite(metrics["train/loss"])
    # LoRA's B starts at zero: non-zero B in the saved adapter means the optimizer stepped.
    _check_what_trained("qlora", "sft", Path(cfg.output_dir), base_dir=Path())


def test_resume_may_split_the_global_batch_differently_but_not_resize_it(make_cfg):
    cfg = make_cfg("lm", "full", "trainer.save_every=1", "trainer.micro_batch_size=2")
    train(cfg)
    with pytest.raises(ConfigError, match=r"global batch of 2 .* this run's is 4"):
        train(make_cfg("lm", "full", "trainer.save_every=1", "trainer.micro_batch_size=4"))
    more = ("trainer.micro_batch_size=1", "trainer.grad_accum=2", "trainer.max_steps=3")
    train(make_cfg("lm", "full", "trainer.save_every=1", *more))
    assert sorted(train_losses(Path(cfg.output_dir))) == [1, 2, 3]
