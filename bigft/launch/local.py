"""`launcher.nproc_per_node=N`: bigft starts its N ranks itself through torchrun.

The first `bigft-train` process only launches: it re-runs the same command line under
`torch.distributed.run`, whose workers see LOCAL_RANK and train. torchrun's agent stops every
worker when one fails and exits non-zero, so a failing rank ends the job with its error.

Ctrl-C and SIGTERM: torchrun runs in a session of its own, so the terminal's SIGINT reaches only
this process, which passes it to every rank (torchrun's agent would answer it by killing them,
SIGKILL after 30 s). The ranks finish the step, checkpoint and exit 0; this process then exits
130 or 143. A second Ctrl-C kills them at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from types import FrameType

from omegaconf import DictConfig

from bigft.demo.build import ensure_model
from bigft.engine.stop import PARENT_REPORTS_STOP, exit_now

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
    returncode, stopped_by = _run_passing_signals(command)
    if returncode != 0:
        print(
            f"bigft: error: the {nproc}-process job failed (exit status {returncode}); "
            "the failing rank's error is above",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(returncode)
    if stopped_by is not None:
        sys.exit(128 + stopped_by)
    return True


def _run_passing_signals(command: list[str]) -> tuple[int, int | None]:
    """Run torchrun; pass SIGINT/SIGTERM to its ranks. (exit status, the signal that stopped it)"""
    env = {**os.environ, PARENT_REPORTS_STOP: "1"}
    proc = subprocess.Popen(command, env=env, start_new_session=True)
    received: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        if received and signum == signal.SIGINT:
            _signal_ranks(proc.pid, signal.SIGKILL)
            proc.kill()
            exit_now()
        if not received:
            received.append(signum)
            _signal_ranks(proc.pid, signal.Signals(signum))

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        returncode = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return returncode, received[0] if received else None


def _signal_ranks(agent_pid: int, sig: signal.Signals) -> None:
    import psutil  # installed with deepspeed and accelerate

    try:
        ranks = psutil.Process(agent_pid).children()
    except psutil.NoSuchProcess:
        return
    # Before torchrun has started its ranks, it stops by itself on the signal.
    for process in ranks or [psutil.Process(agent_pid)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(sig)
