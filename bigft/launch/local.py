"""`launcher.nproc_per_node=N`: bigft starts its N ranks itself through torchrun.

The first `bigft-train` process only launches: it re-runs the same command line under
`torch.distributed.run`, whose workers see LOCAL_RANK and train. torchrun's agent stops every
worker when one fails and exits non-zero, so a failing rank ends the job with its error.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from omegaconf import DictConfig

from bigft.demo.build import ensure_model

log = logging.getLogger(__name__)


def is_worker() -> bool:
    """Started as one rank by torchrun or deepspeed (which set LOCAL_RANK), not by the user."""
    return "LOCAL_RANK" in os.environ


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # rendezvous on this host, on a free port: two jobs never clash
        f"--nproc_per_node={nproc}",
        "--max_restarts=0",
        "-m",
        "bigft.train",
        *argv,
    ]


def relaunch_if_needed(cfg: DictConfig) -> bool:
    """Run this command under torchrun when N > 1 local processes are asked for.

    Returns True when the job ran in child processes (and succeeded); exits with the job's
    status when it failed.
    """
    nproc = cfg.launcher.nproc_per_node
    if nproc <= 1 or is_worker():
        return False
    # A model bigft builds (the demo base) is built once here, not by N racing ranks.
    ensure_model(cfg.model)
    command = torchrun_command(nproc, sys.argv[1:])
    log.info("launching %d processes: %s", nproc, " ".join(command))
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        print(
            f"bigft: error: the {nproc}-process job failed (exit status {result.returncode}); "
            "the failing rank's error is above",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(result.returncode)
    return True
