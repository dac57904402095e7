"""What a stage's output directory holds, read from the directory itself (so a stage run by hand
counts), and the pipeline's own record, `<output_root>/<pipeline>/pipeline.json`.

- finished: a train run's final model (`<run>/model/bigft_output.json`), a redteam scan's summary
  (`asr.json`), an export's model (`bigft_output.json`);
- the config it ran: a train run's `<run>/config.yaml`; for redteam and export (which record
  none), the one pipeline.json recorded when the pipeline started it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bigft.engine.resume import CONFIG_FILE, key_changes
from bigft.outputs import MODEL_SUBDIR, OUTPUT_FILE
from bigft.pipeline.stages import Stage

STATE_FILE = "pipeline.json"
# Settings that say where or how a run is launched and logged, not what it computes: a change
# of them (launcher=local → slurm, a W&B group) leaves a finished stage finished.
IGNORED_CHANGES = ("launcher", "logger")
_FINISHED_MARKER = {
    "train": f"{MODEL_SUBDIR}/{OUTPUT_FILE}",
    "redteam": "asr.json",
    "export": OUTPUT_FILE,
}


def compose_stage(stage: Stage) -> DictConfig:
    """The stage's full config, as its command composes it from the same overrides."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from bigft.config import compose_config, typed_config
    from bigft.errors import ConfigError, config_error_message

    if stage.command == "redteam":
        # Registers conf/redteam.yaml's schema (redteam_schema) with Hydra's ConfigStore.
        import bigft.redteam.config  # noqa: F401

    try:
        cfg = compose_config(stage.overrides, config_name=stage.config_name)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(config_error_message(err)) from None
    if stage.command == "redteam":
        from bigft.redteam.config import RedteamConfig

        cfg = typed_config(cfg, RedteamConfig)
    elif stage.command == "export":
        from bigft.export import ExportConfig

        cfg = typed_config(cfg, ExportConfig)
    return cfg


def is_finished(stage: Stage) -> bool:
    return (Path(stage.output_dir) / _FINISHED_MARKER[stage.command]).is_file()


def is_started(stage: Stage) -> bool:
    out = Path(stage.output_dir)
    return out.is_dir() and any(out.iterdir())


def recorded_config(stage: Stage, record: dict[str, Any]) -> dict[str, Any] | None:
    """The config the stage's existing output was made with, if anything recorded it."""
    saved = Path(stage.output_dir) / CONFIG_FILE
    if stage.command == "train" and saved.is_file():
        return OmegaConf.to_container(OmegaConf.load(saved), resolve=False)
    return record.get("config")


def config_dict(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)


def changed_keys(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'key: old → new' for every setting that differs, launch and logging settings aside."""
    return key_changes(
        recorded, current, ignore=lambda key: key.split(".", 1)[0] in IGNORED_CHANGES
    )


def set_aside(path: Path) -> Path:
    """Rename an invalidated output directory out of the way (never delete a user's run)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target = path.with_name(f"{path.name}.stale-{stamp}")
    suffix = 1
    while target.exists():
        suffix += 1
        target = path.with_name(f"{path.name}.stale-{stamp}-{suffix}")
    path.rename(target)
    return target


class PipelineState:
    """pipeline.json: per stage its command, the config it was started with, status, Slurm job."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stages: dict[str, dict[str, Any]] = {}
        if path.is_file():
            self.stages = json.loads(path.read_text()).get("stages", {})

    def record(self, name: str) -> dict[str, Any]:
        return self.stages.setdefault(name, {})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"stages": self.stages}, indent=2) + "\n")
        os.replace(tmp, self.path)
