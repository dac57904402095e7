"""Run the stages here, in order, each as the bigft command a user would type."""

from __future__ import annotations

import subprocess
import sys
import time

from bigft.pipeline.plan import StagePlan
from bigft.pipeline.state import PipelineState, config_dict


class StageFailed(Exception):
    def __init__(self, name: str, returncode: int) -> None:
        super().__init__(f"stage {name} failed (exit status {returncode})")
        self.name = name
        self.returncode = returncode


def run_stage(plan: StagePlan) -> int:
    stage = plan.stage
    # `python -m <module>`: the same program as the console script, and the one this Python has.
    return subprocess.run([sys.executable, "-m", stage.module, *stage.overrides]).returncode


def run_local(plans: list[StagePlan], state: PipelineState) -> None:
    """Each stage that is not finished runs (a started one resumes: bigft continues from its last
    checkpoint, a scan from its findings); the first failure stops the pipeline."""
    for plan in plans:
        stage = plan.stage
        if not plan.runs:
            print(f"bigft: stage {stage.name}: {plan.why}", flush=True)
            continue
        record = state.record(stage.name)
        record.update(
            command=stage.command_line(),
            config=config_dict(plan.cfg),
            status="running",
            started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            job_id=None,
        )
        state.save()
        print(f"bigft: stage {stage.name}: {plan.why}\n$ {stage.command_line()}", flush=True)
        started = time.monotonic()
        returncode = run_stage(plan)
        record["seconds"] = round(time.monotonic() - started, 1)
        record["status"] = "finished" if returncode == 0 else f"failed ({returncode})"
        state.save()
        if returncode != 0:
            raise StageFailed(stage.name, returncode)
        print(f"bigft: stage {stage.name} finished in {record['seconds']:.0f} s", flush=True)
