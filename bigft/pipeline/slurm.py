"""launcher=slurm: every stage that is not finished becomes a job, all submitted at once, each
waiting for the jobs of the stages it depends on (`--dependency=afterok:<ids>`); when one fails,
Slurm cancels the jobs waiting on it (`--kill-on-invalid-dep=yes`). A rerun submits only what is
not finished, and leaves a stage whose job is still queued or running alone.

Train and redteam stages are submitted exactly as `bigft-train launcher=slurm` and
`bigft-redteam launcher=slurm` submit (a preempted run checkpoints and requeues, a scan stops
after its batch and requeues); export stages, which have no launcher, run as one task.
"""

from __future__ import annotations

import copy
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bigft.config.schema import LauncherConfig
from bigft.pipeline.plan import StagePlan
from bigft.pipeline.state import PipelineState, config_dict

ACTIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "SUSPENDED"}


def dependency_options(job_ids: list[str]) -> list[str]:
    if not job_ids:
        return []
    return [f"--dependency=afterok:{':'.join(job_ids)}", "--kill-on-invalid-dep=yes"]


def job_state(job_id: str | None) -> str | None:
    """The job's state while Slurm still lists it (queued, running), else None."""
    if not job_id:
        return None
    result = subprocess.run(
        ["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True
    )
    state = result.stdout.strip()
    return state if result.returncode == 0 and state else None


def cancel_outdated(plans: list[StagePlan], state: PipelineState) -> None:
    """A stage that runs again must not also finish its old job, with its old config."""
    for plan in plans:
        job_id = state.record(plan.stage.name).get("job_id")
        if plan.status == "rerun" and job_state(job_id) in ACTIVE_STATES:
            subprocess.run(["scancel", str(job_id)], check=False)
            print(f"bigft: stage {plan.stage.name}: cancelled its outdated Slurm job {job_id}")


def submit_all(plans: list[StagePlan], state: PipelineState, pipeline: DictConfig) -> None:
    jobs: dict[str, str] = {}
    for plan in plans:
        stage = plan.stage
        if not plan.runs:
            print(f"bigft: stage {stage.name}: {plan.why}", flush=True)
            continue
        record = state.record(stage.name)
        previous = record.get("job_id")
        if plan.status != "rerun" and job_state(previous) in ACTIVE_STATES:
            jobs[stage.name] = str(previous)
            print(f"bigft: stage {stage.name}: Slurm job {previous} is still queued or running")
            continue
        after = [jobs[d] for d in stage.depends_on if d in jobs]
        if stage.command == "export":
            job_id = _submit_command(plan, after, pipeline)
        else:
            job_id = submit_job(plan, after)
        jobs[stage.name] = job_id
        record.update(
            command=stage.command_line(),
            config=config_dict(plan.cfg),
            status="submitted",
            job_id=job_id,
            after=after,
            submitted=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        state.save()
        waits = f", after job(s) {', '.join(after)}" if after else ""
        print(f"bigft: stage {stage.name}: Slurm job {job_id}{waits}", flush=True)


def submit_job(plan: StagePlan, after: list[str]) -> str | None:
    """A train or redteam stage, by its own command's Slurm launcher."""
    from bigft.launch.slurm import submit
    from bigft.redteam.slurm import submit_scan

    cfg = copy.deepcopy(plan.cfg)
    cfg.launcher.sbatch_extra = [*cfg.launcher.sbatch_extra, *dependency_options(after)]
    # Checked with the other stages before anything was submitted (future inputs stood in).
    if plan.stage.command == "redteam":
        return submit_scan(cfg, checked=plan.checked)
    return submit(cfg, checked=plan.checked)


def stage_launcher(pipeline: DictConfig, stage_launcher: dict[str, Any]) -> DictConfig:
    """launcher.* of the pipeline, then of the stage, over the schema's defaults."""
    base = OmegaConf.structured(LauncherConfig)
    given = OmegaConf.to_container(pipeline.launcher, resolve=True)
    return OmegaConf.merge(base, given, stage_launcher)


def _submit_command(plan: StagePlan, after: list[str], pipeline: DictConfig) -> str:
    """An export stage: one task running bigft-export with the stage's overrides."""
    from bigft.launch.slurm import sbatch

    script, job_cfg = stage_script(plan, after, pipeline)
    log_dir = _log_dir(pipeline)
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"{plan.stage.name}.sbatch"
    path.write_text(script)
    return sbatch(path, job_cfg)


def _log_dir(pipeline: DictConfig) -> Path:
    return (Path(pipeline.output_root) / pipeline.name / "slurm").absolute()


def stage_script(plan: StagePlan, after: list[str], pipeline: DictConfig) -> tuple[str, DictConfig]:
    """The sbatch script of an export stage, and the launcher config it asks for."""
    from bigft.launch.slurm import sbatch_directives

    stage = plan.stage
    launcher = stage_launcher(pipeline, stage.launcher)
    launcher.job_name = f"bigft-{pipeline.name}-{stage.name}"
    launcher.sbatch_extra = [*launcher.sbatch_extra, *dependency_options(after)]
    job_cfg = OmegaConf.create({"launcher": launcher, "name": stage.name})
    # One task, no checkpoint to write on a warning signal: a preempted export starts again.
    directives = [
        d
        for d in sbatch_directives(job_cfg, _log_dir(pipeline), Path.cwd())
        if not d.startswith("--signal")
    ]
    python = shlex.split(launcher.python) if launcher.python else [sys.executable]
    command = [*python, "-u", "-m", stage.module, *stage.overrides]
    script = "\n".join(
        [
            "#!/bin/bash",
            f"# bigft-pipeline {pipeline.name}, stage {stage.name}: {stage.command_line()}",
            *[f"#SBATCH {d}" for d in directives],
            "",
            "set -euo pipefail",
            *[str(line) for line in launcher.setup],
            " ".join(shlex.quote(part) for part in command),
            "",
        ]
    )
    return script, job_cfg
