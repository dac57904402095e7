"""`bigft-pipeline pipeline=<name>`: run a chain of bigft runs from one config.

    bigft-pipeline pipeline=rlhf --dry-run          # the plan: stages, commands, GPU memory
    bigft-pipeline pipeline=rlhf                    # here, stage after stage
    bigft-pipeline pipeline=rlhf launcher=slurm     # every stage a job, chained by afterok

A rerun skips the finished stages, resumes a started one, and reruns a stage whose config
changed together with every stage after it (their old outputs are moved aside, not deleted).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from bigft.config import CONF_DIR
from bigft.errors import exit_on_user_error, run_hydra_app
from bigft.pipeline.stages import read_stages, register_pipeline_schema

DRY_RUN_FLAGS = ("--dry-run", "--dry_run")


def launcher_overrides() -> list[str]:
    """The command line's launcher choices (launcher=slurm, launcher.partition=gpu): every train
    and redteam stage gets them, before its own stages.<name>.launcher."""
    from hydra.core.hydra_config import HydraConfig

    task = HydraConfig.get().overrides.task
    return [o for o in task if o.split("=", 1)[0].lstrip("+~").split(".")[0] == "launcher"]


def run_pipeline(cfg: DictConfig, launcher: list[str]) -> None:
    from bigft.pipeline.local import StageFailed, run_local
    from bigft.pipeline.plan import check_all, decide, render, set_aside_invalidated
    from bigft.pipeline.state import STATE_FILE, PipelineState

    slurm = cfg.launcher.name == "slurm"
    stages = read_stages(cfg, launcher)
    state = PipelineState(Path(cfg.output_root) / cfg.name / STATE_FILE)
    plans = decide(stages, state)
    check_all(plans, slurm=slurm)
    print(f"bigft: pipeline {cfg.name} ({len(plans)} stages)\n{render(plans, slurm=slurm)}")
    if cfg.dry_run:
        return
    for plan in plans:
        if not plan.runs:  # e.g. a Slurm job that finished since the last submission
            state.record(plan.stage.name)["status"] = "finished"
    state.save()
    if slurm:
        from bigft.pipeline.slurm import cancel_outdated, submit_all

        cancel_outdated(plans, state)
        set_aside_invalidated(plans)
        submit_all(plans, state, cfg)
        return
    set_aside_invalidated(plans)
    try:
        run_local(plans, state)
    except StageFailed as err:
        print(
            f"bigft: error: {err}; fix it and run the same command again: finished stages are "
            f"skipped and {err.name} resumes",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(err.returncode)
    print(f"bigft: pipeline {cfg.name} finished", flush=True)


@hydra.main(config_path=str(CONF_DIR), config_name="pipeline", version_base="1.3")
@exit_on_user_error
def _hydra_main(cfg: DictConfig) -> None:
    run_pipeline(cfg, launcher_overrides())


def main() -> None:
    # Users write --dry-run as for other tools; Hydra takes key=value only.
    sys.argv = ["dry_run=true" if a in DRY_RUN_FLAGS else a for a in sys.argv]
    register_pipeline_schema()
    run_hydra_app(_hydra_main)


if __name__ == "__main__":
    main()
