"""method=qlora under ZeRO-3: the one recipe that shards a 4-bit base, applied, not asked for.

ZeRO-3 partitions parameters by flattening them; a 4-bit weight joins the shards like any other
only when bitsandbytes stores its packed bytes in the compute dtype (bnb_4bit_quant_storage), and
the model's other weights must be in that dtype too. bigft sets both when they are left to it
(`method.quant_storage` unset, `model.dtype` not given on the command line) and refuses only a
value the user chose that contradicts them.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from bigft.errors import ConfigError

log = logging.getLogger("bigft")


def given_on_command_line(key: str) -> bool:
    """True when the user typed `key=...` (or +key / ++key) for this bigft command.

    Hydra records the command line's overrides; a config composed outside a Hydra app (tests,
    the Python API) has none, and its values count as defaults.
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    typed = HydraConfig.get().overrides.task
    return any(override.split("=", 1)[0].lstrip("+~") == key for override in typed)


def apply_zero3_recipe(cfg: DictConfig) -> list[str]:
    """Set `method.quant_storage` and `model.dtype` to the compute dtype for ZeRO-3; returns the
    settings it changed ("method.quant_storage=bf16"), after logging them."""
    compute = str(cfg.method.compute_dtype)
    storage = cfg.method.quant_storage
    if storage is not None and str(storage) != compute:
        raise ConfigError(
            f"method.quant_storage={storage} with method=qlora under ZeRO-3: the 4-bit weights "
            f"are sharded only when stored in the compute dtype (method.compute_dtype={compute}); "
            f"remove method.quant_storage, or set method.compute_dtype={storage}"
        )
    dtype = str(cfg.model.dtype)
    if dtype != compute and given_on_command_line("model.dtype"):
        raise ConfigError(
            f"model.dtype={dtype} with method=qlora under ZeRO-3: the model's weights must be in "
            f"the compute dtype (method.compute_dtype={compute}) for ZeRO-3 to shard them with "
            f"the 4-bit base; remove model.dtype, or set method.compute_dtype={dtype}"
        )
    changed = []
    if storage is None:
        cfg.method.quant_storage = compute
        changed.append(f"method.quant_storage={compute}")
    if dtype != compute:
        cfg.model.dtype = compute
        changed.append(f"model.dtype={compute}")
    if changed:
        log.info(
            "method=qlora under ZeRO-3: set %s (ZeRO-3 shards a 4-bit base stored in the compute "
            "dtype, with the rest of the model in that dtype)",
            " ".join(changed),
        )
    return changed
