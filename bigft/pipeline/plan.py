"""What each stage needs (nothing, resume, run, rerun) and the checks every stage passes before
the first one starts: its config composed and validated as its command would, bigft-plan's
per-GPU memory, and for Slurm bigft's submission checks.

A stage's input may be an earlier stage's output that does not exist yet. Such a value is
reported as "will be produced by stage X" and checked against a stand-in: the model the producing
stage starts from (the same shape for validation and bigft-plan), or, for data, not read.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bigft.engine.resume import flatten_keys
from bigft.errors import BigftError, ConfigError
from bigft.pipeline.stages import Stage
from bigft.pipeline.state import (
    PipelineState,
    changed_keys,
    compose_stage,
    config_dict,
    is_finished,
    is_started,
    recorded_config,
    set_aside,
)

log = logging.getLogger("bigft")

GIB = 1024**3
# Keys that may name a model directory; a future one stands in for its producer's model.
_MODEL_KEYS = ("model.path", "model.tokenizer", "task.reference")


@dataclass
class StagePlan:
    stage: Stage
    cfg: DictConfig
    status: str  # finished | resume | run | rerun
    why: str = ""
    changes: list[str] = field(default_factory=list)
    produced_inputs: list[str] = field(default_factory=list)  # "key=value: by stage X"
    memory: str = ""
    checked: bool = False  # check_before_submit ran on it (launcher=slurm)

    @property
    def runs(self) -> bool:
        return self.status != "finished"


def decide(stages: list[Stage], state: PipelineState) -> list[StagePlan]:
    """Each stage's status, in order; a changed stage invalidates every stage that waits on it."""
    plans: list[StagePlan] = []
    invalid: set[str] = set()
    for stage in stages:
        try:
            cfg = compose_stage(stage)
        except BigftError as err:
            raise type(err)(f"stage {stage.name}: {err}") from None
        plan = StagePlan(stage, cfg, status="run", why="not run yet")
        stale = [d for d in stage.depends_on if d in invalid]
        if stale:
            plan.status, plan.why = "rerun", f"stage {stale[0]} runs again"
        elif is_started(stage):
            recorded = recorded_config(stage, state.record(stage.name))
            plan.changes = changed_keys(recorded, config_dict(cfg)) if recorded else []
            if plan.changes:
                plan.status, plan.why = "rerun", "its config changed: " + "; ".join(plan.changes)
            elif is_finished(stage):
                plan.status, plan.why = "finished", "finished: its outputs are reused"
            else:
                plan.status, plan.why = "resume", "started, not finished: resumes"
        if plan.status == "rerun":
            invalid.add(stage.name)
        plans.append(plan)
    return plans


def set_aside_invalidated(plans: list[StagePlan]) -> None:
    """Move the output of every stage that runs again out of the way, and say so."""
    for plan in plans:
        out = Path(plan.stage.output_dir)
        if plan.status == "rerun" and out.exists():
            moved = set_aside(out)
            print(f"bigft: stage {plan.stage.name}: {plan.why}; its old output moved to {moved}")


def check_all(plans: list[StagePlan], *, slurm: bool) -> None:
    """Validate every stage that will run (and for Slurm, bigft's submission checks), before any
    starts: a typo in the last stage is found now, not hours later."""
    producers: dict[str, tuple[str, str | None]] = {}  # future output → (stage, stand-in model)
    for plan in plans:
        stage = plan.stage
        try:
            stand_in = _check_stage(plan, producers, slurm=slurm) if plan.runs else None
        except BigftError as err:
            raise type(err)(f"stage {stage.name} ({stage.command_line()}): {err}") from None
        if plan.runs:
            producers[_key(stage.output_dir)] = (stage.name, stand_in)


def _key(path: str) -> str:
    return str(Path(path).expanduser().absolute())


def _producer(value: Any, producers: dict[str, tuple[str, str | None]]):
    """The future output (and its producer) that `value` is, or lies inside."""
    if not isinstance(value, str) or not value:
        return None
    path = Path(_key(value))
    for candidate in (path, *path.parents):
        if str(candidate) in producers:
            return producers[str(candidate)]
    return None


