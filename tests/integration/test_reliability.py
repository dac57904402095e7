"""The reliability battery, on real `bigft-train` processes: kills in the middle of checkpoint
writes, damaged checkpoints, Ctrl-C and SIGTERM, and config typos. Each must keep the work done
(a resume reproduces the uninterrupted run's losses exactly) or say clearly what is wrong."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bigft.config import compose_config
from bigft.engine.checkpoint import TRAINABLE_FILE, list_checkpoints
from bigft.engine.loop import Faults
from bigft.train import train

from .runs import read_metrics, train_losses, train_overrides

STEPS = 6


def _overrides(tmp_path: Path, model_dir: Path, name: str, *more: str) -> list[str]:
    # LoRA dropout makes the RNG state part of what a resume must restore.
    base = train_overrides(tmp_path, model_dir, "sft", "lora")
    return [*base, f"name={name}", f"trainer.max_steps={STEPS}", "method.dropout=0.1", *more]


def _start(args: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bigft.train", *args],
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen) -> None:
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and any(
            json.loads(line).get("step", 0) >= step for line in metrics.read_text().splitlines()
        ):
            return
        time.sleep(0.05)
    raise AssertionError(f"the run never reached step {step}: {proc.communicate()}")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_llama_dir) -> dict[int, float]:
    tmp = tmp_path_factory.mktemp("whole")
    cfg = compose_config(_overrides(tmp, tiny_llama_dir, "whole"))
    train(cfg)
    losses = train_losses(Path(cfg.output_dir))
    assert sorted(losses) == list(range(1, STEPS + 1))
    return losses


@pytest.mark.parametrize(
    ("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"]
)
def test_a_signal_checkpoints_exits_with_its_status_and_the_rerun_continues_exactly(
    tmp_path, tiny_llama_dir, uninterrupted, signum, status
):
    args = _overrides(tmp_path, tiny_llama_dir, "signalled")
    run_dir = tmp_path / "outputs" / "signalled"
    proc = _start(args, tmp_path, BIGFT_SLOW_STEP_SECONDS="0.5")
    _wait_for_step(run_dir, 2, proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err[-3000:]
    assert "Traceback" not in err
    stopped = [line for line in err.splitlines() if line.startswith("bigft: stopped after step")]
    assert len(stopped) == 1, err[-3000:]
    step = int(stopped[0].split()[4])
    assert f"on {signum.name}" in stopped[0] and str(run_dir) in stopped[0]
    assert 2 <= step < STEPS
    assert [p.name for p in list_checkpoints(run_dir)][-1] == f"step_{step:08d}"

    rerun = _start(args, tmp_path)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-3000:]
    assert f"(step {step})" in out  # "resumed from ... (step N)"
    assert train_losses(run_dir) == uninterrupted  # exact, and each step logged once
    assert [m["step"] for m in read_metrics(run_dir) if "train/loss" in m] == sorted(uninterrupted)


def test_a_second_ctrl_c_exits_at_once_leaving_only_complete_checkpoints(tmp_path, tiny_llama_dir):
    args = _overrides(tmp_path, tiny_llama_dir, "impatient", "trainer.save_every=1")
    run_dir = tmp_path / "outputs" / "impatient"
    proc = _start(args, tmp_path, BIGFT_SLOW_STEP_SECONDS="2")
    _wait_for_step(run_dir, 1, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert "bigft: second Ctrl-C: exiting now, without a checkpoint" in err
    assert "Traceback" not in err and "bigft: stopped after" not in err
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_00000001"]


def _resume_in_process(args: list[str]) -> Path:
    cfg = compose_config(args)
    train(cfg)
    return Path(cfg.output_dir)


def _train_killed(args: list[str], kill_at: str) -> None:
    os.environ["BIGFT_KILL_IN_CHECKPOINT"] = kill_at
    train(compose_config(args))


def _run_until_killed(args: list[str], kill_at: str) -> None:
    """Train in a child process that SIGKILLs itself at `kill_at`. Children fork from a server
    that has imported bigft but never run torch (a fork of this process could hang in OpenMP),
    so each kill costs no start-up."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["bigft.train"])
    child = context.Process(target=_train_killed, args=(args, kill_at))
    child.start()
    child.join(timeout=300)
    assert child.exitcode == -signal.SIGKILL


