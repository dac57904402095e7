"""Models that bigft builds itself when they are missing (the demo's pre-trained toy base).

A demo concern, not the model loader's: the entry points (bigft-train, its local and Slurm
launchers) ask for the model here before loading it, and the demo builds it by running
`bigft-train` (base.py), so nothing that training imports calls back up into training.
"""

from __future__ import annotations

from pathlib import Path

from bigft.config.schema import ModelConfig
from bigft.errors import ConfigError

BUILDERS = ("demo_base",)


def needs_building(model_cfg: ModelConfig) -> bool:
    """True when `model.path` is missing and the config says how to build it."""
    return bool(model_cfg.build_if_missing) and not Path(model_cfg.path).exists()


def ensure_model(model_cfg: ModelConfig, *, can_build: bool = True) -> None:
    """Build the model at `model.path` if it is missing and the config says how."""
    if not needs_building(model_cfg):
        return
    recipe = model_cfg.build_if_missing
    if recipe not in BUILDERS:
        raise ConfigError(
            f"model.build_if_missing={recipe!r}: expected one of {list(BUILDERS)} or null"
        )
    if not can_build:
        raise ConfigError(
            f"{model_cfg.path} does not exist yet and is built by one process: run bigft-train "
            "once without a distributed launcher, or use launcher.nproc_per_node"
        )
    from bigft.demo.base import build_demo_base

    build_demo_base(Path(model_cfg.path))