def _check_stage(plan: StagePlan, producers: dict, *, slurm: bool) -> str | None:
    """Checks one stage; returns the model its output can stand in for (train, export)."""
    flat = flatten_keys(config_dict(plan.cfg))
    pending = {k: p for k, v in flat.items() if (p := _producer(v, producers)) is not None}
    plan.produced_inputs = [
        f"{k}={flat[k]}: will be produced by stage {p[0]}" for k, p in pending.items()
    ]
    if plan.stage.command == "export":
        produced = pending.get("run")
        return produced[1] if produced else _existing_model(str(plan.cfg.run))
    if plan.stage.command == "redteam":
        if slurm:
            _check_scan(plan, pending)
        return None
    if plan.stage.command != "train":
        return None
    check_cfg = _with_stand_ins(plan.cfg, pending)
    from bigft.config.validate import validate

    validate(check_cfg)
    plan.memory = _memory(check_cfg)
    if slurm:
        from bigft.launch.slurm import check_before_submit

        skipped = {
            group + OmegaConf.to_yaml(check_cfg[group], resolve=True)
            for group in ("data", "model")
            if any(k.startswith(group + ".") for k in pending if k not in _stood_in(pending))
        }
        check_before_submit(check_cfg, checked=skipped)
        plan.checked = True
    return str(check_cfg.model.path)


def _check_scan(plan: StagePlan, pending: dict) -> None:
    """bigft-redteam's submission checks; a scan of what an earlier stage will produce (its
    target, its attacks) can only be checked for what Slurm needs: the job reads the rest."""
    from bigft.launch.slurm import check_can_submit
    from bigft.redteam.slurm import check_scan

    if pending:
        check_can_submit(plan.cfg, Path(plan.cfg.output_dir))
    else:
        check_scan(plan.cfg)
    plan.checked = True


def _stood_in(pending: dict) -> set[str]:
    return {k for k, p in pending.items() if k in _MODEL_KEYS and p[1] is not None}


def _with_stand_ins(cfg: DictConfig, pending: dict) -> DictConfig:
    """A copy of `cfg` whose future model directories are their producers' starting models."""
    check_cfg = copy.deepcopy(cfg)
    for key, (_, stand_in) in pending.items():
        if key in _MODEL_KEYS and stand_in is not None:
            OmegaConf.update(check_cfg, key, stand_in)
        elif key == "task.reference":
            OmegaConf.update(check_cfg, key, "auto")
    return check_cfg


def _existing_model(path: str) -> str | None:
    from bigft.outputs import read_metadata

    model = Path(path) / "model"
    try:
        return str(read_metadata(model)["base"]) if model.is_dir() else None
    except (BigftError, OSError, KeyError):
        return None


def _memory(cfg: DictConfig) -> str:
    """bigft-plan's per-GPU peak for the stage (the stand-in's shape for a future model)."""
    from bigft.config.paths import looks_local
    from bigft.demo.build import needs_building
    from bigft.plan import check_fits

    if needs_building(cfg.model):
        return f"not planned yet: {cfg.model.path} is built when the stage first runs"
    try:
        plan = check_fits(cfg)
    except ConfigError as err:
        path = str(cfg.model.path)
        # A hub id is "org/name"; a missing directory is e.g. a future model whose producer
        # starts from the demo base, not built yet.
        if (looks_local(path) or path.count("/") > 1) and not Path(path).expanduser().exists():
            return f"not planned yet: {path} does not exist yet"
        return f"not planned: {err}"
    verdict = "fits" if plan.fits else "DOES NOT FIT"
    gpus = cfg.launcher.gpus_per_node * cfg.launcher.nodes
    where = (
        f"{gpus} GPU(s) of {cfg.launcher.gpu_memory_gb:g} GiB"
        if gpus
        else (f"a {cfg.launcher.gpu_memory_gb:g} GiB GPU")
    )
    return f"{plan.peak / GIB:.1f} GiB per GPU, {verdict} on {where}"


def render(plans: list[StagePlan], *, slurm: bool) -> str:
    """The plan a user reads before anything runs."""
    lines = []
    for number, plan in enumerate(plans, 1):
        stage = plan.stage
        after = ", ".join(stage.depends_on) or "nothing"
        lines.append(f"{number}. {stage.name} [{plan.status}] (after: {after})")
        lines.append(f"   {plan.why}")
        lines.append(f"   $ {stage.command_line()}")
        for note in plan.produced_inputs:
            lines.append(f"   {note}")
        if slurm and stage.launcher:
            resources = " ".join(f"launcher.{k}={v}" for k, v in stage.launcher.items())
            lines.append(f"   resources: {resources}")
        if plan.memory:
            lines.append(f"   bigft-plan: {plan.memory}")
    return "\n".join(lines)
