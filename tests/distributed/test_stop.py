"""Ctrl-C on a 2-rank job started by bigft itself (torchrun underneath): both ranks stop after
the same step with one checkpoint whose manifest covers DeepSpeed's shards, the job exits 130
in one line, and the rerun continues to the uninterrupted losses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from bigft.engine.checkpoint import MANIFEST_FILE, list_checkpoints
from tests.distributed.test_distributed import config, ok, run_ranks
from tests.integration.runs import read_metrics, train_losses
from tests.integration.test_reliability import _wait_for_step

pytestmark = pytest.mark.distributed


def test_ctrl_c_stops_both_ranks_with_a_checkpoint_and_the_rerun_continues(
    tmp_path, tiny_llama_dir
):
    common = config(tmp_path, tiny_llama_dir, "lora", "zero3", "trainer.micro_batch_size=2")
    common = [*common, "trainer.max_steps=6", "launcher.nproc_per_node=2"]
    ok(run_ranks([*common, "name=whole"], nproc=2))
    run_dir = tmp_path / "outputs" / "stopped"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bigft.train", *common, "name=stopped"],
        env={**os.environ, "BIGFT_SLOW_STEP_SECONDS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_step(run_dir, 2, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err[-4000:]
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if "bigft: stopped after step" in line]) == 1
    (checkpoint,) = list_checkpoints(run_dir)
    files = json.loads((checkpoint / MANIFEST_FILE).read_text())["files"]
    assert any(name.startswith("deepspeed/") for name in files)
    assert {"rng_rank0.pt", "rng_rank1.pt"} <= set(files)

    ok(run_ranks([*common, "name=stopped"], nproc=2))
    resumed = train_losses(run_dir)
    assert [m["step"] for m in read_metrics(run_dir) if "train/loss" in m] == [1, 2, 3, 4, 5, 6]
    assert resumed == pytest.approx(train_losses(tmp_path / "outputs" / "whole"), rel=1e-5)
