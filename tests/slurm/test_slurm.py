"""launcher=slurm against a real Slurm cluster: submit, train with 2 ranks, survive a
preemption signal, sweep as a job array, and refuse bad submissions clearly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from bigft.config import compose_config
from bigft.train import train
from tests.integration.runs import train_losses, train_overrides

from .conftest import wait_for_job

pytestmark = pytest.mark.slurm

# Two ranks, one CPU each: the whole test node. Dropout off, so 2 ranks ≡ 1 process.
TWO_RANKS = ["launcher=slurm", "launcher.nproc_per_node=2", "launcher.time=00:10:00"]
EXACT = ["method.dropout=0", "optim.scheduler=cosine"]


def bigft_train(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bigft.train", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def submitted_job(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    match = re.search(r"submitted Slurm job (\d+)", result.stdout)
    assert match, result.stdout
    return match.group(1)


def job_log(run_dir: Path, job_id: str) -> str:
    return (run_dir / "slurm" / f"{job_id}.out").read_text()


def finished(run_dir: Path, job_id: str, timeout: float = 300) -> str:
    state = wait_for_job(job_id, timeout)
    log = job_log(run_dir, job_id)
    assert state["JobState"] == "COMPLETED", f"{state['JobState']}:\n{log[-4000:]}"
    return log


def one_process(tmp_path: Path, overrides: list[str], micro_batch: int) -> dict[int, float]:
    """The same run in this process, on the same global batch: the reference trajectory."""
    cfg = compose_config([*overrides, "name=reference", f"trainer.micro_batch_size={micro_batch}"])
    train(cfg)
    return train_losses(tmp_path / "outputs" / "reference")


def test_zero3_job_trains_and_its_model_loads_back(slurm_cluster, tmp_path, tiny_llama_dir):
    base = [*train_overrides(tmp_path, tiny_llama_dir, "sft", "full"), *EXACT]
    base.append("trainer.max_steps=3")
    ranks = [*TWO_RANKS, "distributed=zero3", "trainer.micro_batch_size=1"]
    job = submitted_job(bigft_train(*base, *ranks, "name=job"))
    run_dir = tmp_path / "outputs" / "job"
    log = finished(run_dir, job)
    assert "restart 0" in log

    reference = one_process(tmp_path, base, micro_batch=2)
    assert list(train_losses(run_dir)) == [1, 2, 3]
    assert list(train_losses(run_dir).values()) == pytest.approx(list(reference.values()), rel=1e-5)
    # The 2-rank ZeRO-3 model, gathered from its shards, is a plain HF model again.
    tuned = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    alone = AutoModelForCausalLM.from_pretrained(tmp_path / "outputs" / "reference" / "model")
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    torch.testing.assert_close(tuned(ids).logits, alone(ids).logits, rtol=1e-4, atol=1e-5)


def _wandb_ids(run_dir: Path) -> list[str]:
    return [p.name.rsplit("-", 1)[-1] for p in sorted((run_dir / "wandb").glob("offline-run-*"))]


def _wait_for_step(run_dir: Path, step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run_dir / "metrics.jsonl").exists() and max(train_losses(run_dir), default=0) >= step:
            return
        time.sleep(0.1)
    raise AssertionError(f"the job never logged step {step}")


def test_preempted_job_checkpoints_requeues_and_resumes_exactly(
    slurm_cluster, tmp_path, tiny_llama_dir
):
    steps = 12
    base = [*train_overrides(tmp_path, tiny_llama_dir, "sft", "lora"), *EXACT]
    base += [f"trainer.max_steps={steps}", "logger=wandb"]
    # Slow steps leave time to signal the job in the middle of its run.
    slow = {"BIGFT_SLOW_STEP_SECONDS": "0.5"}
    job = submitted_job(
        bigft_train(
            *base, *TWO_RANKS, "distributed=ddp", "name=job", "trainer.micro_batch_size=1", env=slow
        )
    )
    run_dir = tmp_path / "outputs" / "job"
    _wait_for_step(run_dir, 2)
    # What Slurm sends before a time limit or preemption, to every rank of the job.
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    log = finished(run_dir, job, timeout=300)

    stopped = re.search(r"stopped after step (\d+) on SIGUSR2; checkpoint written; requeued", log)
    assert stopped, log[-4000:]
    assert 2 <= int(stopped.group(1)) < steps
    assert "restart 1" in log  # the same job id came back
    assert re.search(rf"resumed from \S+step_0*{stopped.group(1)} \(step {stopped.group(1)}\)", log)

    losses = train_losses(run_dir)
    assert sorted(losses) == list(range(1, steps + 1))
    reference = one_process(tmp_path, base, micro_batch=2)
    assert [losses[s] for s in sorted(losses)] == pytest.approx(list(reference.values()), rel=1e-5)
    # One W&B run, continued across the requeue (one offline directory per attempt).
    ids = _wandb_ids(run_dir)
    assert len(ids) == 2 and ids[0] == ids[1], ids


def test_sweep_runs_as_a_job_array_with_one_run_directory_per_point(
    slurm_cluster, tmp_path, tiny_llama_dir
):
    base = train_overrides(tmp_path, tiny_llama_dir, "lm", "lora")
    result = bigft_train(
        "-m", *base, "launcher=slurm", "launcher.time=00:10:00", "name=sweep", "optim.lr=1e-3,3e-3"
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    runs = sorted((tmp_path / "outputs" / "sweep-sweep").glob("optim.lr=*"))
    assert [r.name for r in runs] == ["optim.lr=0.001", "optim.lr=0.003"]
    for run, lr in zip(runs, [1e-3, 3e-3], strict=True):
        assert OmegaConf.load(run / "config.yaml").optim.lr == lr
        assert (run / "model" / "adapter_model.safetensors").exists()
        assert list(train_losses(run)) == [1, 2]
    # Both points ran as tasks of one Slurm job array ("<array id>_<task>").
    logs = sorted(
        p.name for p in (tmp_path / "outputs" / "sweep-sweep" / ".submitit").glob("[0-9]*_[0-9]*")
    )
    assert len(logs) == 2 and logs[0].split("_")[0] == logs[1].split("_")[0], logs


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("launcher.partition=nosuch", "invalid partition"),
        ("launcher.nodes=5", "more processors requested than permitted"),
        ("launcher.mem=100000G", "memory specification can not be satisfied"),
        ("launcher.gpus_per_node=8", "invalid generic resource"),
    ],
)
def test_a_submission_slurm_refuses_is_a_clear_error(
    slurm_cluster, tmp_path, tiny_llama_dir, override, expected
):
    base = train_overrides(tmp_path, tiny_llama_dir, "lm", "lora")
    result = bigft_train(*base, "launcher=slurm", override)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "bigft: error: Slurm refused the job:" in result.stderr
    assert expected in result.stderr.lower()
    assert override in result.stderr  # what was asked for, in the user's keys


def test_bad_data_is_reported_before_anything_is_queued(slurm_cluster, tmp_path, tiny_llama_dir):
    base = train_overrides(tmp_path, tiny_llama_dir, "lm", "lora")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"text": oops}\n')
    before = subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout
    result = bigft_train(*base, "launcher=slurm", f"data.train={broken}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert re.search(rf"data\.train: {re.escape(str(broken))}:2", result.stderr), result.stderr
    assert subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout == before


def test_past_max_requeues_the_job_stops_with_its_checkpoint_and_a_resubmission_resumes(
    slurm_cluster, tmp_path, tiny_llama_dir
):
    steps = 8
    command = [
        *train_overrides(tmp_path, tiny_llama_dir, "lm", "lora"),
        *TWO_RANKS,
        "distributed=ddp",
        "name=job",
        f"trainer.max_steps={steps}",
        "launcher.max_requeues=0",
    ]
    first = submitted_job(bigft_train(*command, env={"BIGFT_SLOW_STEP_SECONDS": "0.5"}))
    run_dir = tmp_path / "outputs" / "job"
    _wait_for_step(run_dir, 2)
    subprocess.run(["scancel", "--signal=USR2", first], check=True)
    state = wait_for_job(first)
    log = job_log(run_dir, first)
    assert state["JobState"] == "FAILED" and state["ExitCode"] == "75:0", log[-3000:]
    assert "not requeued: it already was 0 times (launcher.max_requeues=0)" in log
    stopped_at = max(train_losses(run_dir))
    assert stopped_at < steps

    # The user's next step: the same command again.
    second = submitted_job(bigft_train(*command))
    log = finished(run_dir, second)
    assert f"(step {stopped_at})" in log and "resumed from" in log
    assert sorted(train_losses(run_dir)) == list(range(1, steps + 1))


def test_ranks_come_from_slurm_variables(slurm_cluster, monkeypatch):
    from bigft.launch.slurm_job import torch_env_from_slurm

    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        # setenv first, so that monkeypatch removes what the function sets, afterwards.
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    slurm = {
        "SLURM_NTASKS": "16",
        "SLURM_PROCID": "11",
        "SLURM_LOCALID": "3",
        "SLURM_JOB_ID": "123456",
        "SLURM_JOB_NODELIST": "gpu[007-008]",
    }
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    torch_env_from_slurm()
    assert [os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR")] == [
        "11",
        "3",
        "16",
        "gpu007",
    ]
    assert os.environ["MASTER_PORT"] == str(20000 + 123456 % 20000)


def test_srun_in_a_users_own_script_runs_one_rank_per_task(slurm_cluster, tmp_path, tiny_llama_dir):
    base = [*train_overrides(tmp_path, tiny_llama_dir, "sft", "full"), *EXACT]
    base.append("trainer.max_steps=2")
    command = [sys.executable, "-m", "bigft.train", *base, "distributed=ddp", "name=own"]
    log = tmp_path / "own.out"
    submitted = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--ntasks=2",
            f"--output={log}",
            "--wrap",
            "srun " + " ".join(command),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    state = wait_for_job(submitted.stdout.strip().split(";")[0])
    assert state["JobState"] == "COMPLETED", log.read_text()[-3000:]
    reference = one_process(tmp_path, base, micro_batch=4)
    losses = train_losses(tmp_path / "outputs" / "own")
    assert list(losses.values()) == pytest.approx(list(reference.values()), rel=1e-5)
