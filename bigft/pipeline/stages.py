"""The pipeline config (conf/pipeline.yaml, conf/pipeline/*.yaml) read into ordered stages.

A stage is one bigft command (train, redteam, export) with its overrides, exactly what a user
would type. The pipeline adds only where the stage writes (`<output_root>/<pipeline>/<stage>`)
and its W&B group and job type. `${stages.<name>.output_dir}` in an override is the output
directory of an earlier stage; a stage waits for the stages it refers to, or, referring to none,
for the stage before it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from bigft.config.schema import LauncherConfig, LoggerConfig
from bigft.errors import ConfigError

# command → (module run as `python -m`, the console script a user knows it by, its config name)
COMMANDS = {
    "train": ("bigft.train", "bigft-train", "train"),
    "redteam": ("bigft.redteam.cli", "bigft-redteam", "redteam"),
    "export": ("bigft.export", "bigft-export", "export"),
}
# Where each command writes: the pipeline sets these, so a stage cannot.
_LOCATION_KEYS = {
    "train": ("name", "output_root", "output_dir"),
    "redteam": ("name", "output_dir"),
    "export": ("output",),
}
_RANK_LAYOUT = ("launcher.nodes", "launcher.nproc_per_node")
_REFERENCE = re.compile(r"\$\{\s*stages\.([A-Za-z0-9_-]+)\.")


@dataclass
class StageConfig:
    command: str = "train"  # train | redteam | export
    overrides: list[str] = field(default_factory=list)
    # Slurm resources of this stage alone, as launcher.* keys: {gpus_per_node: 8, time: "08:00:00"}
    launcher: dict[str, Any] = field(default_factory=dict)
    # Default: <output_root>/<pipeline name>/<stage name>.
    output_dir: str | None = None


@dataclass
class PipelineConfig:
    name: str = "pipeline"
    output_root: str = "outputs"
    # The pipeline's own values, used in the stages as ${inputs.<key>} (a base model, data sets):
    # a pipeline file leaves them ??? for the command line to give.
    inputs: dict[str, Any] = field(default_factory=dict)
    # Given to every train stage before its own overrides (e.g. model=local model.path=...);
    # redteam and export have other keys.
    train_overrides: list[str] = field(default_factory=list)
    stages: dict[str, StageConfig] = field(default_factory=dict)
    # launcher=slurm submits every stage at once; launcher.* here apply to every stage.
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    # Print the plan (stages, commands, dependencies, GPU memory) and run nothing.
    dry_run: bool = False


def register_pipeline_schema() -> None:
    ConfigStore.instance().store(name="pipeline_schema", node=PipelineConfig)


@dataclass
class Stage:
    name: str
    command: str
    overrides: list[str]  # the stage's own, references resolved; what `command_line` runs
    output_dir: str
    depends_on: list[str]
    launcher: dict[str, Any]

    @property
    def module(self) -> str:
        return COMMANDS[self.command][0]

    @property
    def program(self) -> str:
        return COMMANDS[self.command][1]

    @property
    def config_name(self) -> str:
        return COMMANDS[self.command][2]

    def command_line(self) -> str:
        """The command as a user would type it (for the plan and messages)."""
        from shlex import quote

        return " ".join([self.program, *(quote(o) for o in self.overrides)])


def read_stages(cfg: DictConfig, launcher: list[str] | None = None) -> list[Stage]:
    """The stages in the order the config lists them, references to earlier stages resolved.

    `launcher`: the command line's launcher overrides, given to every train and redteam stage
    before the stage's own `launcher` keys."""
    if not cfg.stages:
        raise ConfigError(
            "the pipeline has no stages: choose one with pipeline=<name> (conf/pipeline/*.yaml)"
        )
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    names = list(cfg.stages)
    for name in names:
        if cfg.stages[name].get("output_dir") is None:
            cfg.stages[name].output_dir = str(Path(cfg.output_root) / cfg.name / name)
    raw = OmegaConf.to_container(cfg, resolve=False)
    resolved = _resolved(cfg)
    stages = []
    for index, name in enumerate(names):
        stage = cfg.stages[name]
        command = str(stage.get("command", "train"))
        _check_command(name, command)
        # The raw text: iterating the config would resolve the references away.
        own = raw["stages"][name].get("overrides", [])
        shared = raw["train_overrides"] if command == "train" else []
        refs = _references(name, [*own, *shared], names[:index], names)
        depends = refs or names[max(index - 1, 0) : index]
        overrides = [str(o) for o in resolved["stages"][name].get("overrides", [])]
        common = [str(o) for o in resolved["train_overrides"]] if command == "train" else []
        output_dir = str(stage.output_dir)
        stages.append(
            Stage(
                name=name,
                command=command,
                overrides=[
                    *common,
                    *overrides,
                    *_launcher(command, launcher or [], stage.get("launcher") or {}),
                    *_location(command, name, output_dir, overrides),
                    *_tracking(command, str(cfg.name), name),
                ],
                output_dir=output_dir,
                depends_on=depends,
                launcher=dict(stage.get("launcher") or {}),
            )
        )
    return stages


