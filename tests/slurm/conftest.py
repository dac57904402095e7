"""A real single-node Slurm cluster for the launcher=slurm tests (slurm/local/start.sh).

`make test` starts it when it is not running (installing Debian's slurm-wlm packages if needed)
and stops it afterwards if it started it. It needs root. In CI a cluster that cannot start fails
the tests; elsewhere they skip, saying why.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
START = REPO / "slurm" / "local" / "start.sh"
STOP = REPO / "slurm" / "local" / "stop.sh"
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"the local Slurm cluster is needed in CI: {reason}")
    pytest.skip(f"no local Slurm cluster: {reason}")


def _already_running() -> bool:
    conf = Path(os.environ.get("BIGFT_SLURM_DIR", "/tmp/bigft-slurm")) / "etc" / "slurm.conf"
    if not conf.exists():
        return False
    env = {**os.environ, "SLURM_CONF": str(conf)}
    probe = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
    return probe.returncode == 0 and probe.stdout.strip() in ("idle", "mixed", "allocated")


@pytest.fixture(scope="session")
def slurm_cluster():
    """SLURM_CONF of a running cluster, exported for the tests and the jobs they submit."""
    if os.geteuid() != 0:
        _unavailable("slurm/local/start.sh must run as root")
    started_here = not _already_running()
    result = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        _unavailable(f"slurm/local/start.sh failed:\n{result.stderr[-3000:]}")
    conf = result.stdout.strip().splitlines()[-1].removeprefix("export SLURM_CONF=")
    os.environ["SLURM_CONF"] = conf
    yield conf
    if started_here:
        subprocess.run(["bash", str(STOP)], capture_output=True, text=True, timeout=120)


def job_state(job_id: str) -> dict[str, str]:
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True
    ).stdout
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


def wait_for_job(job_id: str, timeout: float = 300) -> dict[str, str]:
    """Poll until the job (including any requeue of it) reaches a final state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = job_state(job_id)
        if state["JobState"] in FINAL_STATES:
            return state
        time.sleep(1)
    subprocess.run(["scancel", job_id])
    raise AssertionError(f"job {job_id} not finished after {timeout}s: {job_state(job_id)}")
