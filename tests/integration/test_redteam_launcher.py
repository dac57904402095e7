"""`bigft-redteam launcher=slurm` without a cluster: the dry run's script, the checks that run
before anything is queued, and the scan stopping between batches on a signal (what a requeued
job resumes from). tests/slurm/test_redteam_slurm.py submits real jobs."""

from __future__ import annotations

import os
import signal

import pytest

from bigft.engine.stop import StopRequest
from bigft.redteam.cli import run_redteam
from bigft.redteam.findings import read_findings
from bigft.redteam.slurm_job import ScanStopped, stop_between_batches

from .runs import run_module, user_error
from .test_redteam import attack_file, redteam_cfg


def run_cli(*args: str, cwd) -> object:
    return run_module("bigft.redteam.cli", *args, cwd=cwd)


def test_dry_run_prints_the_scan_job_and_writes_nothing(tmp_path, tiny_llama_dir):
    out = tmp_path / "scans" / "nightly"
    result = run_cli(
        f"target={tiny_llama_dir}",
        f"attacks.files=[{attack_file(tmp_path)}]",
        f"output_dir={out}",
        "name=nightly",
        "launcher=slurm",
        "launcher.dry_run=true",
        "launcher.partition=gpu",
        "launcher.time=00:30:00",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    script = result.stdout
    assert script.startswith("#!/bin/bash\n# bigft nightly: written by `bigft-redteam launcher=")
    for directive in (
        "--job-name=bigft-nightly",
        "--nodes=1",
        "--ntasks-per-node=1",
        "--partition=gpu",
        "--time=00:30:00",
        f"--output={out}/slurm/%j.out",
        "--signal=USR2@300",
        "--requeue",
    ):
        assert f"#SBATCH {directive}\n" in script, directive
    (task,) = [line for line in script.splitlines() if line.startswith("srun ")]
    assert f"-m bigft.redteam.slurm_job {out}/slurm/config-" in task
    assert not out.exists() and not (tmp_path / "scans").exists()


def test_a_scan_that_cannot_run_is_refused_before_it_is_queued(tmp_path, tiny_llama_dir):
    attacks = attack_file(tmp_path)
    slurm = ["launcher=slurm", "launcher.dry_run=true", f"output_dir={tmp_path / 'o'}"]
    base = [f"target={tiny_llama_dir}", f"attacks.files=[{attacks}]", *slurm]
    cases = {
        f"target={tmp_path / 'nope'}": f"target='{tmp_path / 'nope'}' does not exist",
        f"attacks.files=[{tmp_path / 'gone.jsonl'}]": f"{tmp_path / 'gone.jsonl'} does not exist",
        f"judges.classifier.run={tmp_path / 'cls'}": "judges.classifier.run=",
        "launcher.nproc_per_node=2": "a scan runs in one process",
        "launcher.time=soon": "launcher.time",
        f"labels={tmp_path / 'labels.csv'}": "labels=",
    }
    for override, expected in cases.items():
        err = user_error(run_cli(*base, override, cwd=tmp_path))
        assert expected in err, (override, err)
    err = user_error(run_cli(*slurm, cwd=tmp_path))
    assert "missing target=" in err
    assert not (tmp_path / "o").exists()


def test_a_signal_stops_the_scan_after_the_batch_and_the_rerun_goes_on(tmp_path, tiny_llama_dir):
    whole = run_redteam(redteam_cfg(tmp_path / "w", tiny_llama_dir))
    expected = read_findings(tmp_path / "w" / "scan" / "findings.jsonl")

    cfg = redteam_cfg(tmp_path / "s", tiny_llama_dir)
    with StopRequest(["USR2"]) as stop:
        after_batch = stop_between_batches(stop)

        def signalled_after_two(calls=[]):  # noqa: B006 (counts the batches)
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGUSR2)
            after_batch()

        with pytest.raises(ScanStopped, match=r"after 2 batch\(es\) on SIGUSR2; findings"):
            run_redteam(cfg, signalled_after_two)
    path = tmp_path / "s" / "scan" / "findings.jsonl"
    assert len(read_findings(path)) == 8  # two batches: 2 attacks x 2 samples each
    resumed = run_redteam(cfg)
    assert resumed["responses_judged"] == whole["responses"] - 8
    got = read_findings(path)
    assert [(f["id"], f["response"]) for f in got] == [(f["id"], f["response"]) for f in expected]
