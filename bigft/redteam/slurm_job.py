"""`python -m bigft.redteam.slurm_job CONFIG.yaml`: the scan inside a `bigft-redteam
launcher=slurm` job (bigft/redteam/slurm.py submits it).

The findings are appended batch by batch, so they are the scan's checkpoint: on Slurm's warning
signal the scan stops after the batch in progress and the job requeues itself, as a training job
does (bigft/launch/slurm_rank.py); the requeued job skips the attacks already in findings.jsonl
and goes on from there.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bigft.config import typed_config
from bigft.engine.stop import Preempted, StopRequest
from bigft.errors import ConfigError, exit_on_user_error
from bigft.launch.slurm_rank import run_rank
from bigft.redteam.cli import print_summary, run_redteam
from bigft.redteam.config import RedteamConfig


class ScanStopped(Preempted):
    """The scan stopped on a signal after `batches` batches, all of them in findings.jsonl."""

    def __init__(self, batches: int, signal_name: str) -> None:
        super().__init__(batches, signal_name)
        self.args = (f"stopped after {batches} batch(es) on {signal_name}; findings written",)


def stop_between_batches(stop: StopRequest, slow_seconds: float = 0.0) -> Callable[[], None]:
    """The scan's `after_batch`: raise ScanStopped once a stop was asked for. `slow_seconds`
    (BIGFT_SLOW_STEP_SECONDS, fault injection) gives a test time to signal the job mid-scan."""
    batches = 0

    def after_batch() -> None:
        nonlocal batches
        batches += 1
        if slow_seconds:
            time.sleep(slow_seconds)
        if stop.requested:
            raise ScanStopped(batches, stop.signal_name)

    return after_batch


def load_frozen_config(path: str) -> DictConfig:
    if not os.path.isfile(path):
        raise ConfigError(f"frozen config {path} not found: was the output directory moved?")
    return typed_config(OmegaConf.load(path), RedteamConfig)


@exit_on_user_error
def main() -> None:
    from bigft.train import configure_logging, fault_injection

    if len(sys.argv) != 2:
        raise ConfigError("usage: python -m bigft.redteam.slurm_job CONFIG.yaml (from sbatch)")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    configure_logging()
    slow = fault_injection().slow_step_seconds

    def scan_job(cfg: DictConfig, *, stop: StopRequest) -> dict[str, Any]:
        summary = run_redteam(cfg, stop_between_batches(stop, slow))
        print_summary(summary, cfg.output_dir)
        return summary

    run_rank(load_frozen_config(sys.argv[1]), scan_job)


if __name__ == "__main__":
    main()
