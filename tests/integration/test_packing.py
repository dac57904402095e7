"""`task.packing=true` end to end: fewer, fuller rows; unpacked evaluation; exact resumption."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bigft.train import train

from .runs import read_metrics, train_losses


def test_packed_epoch_has_fewer_steps_and_the_same_tokens(make_cfg):
    common = (
        "task.max_length=256",
        "trainer.max_steps=-1",
        "trainer.micro_batch_size=1",
        "optim.scheduler=constant",
    )
    plain = make_cfg("lm", "full", "name=plain", *common)
    packed = make_cfg("lm", "full", "name=packed", "task.packing=true", *common)
    train(plain)
    metrics = train(packed)
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["eval/loss"])
    plain_log = read_metrics(Path(plain.output_dir))
    packed_log = read_metrics(Path(packed.output_dir))
    plain_steps = [m for m in plain_log if "train/loss" in m]
    packed_steps = [m for m in packed_log if "train/loss" in m]
    # Micro-batch 1 drops nothing at the epoch's end, so both runs see every token once.
    assert len(plain_steps) == 24
    assert len(packed_steps) < 24 / 2
    assert packed_steps[-1]["train/tokens_seen"] == plain_steps[-1]["train/tokens_seen"]
    # Evaluation does not pack: the same weights would give the same eval loss either way, and
    # the first evaluation differs only by what training did.
    assert [m for m in packed_log if "eval/loss" in m]


def test_packed_sft_resumes_exactly_and_evaluates_by_generation(make_cfg):
    common = (
        "task.packing=true",
        "task.max_length=128",
        "task.eval_generate=true",
        "task.max_new_tokens=4",
        "trainer.save_every=2",
        "optim.scheduler=constant",
    )
    whole = make_cfg("sft", "lora", "name=whole", "trainer.max_steps=4", *common)
    train(whole)
    expected = train_losses(Path(whole.output_dir))
    first = make_cfg("sft", "lora", "name=split", "trainer.max_steps=2", *common)
    train(first)
    # trainer.max_steps may change on resume; the run continues from its step-2 checkpoint.
    final = train(make_cfg("sft", "lora", "name=split", "trainer.max_steps=4", *common))
    resumed = train_losses(Path(first.output_dir))
    assert sorted(resumed) == [1, 2, 3, 4]
    assert resumed == pytest.approx(expected, rel=1e-6)
    assert 0.0 <= final["eval/exact_match"] <= 100.0
