"""bigft-pipeline launcher=slurm on the real local cluster: three stages submitted at once and
chained by afterok; a stage that fails leaves the stages after it cancelled by Slurm; a rerun
after the fix submits only the stages that have not finished."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.integration.pipelines import (
    bigft_pipeline,
    common_overrides,
    ok,
    tiny_stages,
    write_pipeline,
)
from tests.integration.runs import train_losses

from .conftest import wait_for_job

pytestmark = pytest.mark.slurm

SLURM = ["launcher=slurm", "launcher.time=00:10:00"]


def _jobs(out: str) -> dict[str, str]:
    return dict(re.findall(r"bigft: stage (\w+): Slurm job (\d+)", out))


def _states(jobs: dict[str, str]) -> dict[str, str]:
    return {stage: wait_for_job(job, timeout=600)["JobState"] for stage, job in jobs.items()}


def test_failed_stage_cancels_its_dependents_and_a_rerun_submits_the_rest(
    slurm_cluster, tmp_path, tiny_llama_dir
):
    fixed = tmp_path / "fixed"
    stages = tiny_stages(tmp_path, merge=True)
    # The tune stage's job fails on the node, in its setup lines, until the "fix" exists: a
    # failure no check before submission can see.
    stages["tune"]["launcher"] = {"setup": [f"test -e {fixed}"]}
    conf = tmp_path / "conf"
    write_pipeline(conf, "chain", common_overrides(tmp_path, tiny_llama_dir), stages)
    runs = tmp_path / "outputs" / "chain"

    first = ok(bigft_pipeline(conf, "chain", *SLURM, cwd=tmp_path))
    jobs = _jobs(first)
    assert list(jobs) == ["base", "tune", "merge"]  # all submitted at once
    assert f"stage tune: Slurm job {jobs['tune']}, after job(s) {jobs['base']}" in first
    assert f"stage merge: Slurm job {jobs['merge']}, after job(s) {jobs['tune']}" in first
    assert _states(jobs) == {"base": "COMPLETED", "tune": "FAILED", "merge": "CANCELLED"}
    assert (runs / "base" / "model" / "bigft_output.json").is_file()
    assert not (runs / "tune" / "model").exists() and not (runs / "merge").exists()
    base_losses = train_losses(runs / "base")

    fixed.touch()
    second = ok(bigft_pipeline(conf, "chain", *SLURM, cwd=tmp_path))
    assert "bigft: stage base: finished: its outputs are reused" in second
    again = _jobs(second)
    assert list(again) == ["tune", "merge"]
    assert f"stage tune: Slurm job {again['tune']}\n" in second  # base is done: no dependency
    assert _states(again) == {"tune": "COMPLETED", "merge": "COMPLETED"}
    assert train_losses(runs / "base") == base_losses  # base did not run again
    assert list(train_losses(runs / "tune")) == [1, 2, 3]
    merged = AutoModelForCausalLM.from_pretrained(Path(runs / "merge"))
    assert torch.isfinite(merged(torch.tensor([[1, 5, 9]])).logits).all()


def test_a_redteam_stage_is_a_bigft_redteam_job_waiting_for_its_target(
    slurm_cluster, tmp_path, tiny_llama_dir
):
    from .test_redteam_slurm import scan_overrides

    scan = scan_overrides(tmp_path, Path("${stages.tune.output_dir}"), attacks=2)
    stages = tiny_stages(tmp_path)
    stages["scan"] = {"command": "redteam", "overrides": scan}
    conf = tmp_path / "conf"
    write_pipeline(conf, "round", common_overrides(tmp_path, tiny_llama_dir), stages)
    runs = tmp_path / "outputs" / "round"

    out = ok(bigft_pipeline(conf, "round", *SLURM, cwd=tmp_path))
    jobs = _jobs(out)
    assert f"stage scan: Slurm job {jobs['scan']}, after job(s) {jobs['tune']}" in out
    # Submitted as `bigft-redteam launcher=slurm` submits: its script and frozen config.
    script = (runs / "scan" / "slurm" / "job.sbatch").read_text()
    assert "#SBATCH --job-name=bigft-scan" in script and "#SBATCH --signal=" in script
    assert "-m bigft.redteam.slurm_job" in script
    assert _states(jobs) == {"base": "COMPLETED", "tune": "COMPLETED", "scan": "COMPLETED"}
    summary = json.loads((runs / "scan" / "asr.json").read_text())
    assert summary["attacks"] == 2
    assert "bigft: stage scan: finished" in ok(bigft_pipeline(conf, "round", *SLURM, cwd=tmp_path))
