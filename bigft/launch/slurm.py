"""`launcher=slurm`: check what can be checked here, render an sbatch script, submit it.

The job runs one `srun` task per GPU, each task one rank running bigft directly (see
`bigft/launch/slurm_job.py` for why, and for what happens inside the job). The config is frozen
at submission: every rank, and every requeue of the job, runs exactly what was submitted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from bigft.config.sbatch_options import option_pairs, time_minutes
from bigft.data.readers import looks_like_path, read_records
from bigft.demo.build import ensure_model, needs_building
from bigft.errors import ConfigError, DataError, exit_on_user_error
from bigft.models.load import looks_local, resolve_source
from bigft.run_dirs import check_starting_run, finished_output
from bigft.tasks import TASKS

log = logging.getLogger(__name__)

SLURM_SUBDIR = "slurm"
SCRIPT_NAME = "job.sbatch"
JOB_ENTRY = "bigft.launch.slurm_job"


def submit(
    cfg: DictConfig,
    *,
    check: Callable[[DictConfig], None] | None = None,
    entry: str = JOB_ENTRY,
    command: str = "bigft-train",
    checked: bool = False,
) -> str | None:
    """Submit `cfg` as a Slurm job; returns its job id (None for a dry run).

    Another bigft command (bigft-redteam) submits its own config with its own `check` (by
    default bigft-train's) and the module each task runs (`entry`, given the frozen config).
    `checked`: the caller ran the check already (bigft-pipeline, with the inputs that earlier
    stages will produce standing in).
    """
    if not checked:
        (check or check_before_submit)(cfg)
    run_dir = Path(cfg.output_dir).absolute()
    slurm_dir = run_dir / SLURM_SUBDIR
    frozen = OmegaConf.to_yaml(cfg, resolve=True)
    # Named by content: a later submission with other settings never changes what a queued or
    # requeued job reads.
    config_path = slurm_dir / f"config-{hashlib.sha256(frozen.encode()).hexdigest()[:10]}.yaml"
    script = render_script(
        cfg,
        config_path=config_path,
        log_dir=slurm_dir,
        workdir=Path.cwd(),
        entry=entry,
        command=command,
    )
    if cfg.launcher.dry_run:
        print(script, flush=True)
        return None
    slurm_dir.mkdir(parents=True, exist_ok=True)
    config_path.write_text(frozen)
    script_path = slurm_dir / SCRIPT_NAME
    script_path.write_text(script)
    job_id = sbatch(script_path, cfg)
    print(submission_summary(cfg, job_id, run_dir, slurm_dir), flush=True)
    return job_id


# ---- before submitting: a typo costs seconds here, not a wait in the queue -------------------


def check_before_submit(
    cfg: DictConfig, *, sweep: bool = False, checked: set[str] | None = None
) -> None:
    """Everything that can be checked on the submitting host (config validation ran before).

    `checked` carries what a sweep's earlier points already checked: a data set or model that
    every point shares is read once, not once per point.
    """
    checked = set() if checked is None else checked
    for name, check in (("data", _check_data), ("model", _check_model)):
        key = name + OmegaConf.to_yaml(cfg[name], resolve=True)
        if key not in checked:
            check(cfg)
            checked.add(key)
    _check_fits(cfg)
    check_can_submit(cfg, Path(cfg.output_root if sweep else cfg.output_dir))


def check_can_submit(cfg: DictConfig, run_dir: Path) -> None:
    """What any bigft command's job needs from this host (another command's `check` calls it
    besides its own checks): launcher values Slurm can read, a writable run directory, sbatch."""
    time_minutes(cfg.launcher.time)
    option_pairs(list(cfg.launcher.sbatch_extra))
    _check_writable(run_dir)
    if not cfg.launcher.dry_run and shutil.which("sbatch") is None:
        raise ConfigError(
            "launcher=slurm needs Slurm's sbatch on PATH (run on a login node of the cluster); "
            "launcher.dry_run=true prints the script without submitting"
        )


class CheckBeforeSweep(Callback):
    """The same checks for every point of a sweep (-m), before Hydra's submitit launcher
    submits its job array (registered in conf/launcher/slurm.yaml): a point that cannot run
    (a micro-batch that does not fit, a bad value) stops the sweep here, not in the queue."""

    def on_multirun_start(self, config: DictConfig, **kwargs: object) -> None:
        exit_on_user_error(check_sweep)(list(config.hydra.overrides.task))


def sweep_points(overrides: list[str]) -> list[tuple[list[str], str]]:
    """Every job of a sweep, expanded by Hydra's basic sweeper itself (the one the submitit
    launcher runs under): its override list, and its swept values for messages (e.g.
    "optim.lr=0.0001 trainer.micro_batch_size=8")."""
    # Hydra has no public API for the expansion; its own function keeps the points identical to
    # the jobs it will submit (a repeated key, `+key`, list values), in hydra-core 1.3.
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    swept = {o.get_key_element() for o in parsed if o.is_sweep_override()}
    (points,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [(point, " ".join(o for o in point if o.split("=", 1)[0] in swept)) for point in points]


def check_sweep(overrides: list[str]) -> None:
    """Compose and check each point of the sweep; an error names the point."""
    from bigft.config import compose_config
    from bigft.config.validate import validate

    checked: set[str] = set()
    for point, swept in sweep_points(overrides):
        try:
            cfg = compose_config(point)
            validate(cfg)
            check_before_submit(cfg, sweep=True, checked=checked)
        except (ConfigError, DataError) as err:
            raise type(err)(f"sweep point {swept}: {err}") from None


def _check_data(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg.data, "train"):
        # The nodes would find out only after the queue: say it here.
        raise ConfigError(
            "data.train is missing: give the training data with data.train=... (a file, a "
            "directory or a datasets name)"
        )
    for key in ("train", "eval"):
        spec = cfg.data.get(key)
        if not spec:
            continue
        if not Path(spec).expanduser().exists() and not looks_like_path(spec):
            log.info("data.%s=%s is a datasets name: read on the nodes", key, spec)
            continue
        try:
            # The whole file: a bad line is reported now, with its line number.
            read_records(spec, fields=OmegaConf.to_container(cfg.data.fields) or None)
        except DataError as err:
            raise DataError(f"data.{key}: {err}") from None


def _check_model(cfg: DictConfig) -> None:
    if needs_building(cfg.model):
        if cfg.launcher.dry_run:
            # A dry run shows the job at once: building the demo base takes minutes.
            log.info(
                "%s does not exist yet: it is built (model.build_if_missing=%s) when the job "
                "is submitted; a dry run builds nothing",
                cfg.model.path,
                cfg.model.build_if_missing,
            )
            return
        # A model bigft builds (the demo base) is built once here, not by racing ranks in the job.
        ensure_model(cfg.model)
    check_starting_run(str(cfg.model.path), TASKS[str(cfg.task.name)].model_head)
    for key in ("path", "tokenizer"):
        source = cfg.model.get(key)
        # A run directory is checked for a finished model; the job's rank 0 merges an adapter.
        if source and looks_local(source) and finished_output(source, key=f"model.{key}") is None:
            resolve_source(source, what="model" if key == "path" else "tokenizer")


def _check_writable(run_dir: Path) -> None:
    """The run directory, or the nearest existing directory above it, must be writable (a dry
    run creates nothing)."""
    existing = run_dir.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir {run_dir}: cannot write under {existing}")


def _check_fits(cfg: DictConfig) -> None:
    """Refuse a GPU job that bigft-plan says cannot fit, unless launcher.force."""
    if cfg.launcher.gpus_per_node <= 0:
        return  # a CPU job: no GPU memory to plan
    from bigft.plan import check_fits

    try:
        plan = check_fits(cfg)
    except ConfigError as err:  # e.g. a hub id with no model.shape: nothing to plan from here
        log.warning("GPU memory not checked before submitting: %s", err)
        return
    if plan.fits:
        log.info("bigft-plan: %s", plan.render().splitlines()[-1])
        return
    if cfg.launcher.force:
        log.warning("bigft-plan says this job does not fit; submitting anyway (launcher.force)")
        return
    raise ConfigError(
        f"this job does not fit in {cfg.launcher.gpu_memory_gb:g} GiB per GPU:\n{plan.render()}\n"
        "change the settings above, or submit anyway with launcher.force=true"
    )


# ---- the script ------------------------------------------------------------------------------


def sbatch_directives(cfg: DictConfig, log_dir: Path, workdir: Path) -> list[str]:
    """The #SBATCH options, in the order a cluster user reads them."""
    launcher = cfg.launcher
    options = [
        f"--job-name={launcher.job_name}",
        f"--nodes={launcher.nodes}",
        # One task per GPU: each task is one rank of the job.
        f"--ntasks-per-node={launcher.nproc_per_node}",
    ]
    if launcher.gpus_per_node > 0:
        options.append(f"--gpus-per-node={launcher.gpus_per_node}")
    options.append(f"--cpus-per-task={launcher.cpus_per_task}")
    if launcher.mem is not None:
        options.append(f"--mem={launcher.mem}")
    options.append(f"--time={launcher.time}")
    for key in ("partition", "account", "qos", "constraint"):
        if launcher.get(key):
            options.append(f"--{key}={launcher.get(key)}")
    if launcher.exclusive:
        options.append("--exclusive")
    options += [
        f"--chdir={workdir}",
        f"--output={log_dir}/%j.out",
        # A requeued job keeps its job id: append, so the log keeps every attempt.
        "--open-mode=append",
        # Every rank gets the warning, in time to finish a step and checkpoint.
        f"--signal={launcher.signal}@{launcher.signal_lead_seconds}",
        "--requeue",
    ]
    return options + [str(option) for option in launcher.sbatch_extra]


