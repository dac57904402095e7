"""Configuration: schemas (ConfigStore), the packaged `conf/` directory, composition, validation."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from bigft.config.schema import register_configs

# conf/ lives inside the package so that it works from `pip install .` as well as editable installs.
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
DEMO_DATA_DIR = Path(__file__).resolve().parent.parent / "demo" / "data"


def _register_resolvers() -> None:
    # ${bigft_demo:instructions_train.jsonl} → a file bundled with bigft.
    if not OmegaConf.has_resolver("bigft_demo"):
        OmegaConf.register_new_resolver("bigft_demo", lambda name: str(DEMO_DATA_DIR / name))


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