def _resolved(cfg: DictConfig) -> dict[str, Any]:
    from omegaconf.errors import MissingMandatoryValue

    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        key = getattr(err, "full_key", None) or str(err).splitlines()[0]
        raise ConfigError(
            f"{key} is not set: the pipeline needs it, give it on the command line ({key}=...)"
        ) from None


def _check_command(name: str, command: str) -> None:
    if command not in COMMANDS:
        raise ConfigError(
            f"stages.{name}.command={command!r}: expected one of {', '.join(COMMANDS)}"
        )


def _references(name: str, overrides: list[str], earlier: list[str], names: list[str]) -> list[str]:
    refs: list[str] = []
    for override in overrides:
        for ref in _REFERENCE.findall(str(override)):
            if ref not in earlier:
                where = "a later stage" if ref in names else "no stage"
                raise ConfigError(
                    f"stages.{name}.overrides: {override!r} refers to stage {ref!r}, which is "
                    f"{where}; a stage may refer only to the stages before it "
                    f"({', '.join(earlier) or 'none'})"
                )
            if ref not in refs:
                refs.append(ref)
    return refs


def _location(command: str, name: str, output_dir: str, overrides: list[str]) -> list[str]:
    """The overrides that make the command write to the stage's output directory."""
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in _LOCATION_KEYS[command]:
            raise ConfigError(
                f"stages.{name}.overrides: {override!r}: the pipeline sets where a stage writes; "
                f"set stages.{name}.output_dir instead"
            )
    if command == "train":
        path = Path(output_dir)
        return [f"output_root={path.parent}", f"name={path.name}"]
    if command == "redteam":
        # The scan's name names its Slurm job (bigft-<stage>), as a train stage's does.
        return [f"name={name}", f"output_dir={output_dir}"]
    return [f"output={output_dir}"]


def _launcher(command: str, given: list[str], own: dict[str, Any]) -> list[str]:
    """A train or redteam stage's launcher overrides (bigft-export has no launcher: slurm.py)."""
    if command == "export":
        return []
    if command == "redteam":
        # A scan runs in one process: the command line's rank layout is its train stages'.
        given = [o for o in given if o.split("=", 1)[0].lstrip("+~") not in _RANK_LAYOUT]
    return [*given, *(f"launcher.{key}={value}" for key, value in own.items())]


def _tracking(command: str, pipeline: str, name: str) -> list[str]:
    """One W&B group per pipeline, the stage's name as the run's job type (export logs nothing)."""
    if command == "export":
        return []
    # bigft-redteam's logger is composed untyped (logger=none has no group key): ++ adds it.
    force = "++" if command == "redteam" else ""
    return [f"{force}logger.group={pipeline}", f"{force}logger.job_type={name}"]
