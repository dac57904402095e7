"""`bigft-redteam launcher=slurm`: a scan as a one-task Slurm job, on bigft-train's machinery.

Submitting (bigft/launch/slurm.py's `submit`): the scan's inputs are checked here on the login
node (target, attacks, judges, files, output directory) before anything is queued; the frozen
config and the sbatch script go to `<output_dir>/slurm/`; `launcher.dry_run=true` prints the
script and writes nothing.

Inside the job, bigft/redteam/slurm_job.py scans as `bigft-redteam` does, and stops and
requeues on Slurm's warning signal.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bigft.errors import ConfigError, DataError
from bigft.launch.slurm import check_can_submit, submit
from bigft.redteam.attacks import read_attack_file, read_fillers
from bigft.redteam.garak import read_garak_report
from bigft.redteam.judges import build_judges
from bigft.redteam.target import check_target

JOB_ENTRY = "bigft.redteam.slurm_job"


def submit_scan(cfg: DictConfig, *, checked: bool = False) -> str | None:
    """Check the scan, write its sbatch script and submit it; the job id (None: a dry run).
    `checked`: the caller checked it (bigft-pipeline, before submitting any stage)."""
    return submit(cfg, check=check_scan, entry=JOB_ENTRY, command="bigft-redteam", checked=checked)


def check_scan(cfg: DictConfig) -> None:
    """What the job would find wrong only after its wait in the queue, found here instead."""
    launcher = cfg.launcher
    if launcher.nodes != 1 or launcher.nproc_per_node != 1:
        raise ConfigError(
            "a scan runs in one process: launcher.nodes=1 and launcher.nproc_per_node=1 (got "
            f"launcher.nodes={launcher.nodes}, launcher.nproc_per_node={launcher.nproc_per_node})"
        )
    if cfg.garak_report:
        read_garak_report(cfg.garak_report, threshold=cfg.garak_threshold)
    else:
        _check_scan_inputs(cfg)
    for key in ("labels", "export.harmless"):
        path = OmegaConf.select(cfg, key)
        if path and not Path(path).expanduser().is_file():
            raise ConfigError(f"{key}={path!r} does not exist")
    check_can_submit(cfg, Path(cfg.output_dir))


def _check_scan_inputs(cfg: DictConfig) -> None:
    if not cfg.target:
        raise ConfigError("missing target=<run directory or model path> (or garak_report=...)")
    check_target(cfg.target, merged=cfg.generation.merged)
    red_lm = cfg.attacks.red_lm.model
    if red_lm:
        check_target(red_lm, key="attacks.red_lm.model")
    # The judges that load a model are only checked to exist: the job loads them.
    build_judges(cfg.judges, load_models=False)
    attacks = [a for path in cfg.attacks.files for a in read_attack_file(path)]
    templates = cfg.attacks.templates
    if templates.fillers is not None:
        fillers = templates.fillers
        read_fillers(fillers if isinstance(fillers, str) else OmegaConf.to_container(fillers))
        if "paraphrase" in templates.mutations and not red_lm:
            raise DataError(
                "attacks.templates.mutations has 'paraphrase', which needs attacks.red_lm"
            )
    if not attacks and templates.fillers is None and not red_lm:
        raise ConfigError(
            "no attacks: give attacks.files=[...], attacks.templates.fillers=... "
            "or attacks.red_lm.model=..."
        )
