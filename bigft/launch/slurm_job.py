"""`python -m bigft.launch.slurm_job CONFIG.yaml`: what each `srun` task of the sbatch script runs.

One rank of the job: the frozen config, the rank from SLURM_* and the run (slurm_rank.py says how
a job's ranks are laid out, stopped and requeued).
"""

from __future__ import annotations

import functools
import os
import sys

from omegaconf import DictConfig, OmegaConf

from bigft.errors import ConfigError, exit_on_user_error
from bigft.launch.slurm_rank import run_rank, torch_env_from_slurm
from bigft.train import configure_logging, fault_injection, train

__all__ = ["load_frozen_config", "main", "torch_env_from_slurm"]


def load_frozen_config(path: str) -> DictConfig:
    """The config written at submission, checked against the schema again."""
    from bigft.config import typed_config
    from bigft.config.schema import TrainConfig

    if not os.path.isfile(path):
        raise ConfigError(f"frozen config {path} not found: was the run directory moved?")
    return typed_config(OmegaConf.load(path), TrainConfig)


@exit_on_user_error
def main() -> None:
    if len(sys.argv) != 2:
        raise ConfigError("usage: python -m bigft.launch.slurm_job CONFIG.yaml (from sbatch)")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch_env_from_slurm()
    configure_logging()
    run_rank(load_frozen_config(sys.argv[1]), functools.partial(train, faults=fault_injection()))


if __name__ == "__main__":
    main()