def render_script(
    cfg: DictConfig,
    *,
    config_path: Path,
    log_dir: Path,
    workdir: Path,
    entry: str = JOB_ENTRY,
    command: str = "bigft-train",
) -> str:
    launcher = cfg.launcher
    # launcher.python may be a wrapper: "apptainer exec --nv bigft.sif python".
    python = shlex.split(launcher.python) if launcher.python else [sys.executable]
    srun = ["srun", "--kill-on-bad-exit=1", *[str(a) for a in launcher.srun_args]]
    task = [*srun, *python, "-u", "-m", entry, str(config_path)]
    lines = [
        "#!/bin/bash",
        f"# bigft {cfg.name}: written by `{command} launcher=slurm`; resubmit with sbatch.",
        f"# The config every rank runs (frozen at submission): {config_path}",
        *[f"#SBATCH {option}" for option in sbatch_directives(cfg, log_dir, workdir)],
        "",
        "set -euo pipefail",
        *[str(line) for line in launcher.setup],
        f"export OMP_NUM_THREADS={launcher.cpus_per_task}",
        'echo "bigft: job $SLURM_JOB_ID, restart ${SLURM_RESTART_COUNT:-0}, $SLURM_JOB_NODELIST"',
        "# One task per GPU; each task reads its rank from SLURM_PROCID / SLURM_LOCALID.",
        " ".join(shlex.quote(part) for part in task),
        "",
    ]
    return "\n".join(lines)


