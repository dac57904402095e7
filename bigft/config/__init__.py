"""Configuration: schemas (ConfigStore), the packaged `conf/` directory, composition, validation."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from bigft.config.schema import register_configs


def _conf_dir() -> Path:
    """The Hydra config directory: the repository's top-level `conf/` in a source checkout
    (editable installs, PYTHONPATH), else the copy a wheel ships as package data `bigft/conf`."""
    package = Path(__file__).resolve().parent.parent
    checkout = package.parent / "conf"
    if (checkout / "train.yaml").is_file():
        return checkout
    return package / "conf"


CONF_DIR = _conf_dir()
DEMO_DATA_DIR = Path(__file__).resolve().parent.parent / "demo" / "data"


def run_dir(output_root: str, name: str) -> str:
    """`{output_root}/{name}`; in a Hydra sweep (-m), each job's own sweep directory instead,
    so that the points of a sweep never share (and resume from) one run directory."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return str(HydraConfig.get().runtime.output_dir)
    return f"{output_root}/{name}"


def sweep_subdir(sweep_dir: str, job_num: int) -> str:
    """A sweep job's directory name from the values it sweeps ("optim.lr=0.001"), not from every
    override (paths on the command line would nest directories); the job number as a fallback.

    Which keys are swept is read from the sweep's own command line, saved in multirun.yaml.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    try:
        command_line = OmegaConf.load(Path(sweep_dir) / "multirun.yaml").hydra.overrides.task
        overrides = parser.parse_overrides(list(command_line))
        swept = {o.key_or_group for o in overrides if o.is_sweep_override()}
        mine = parser.parse_overrides(list(HydraConfig.get().overrides.task))
    except Exception:  # no multirun.yaml (e.g. another sweeper): still a unique directory
        return str(job_num)
    name = ",".join(o.input_line for o in mine if o.key_or_group in swept)
    return name.replace("/", "_") or str(job_num)


def model_dir_name(path: str) -> str:
    """The last part of a model directory or hub id ("/models/tiny-qwen2/" → "tiny-qwen2"), or
    of a run directory (outputs/demo-lora-sft/merged → "demo-lora-sft"): the run name of
    `model=local`, so that runs of two models never share a run directory."""
    path = Path(str(path).rstrip("/"))
    # A run's model/ or merged/ (bigft.outputs' names) is named after the run. By the name
    # alone, never by what is on disk: a config composed before the run finishes (a pipeline's
    # later stage, a queued job) must name it as one composed after does.
    if path.name in ("model", "merged") and path.parent.name:
        path = path.parent
    return path.name or "local"


def _register_resolvers() -> None:
    from bigft.config import sbatch_options  # the launcher.* values in Slurm's units

    resolvers = {
        # ${bigft_demo:instructions_train.jsonl} → a file bundled with bigft.
        "bigft_demo": lambda name: str(DEMO_DATA_DIR / name),
        "bigft_run_dir": run_dir,
        "bigft_model_dir_name": model_dir_name,
        "bigft_sweep_subdir": sweep_subdir,
        # launcher.* → the submitit launcher's fields (conf/launcher/slurm.yaml).
        "bigft_minutes": sbatch_options.time_minutes,
        "bigft_mem_gb": sbatch_options.mem_gb,
        "bigft_positive_or_none": sbatch_options.positive_or_none,
        "bigft_sbatch_params": sbatch_options.submitit_parameters,
    }
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


_register_resolvers()
register_configs()


def typed_config(cfg: DictConfig, schema: type) -> DictConfig:
    """Check a small command's config against its dataclass schema; user errors, not tracebacks.

    For the one-shot commands (bigft-export, bigft-generate), whose schema is not registered.
    """
    from omegaconf.errors import OmegaConfBaseException

    from bigft.errors import ConfigError

    missing = [key for key in cfg if OmegaConf.is_missing(cfg, key)]
    if missing:
        raise ConfigError(f"missing required value: {', '.join(f'{k}=...' for k in missing)}")
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(str(err).splitlines()[0]) from err


def compose_config(overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    """Compose `conf/<config_name>.yaml` with command-line style overrides, outside @hydra.main.

    Used by tests, by the demo (to pre-train its base model) and by other entry points.
    """
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        # Called from inside a running Hydra app: compose without re-initialising.
        return compose(config_name=config_name, overrides=list(overrides or []))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides or []))