# Where a kill can land while a checkpoint is written (see _fault_point in engine/checkpoint.py):
# the shards written, the state written, the manifest written, the new copy renamed into place.
@pytest.mark.parametrize("point", ["sharded", "state", "manifest", "renamed"])
def test_a_kill_during_a_checkpoint_write_resumes_exactly(
    tmp_path, tiny_llama_dir, uninterrupted, point
):
    args = _overrides(tmp_path, tiny_llama_dir, "killed", "trainer.save_every=2")
    _run_until_killed(args, f"4:{point}")
    run_dir = _resume_in_process(args)
    assert train_losses(run_dir) == uninterrupted
    assert [m["step"] for m in read_metrics(run_dir) if "train/loss" in m] == sorted(uninterrupted)


def test_rerunning_a_finished_run_killed_while_it_replaces_its_last_checkpoint(
    tmp_path, tiny_llama_dir, uninterrupted
):
    # The case: the old code deleted the final checkpoint before writing its
    # replacement, so a kill left state.json without the weights, resumed from base weights.
    args = _overrides(tmp_path, tiny_llama_dir, "rerun", "trainer.save_every=2")
    run_dir = _resume_in_process(args)
    final_eval = read_metrics(run_dir)[-1]["eval/loss"]
    proc = _start(args, tmp_path, BIGFT_KILL_IN_CHECKPOINT=f"{STEPS}:aside")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err[-3000:]
    last = list_checkpoints(run_dir)[-1]
    assert last.name.endswith(f"step_{STEPS:08d}") and (last / TRAINABLE_FILE).is_file()
    _resume_in_process(args)
    assert read_metrics(run_dir)[-1]["eval/loss"] == pytest.approx(final_eval, rel=1e-6)
    assert train_losses(run_dir) == uninterrupted


def test_a_checkpoint_missing_its_weights_is_skipped_for_the_one_before(
    tmp_path, tiny_llama_dir, uninterrupted, caplog
):
    args = _overrides(tmp_path, tiny_llama_dir, "damaged", "trainer.save_every=2")
    run_dir = _resume_in_process(args)
    final_eval = read_metrics(run_dir)[-1]["eval/loss"]
    last = list_checkpoints(run_dir)[-1]
    (last / TRAINABLE_FILE).unlink()
    caplog.set_level(logging.INFO)
    _resume_in_process(args)
    assert f"skipping checkpoint {last}: {TRAINABLE_FILE} is missing" in caplog.text
    assert "resumed from" in caplog.text and "(step 4)" in caplog.text
    assert train_losses(run_dir) == uninterrupted
    assert read_metrics(run_dir)[-1]["eval/loss"] == pytest.approx(final_eval, rel=1e-6)


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("trainer.max_stpes=3", "did you mean trainer.max_steps"),
        ("trainer.max_steps=abc", "trainer.max_steps=abc"),
        ("method=lorra", "the choices: freeze, full, lora, prefix, qlora"),
    ],
)
def test_a_config_typo_on_the_command_line_exits_2_in_one_line(tmp_path, override, names):
    proc = _start([override], tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err[-3000:]
    assert err.strip().splitlines() == [err.strip()] and err.startswith("bigft: error: ")
    assert names in err and "Traceback" not in err


def test_checkpoints_every_few_minutes_by_default_agreed_on_the_step(make_cfg):
    assert compose_config([]).trainer.save_every_minutes == 30
    # A few milliseconds: every step of a slowed run is past the interval.
    cfg = make_cfg("lm", "full", "trainer.max_steps=3", "trainer.save_every_minutes=0.0001")
    train(cfg, faults=Faults(slow_step_seconds=0.05))
    # keep_last=2 pruned step 1's; step 2's was written by time, step 3's at the end.
    assert [p.name[-1] for p in list_checkpoints(Path(cfg.output_dir))] == ["2", "3"]
    never = make_cfg("lm", "full", "trainer.max_steps=3", "trainer.save_every_minutes=0", "name=x")
    train(never, faults=Faults(slow_step_seconds=0.05))
    assert [p.name[-1] for p in list_checkpoints(Path(never.output_dir))] == ["3"]


def test_a_complete_checkpoint_that_fails_to_load_stops_the_run_naming_it(tmp_path, tiny_llama_dir):
    args = _overrides(tmp_path, tiny_llama_dir, "corrupt", "trainer.save_every=2")
    run_dir = _resume_in_process(args)
    last = list_checkpoints(run_dir)[-1]
    weights = last / TRAINABLE_FILE
    weights.write_bytes(b"\0" * weights.stat().st_size)  # same size: the manifest cannot tell
    proc = _start(args, tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-3000:]
    assert f"bigft: error: checkpoint {last} cannot be loaded: {TRAINABLE_FILE}" in err
    assert "Traceback" not in err