# ---- submitting ------------------------------------------------------------------------------


def sbatch(script_path: Path, cfg: DictConfig) -> str:
    result = subprocess.run(
        ["sbatch", "--parsable", str(script_path)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        reason = " ".join(
            line.removeprefix("sbatch: error: ").strip()
            for line in result.stderr.splitlines()
            if line.strip()
        )
        raise ConfigError(
            f"Slurm refused the job: {reason or f'sbatch exited {result.returncode}'}\n"
            f"  asked for: {_resources(cfg)}\n"
            f"  script: {script_path}"
        )
    return result.stdout.strip().split(";")[0]


def _resources(cfg: DictConfig) -> str:
    launcher = cfg.launcher
    parts = [
        f"launcher.partition={launcher.partition}",
        f"launcher.nodes={launcher.nodes}",
        f"launcher.nproc_per_node={launcher.nproc_per_node}",
        f"launcher.gpus_per_node={launcher.gpus_per_node}",
        f"launcher.cpus_per_task={launcher.cpus_per_task}",
        f"launcher.mem={launcher.mem}",
        f"launcher.time={launcher.time}",
    ]
    return ", ".join(parts)


def submission_summary(cfg: DictConfig, job_id: str, run_dir: Path, slurm_dir: Path) -> str:
    lines = [
        f"bigft: submitted Slurm job {job_id} ({cfg.launcher.nodes} node(s) × "
        f"{cfg.launcher.nproc_per_node} rank(s))",
        f"  log:     {slurm_dir / f'{job_id}.out'}",
        f"  run dir: {run_dir}",
        f"  watch:   squeue -j {job_id}    stop: scancel {job_id}",
    ]
    if cfg.logger.name == "wandb":
        lines.append(
            f"  W&B:     project {cfg.logger.project}, run {cfg.name}; offline runs sync with "
            f"`wandb sync {run_dir}/wandb/offline-run-*`"
        )
    return "\n".join(lines)
