"""Inside a Slurm job: each `srun` task is one rank, and a warning signal ends in a requeue.

The layout: `srun` starts nodes × nproc_per_node tasks (one per GPU) and each runs bigft
directly, with no torchrun in between. Why:
- Slurm signals every task itself (`--signal=USR2@300`, `scancel --signal=USR2`), so every rank's
  handler is reached; torchrun's agent would not forward USR1/USR2 to its workers.
- Slurm already knows each rank (SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS); bigft only turns
  them into the variables torch.distributed reads, below.
- `srun --kill-on-bad-exit=1` ends the whole job when one rank fails.

On the signal the ranks agree to stop after the same step, write a checkpoint (see
bigft/engine/stop.py), and rank 0 runs `scontrol requeue`: the same job id comes back with the
same frozen config, resumes from that checkpoint and continues the same W&B run.

`python -m bigft.launch.slurm_job CONFIG.yaml` is what the sbatch script runs; sweeps (Hydra's
submitit launcher) reach `run_rank` from `bigft-train` inside their array tasks. Both hand
`run_rank` the training function: this module is imported by bigft.train, so it never imports it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from typing import NoReturn

from omegaconf import DictConfig

from bigft.engine.stop import Preempted, StopRequest

log = logging.getLogger("bigft")

# Exit status of a run that stopped with a checkpoint but was not requeued (EX_TEMPFAIL).
STOPPED_EXIT = 75


def in_job_step() -> bool:
    """Running as a task of `srun` (the batch script itself has no step id)."""
    return "SLURM_STEP_ID" in os.environ


def torch_env_from_slurm() -> None:
    """Set RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT from Slurm's variables.

    Values already in the environment win (a user's export in launcher.setup).
    """
    world = int(os.environ.get("SLURM_NTASKS", "1"))
    values = {
        "RANK": os.environ.get("SLURM_PROCID", "0"),
        "LOCAL_RANK": os.environ.get("SLURM_LOCALID", "0"),
        "WORLD_SIZE": str(world),
    }
    if world > 1:
        values["MASTER_ADDR"] = _first_host(os.environ["SLURM_JOB_NODELIST"])
        # From the job id, which every rank knows and no other running job shares: two jobs
        # on one node get different ports, and a requeued job reuses its own.
        values["MASTER_PORT"] = str(20000 + int(os.environ["SLURM_JOB_ID"]) % 20000)
    for name, value in values.items():
        os.environ.setdefault(name, value)


def _first_host(nodelist: str) -> str:
    """The first node of a Slurm node list ("gpu[003-010,017]" → "gpu003")."""
    result = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
    )
    return result.stdout.split()[0]


def run_rank(cfg: DictConfig, train: Callable[..., dict[str, float]]) -> float | None:
    """Train as this task's rank (torch_env_from_slurm has run) with `train(cfg, stop=...)`;
    on a stop signal, checkpoint and requeue (or exit)."""
    signals = [str(cfg.launcher.signal), "TERM"]
    with StopRequest(signals) as stop:
        try:
            metrics = train(cfg, stop=stop)
        except Preempted as stopped:
            end_stopped(cfg, stopped)
    return metrics.get("eval/loss", metrics.get("train/loss"))


def end_stopped(cfg: DictConfig, stopped: Preempted) -> NoReturn:
    """After the checkpoint: requeue on Slurm's warning; only exit on SIGTERM (scancel, or a
    preemption that Slurm requeues by itself)."""
    code = 0
    if int(os.environ.get("RANK", "0")) == 0:
        code = _requeue_or_explain(cfg, stopped)
    sys.stdout.flush()
    sys.stderr.flush()
    # os._exit, not a return: under submitit (sweeps) a return would record this attempt as
    # the finished result while Slurm brings the job back.
    os._exit(code)


def _requeue_or_explain(cfg: DictConfig, stopped: Preempted) -> int:
    job_id = os.environ["SLURM_JOB_ID"]
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    where = f"{cfg.output_dir}; the same command resumes from it"
    if stopped.signal_name == "SIGTERM":
        print(f"bigft: job {job_id} {stopped}; not requeued (SIGTERM). Checkpoint in {where}")
        return 128 + 15
    if restarts >= cfg.launcher.max_requeues:
        print(
            f"bigft: job {job_id} {stopped}; not requeued: it already was {restarts} times "
            f"(launcher.max_requeues={cfg.launcher.max_requeues}). Checkpoint in {where}"
        )
        return STOPPED_EXIT
    result = subprocess.run(
        ["scontrol", "requeue", job_id], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        reason = result.stderr.strip()
        print(f"bigft: scontrol requeue {job_id} failed: {reason}. Checkpoint in {where}")
        return STOPPED_EXIT
    limit = cfg.launcher.max_requeues
    print(f"bigft: job {job_id} {stopped}; requeued ({restarts + 1} of at most {limit})")
    return 0
