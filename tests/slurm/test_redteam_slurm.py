"""`bigft-redteam launcher=slurm` on a real Slurm cluster: a tiny scan runs as a job and writes
its findings, and a scan signalled mid-way requeues and continues where it stopped."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bigft.config import compose_config, typed_config
from bigft.redteam.cli import run_redteam
from bigft.redteam.config import RedteamConfig
from bigft.redteam.findings import read_findings

from .conftest import wait_for_job
from .test_slurm import job_log, submitted_job

pytestmark = pytest.mark.slurm


def scan_overrides(tmp_path: Path, model: Path, attacks: int) -> list[str]:
    """A tiny scan: the tiny Llama, `attacks` people's attacks one per batch, the rules judge."""
    path = tmp_path / "attacks.jsonl"
    rows = [
        {"prompt": f"tell me secret {i}", "category": ["a", "b"][i % 2], "target_behavior": "the"}
        for i in range(attacks)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [
        f"target={model}",
        f"attacks.files=[{path}]",
        "generation.max_new_tokens=8",
        "generation.batch_size=1",
    ]


def bigft_redteam(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bigft.redteam.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def local_scan(tmp_path: Path, overrides: list[str]) -> list[tuple[str, str]]:
    """The same scan in this process: the findings the job must end with."""
    out = tmp_path / "local"
    cfg = compose_config([*overrides, f"output_dir={out}"], config_name="redteam")
    run_redteam(typed_config(cfg, RedteamConfig))
    return [(f["id"], f["response"]) for f in read_findings(out / "findings.jsonl")]


def finished(out: Path, job: str) -> str:
    state = wait_for_job(job, timeout=300)
    log = job_log(out, job)
    assert state["JobState"] == "COMPLETED", f"{state['JobState']}:\n{log[-4000:]}"
    return log


def test_a_scan_runs_as_a_slurm_job_and_writes_its_findings(
    slurm_cluster, tmp_path, tiny_llama_dir
):
    overrides = scan_overrides(tmp_path, tiny_llama_dir, attacks=4)
    out = tmp_path / "scan"
    slurm = ["launcher=slurm", "launcher.time=00:10:00", f"output_dir={out}", "name=tiny-scan"]
    job = submitted_job(bigft_redteam(*overrides, *slurm))
    assert (out / "slurm" / "job.sbatch").is_file()
    log = finished(out, job)
    assert "restart 0" in log
    assert re.search(r"ASR \d+\.\d% \(95% CI .*\) over 4 attacks, 4 responses", log), log[-3000:]
    got = [(f["id"], f["response"]) for f in read_findings(out / "findings.jsonl")]
    assert got == local_scan(tmp_path, overrides)
    assert json.loads((out / "asr.json").read_text())["attacks"] == 4


def _wait_for_findings(path: Path, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(read_findings(path)) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"the scan never wrote {count} findings to {path}")


def test_a_signalled_scan_requeues_and_continues_where_it_stopped(
    slurm_cluster, tmp_path, tiny_llama_dir
):
    attacks = 10
    overrides = scan_overrides(tmp_path, tiny_llama_dir, attacks=attacks)
    out = tmp_path / "scan"
    slurm = ["launcher=slurm", "launcher.time=00:10:00", f"output_dir={out}"]
    # Slow batches leave time to signal the job in the middle of its scan.
    slow = {"BIGFT_SLOW_STEP_SECONDS": "1.0"}
    job = submitted_job(bigft_redteam(*overrides, *slurm, env=slow))
    _wait_for_findings(out / "findings.jsonl", 2)
    # What Slurm sends before a time limit or preemption.
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    log = finished(out, job)

    stopped = re.search(r"after (\d+) batch\(es\) on SIGUSR2; findings written; requeued", log)
    assert stopped, log[-4000:]
    done = int(stopped.group(1))
    assert 2 <= done < attacks
    assert "restart 1" in log  # the same job id came back
    # It continued: the requeued scan judged only the attacks the first attempt had not.
    assert f"resuming: {done} of {attacks} attacks already in" in log, log[-4000:]
    assert f"over {attacks} attacks, {attacks} responses" in log
    got = [(f["id"], f["response"]) for f in read_findings(out / "findings.jsonl")]
    assert got == local_scan(tmp_path, overrides)  # each attack once, as one uninterrupted scan
