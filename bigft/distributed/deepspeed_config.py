"""The DeepSpeed config of a run: the user's `distributed.deepspeed` block plus what bigft owns.

bigft computes the batch arithmetic (micro-batch × accumulation × world size), clipping and
precision itself rather than leaving DeepSpeed's "auto" values, and refuses a block that says
otherwise, so the numbers in the run's config are the numbers that ran.
"""

from __future__ import annotations

import copy
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bigft.config.precision import precision_of
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


def _refuse(key: str, given: Any, mode: str) -> None:
    raise ConfigError(
        f"distributed.deepspeed.{key}={given} contradicts trainer.precision={mode}; set the "
        "precision with trainer.precision"
    )


def _precision(mode: str, user: dict[str, Any]) -> dict[str, Any]:
    """DeepSpeed's bf16 / fp16 sections for trainer.precision (resolved).

    bf16-mixed is DeepSpeed's bf16 mode with its fp32 master weights and optimizer state: the
    module computes in bf16, the ZeRO optimizer updates fp32 copies of its partitions. Its
    bf16_master_weights_and_grads / bf16_optimizer_states switches would make that pure bf16
    (what bf16-true means, refused under DeepSpeed), so they are pinned off.
    """
    wanted = {"bf16": mode == "bf16-mixed", "fp16": mode == "fp16-mixed"}
    sections: dict[str, Any] = {}
    for key, enabled in wanted.items():
        section = dict(user.get(key) or {})
        given = section.get("enabled")
        if given is not None and given != "auto" and bool(given) != enabled:
            _refuse(f"{key}.enabled", given, mode)
        section["enabled"] = enabled
        sections[key] = section
    for switch in ("bf16_master_weights_and_grads", "bf16_optimizer_states"):
        if sections["bf16"].get(switch):
            _refuse(f"bf16.{switch}", True, mode)
        if wanted["bf16"]:
            sections["bf16"][switch] = False
    return sections


def build_deepspeed_config(
    cfg: DictConfig, world_size: int, precision: str | None = None
) -> dict[str, Any]:
    """The complete DeepSpeed config dict for this run on `world_size` ranks, in `precision`
    (resolved; None: resolved from the config for a bf16-capable GPU)."""
    user = OmegaConf.to_container(cfg.distributed.deepspeed, resolve=True) or {}
    ds = copy.deepcopy(user)
    for key, (value, source) in owned_values(cfg, world_size).items():
        _check_not_contradicted(user, key, value, source)
        ds[key] = value
    ds.update(_precision(precision or precision_of(cfg), user))
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
