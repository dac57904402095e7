"""Models that bigft builds itself when they are missing (the demo's pre-trained toy base)."""

from __future__ import annotations

from pathlib import Path

from bigft.config.schema import ModelConfig
from bigft.errors import ConfigError

BUILDERS = ("demo_base",)


def ensure_model(model_cfg: ModelConfig, *, can_build: bool = True) -> None:
    """Build the model at `model.path` if it is missing and the config says how."""
    recipe = model_cfg.build_if_missing
    if not recipe or Path(model_cfg.path).exists():
        return
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
