"""The DeepSpeed config of a run: the user's `distributed.deepspeed` block plus what bigft owns.

bigft computes the batch arithmetic (micro-batch × accumulation × world size), clipping and
precision itself rather than leaving DeepSpeed's "auto" values, and refuses a block that says
otherwise, so the numbers in the run's config are the numbers that ran.
"""

from __future__ import annotations

import copy
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bigft.errors import ConfigError


def owned_values(cfg: DictConfig, world_size: int) -> dict[str, tuple[Any, str]]:
    """DeepSpeed key → (value, the bigft key it comes from)."""
    t = cfg.trainer
    return {
        "train_micro_batch_size_per_gpu": (t.micro_batch_size, "trainer.micro_batch_size"),
        "gradient_accumulation_steps": (t.grad_accum, "trainer.grad_accum"),
        "train_batch_size": (
            t.micro_batch_size * t.grad_accum * world_size,
            "trainer.micro_batch_size × trainer.grad_accum × world size",
        ),
        "gradient_clipping": (float(cfg.optim.max_grad_norm or 0.0), "optim.max_grad_norm"),
    }


def _check_not_contradicted(user: dict[str, Any], key: str, value: Any, source: str) -> None:
    given = user.get(key)
    if given is None or given == "auto" or given == value:
        return
    raise ConfigError(
        f"distributed.deepspeed.{key}={given!r} contradicts {source} = {value!r}; bigft sets "
        f"{key} itself: remove it from the DeepSpeed block or change {source}"
    )


def _precision(cfg: DictConfig, user: dict[str, Any]) -> dict[str, Any]:
    mode = str(cfg.trainer.mixed_precision)
    wanted = {"bf16": mode == "bf16", "fp16": mode == "fp16"}
    for key, enabled in wanted.items():
        given = (user.get(key) or {}).get("enabled")
        if given is not None and given != "auto" and bool(given) != enabled:
            raise ConfigError(
                f"distributed.deepspeed.{key}.enabled={given} contradicts "
                f"trainer.mixed_precision={mode}; set the precision with trainer.mixed_precision"
            )
    return {key: {**(user.get(key) or {}), "enabled": enabled} for key, enabled in wanted.items()}


def build_deepspeed_config(cfg: DictConfig, world_size: int) -> dict[str, Any]:
    """The complete DeepSpeed config dict for this run on `world_size` ranks."""
    user = OmegaConf.to_container(cfg.distributed.deepspeed, resolve=True) or {}
    ds = copy.deepcopy(user)
    for key, (value, source) in owned_values(cfg, world_size).items():
        _check_not_contradicted(user, key, value, source)
        ds[key] = value
    ds.update(_precision(cfg, user))
    if cfg.optim.name != "adamw":
        # bitsandbytes and SGD optimizers are not on DeepSpeed's list of ZeRO-tested ones.
        ds.setdefault("zero_allow_untested_optimizer", True)
    if offloads_optimizer(ds):
        # bigft passes its own optimizer (torch AdamW by default), which DeepSpeed accepts for
        # offloaded states once told not to insist on its DeepSpeedCPUAdam.
        ds.setdefault("zero_force_ds_cpu_optimizer", False)
    ds.setdefault("steps_per_print", 10**9)  # bigft logs; DeepSpeed's own step log is noise
    ds.setdefault("wall_clock_breakdown", False)
    return ds


def zero_stage(ds_config: dict[str, Any] | None) -> int:
    if not ds_config:
        return 0
    return int((ds_config.get("zero_optimization") or {}).get("stage", 0))


def _offloads(ds_config: dict[str, Any] | None, what: str) -> bool:
    zero = (ds_config or {}).get("zero_optimization") or {}
    return (zero.get(what) or {}).get("device") in ("cpu", "nvme")


def offloads_params(ds_config: dict[str, Any] | None) -> bool:
    return _offloads(ds_config, "offload_param")


def offloads_optimizer(ds_config: dict[str, Any] | None) -> bool:
    return _offloads(ds_config, "offload_optimizer")
