"""Checks that need more than types: value ranges and combinations, before anything is loaded."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from bigft.config.schema import TrainConfig
from bigft.errors import ConfigError


def _require(ok: bool, key: str, value: object, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: expected {expected}")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError naming the key, the value and what is allowed."""
    _check_schema(cfg)
    t, o, m = cfg.trainer, cfg.optim, cfg.method
    _require(t.micro_batch_size >= 1, "trainer.micro_batch_size", t.micro_batch_size, ">= 1")
    _require(t.grad_accum >= 1, "trainer.grad_accum", t.grad_accum, ">= 1")
    _require(t.max_steps > 0 or t.max_steps == -1, "trainer.max_steps", t.max_steps, "> 0, or -1")
    _require(t.epochs >= 1, "trainer.epochs", t.epochs, ">= 1")
    _require(t.keep_last >= 1, "trainer.keep_last", t.keep_last, ">= 1")
    _require(t.save_every >= 0, "trainer.save_every", t.save_every, ">= 0")
    _require(t.save_every_minutes >= 0, "trainer.save_every_minutes", t.save_every_minutes, ">= 0")
    _require(t.max_bad_steps >= 1, "trainer.max_bad_steps", t.max_bad_steps, ">= 1")
    _require(t.log_every >= 1, "trainer.log_every", t.log_every, ">= 1")
    _require(t.eval_batch_size >= 1, "trainer.eval_batch_size", t.eval_batch_size, ">= 1")
    _validate_resume(t.resume)
    _require(o.lr > 0, "optim.lr", o.lr, "> 0")
    _require(len(o.betas) == 2, "optim.betas", list(o.betas), "two numbers, e.g. [0.9, 0.999]")
    _require(0 <= o.warmup_ratio < 1, "optim.warmup_ratio", o.warmup_ratio, "in [0, 1)")
    _require(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", o.min_lr_ratio, "in [0, 1]")
    _require(
        0 <= cfg.data.eval_fraction < 1, "data.eval_fraction", cfg.data.eval_fraction, "[0, 1)"
    )
    _require(cfg.task.max_length >= 2, "task.max_length", cfg.task.max_length, ">= 2")
    _require(m.r >= 1, "method.r", m.r, ">= 1")
    _require(m.bits in (4, 8), "method.bits", m.bits, "4 or 8")
    _require(m.quant_type in ("nf4", "fp4"), "method.quant_type", m.quant_type, "nf4 or fp4")
    _require(m.num_virtual_tokens >= 1, "method.num_virtual_tokens", m.num_virtual_tokens, ">= 1")
    _require(
        m.train_last_n_blocks >= 0, "method.train_last_n_blocks", m.train_last_n_blocks, ">= 0"
    )
    _validate_distributed(cfg)
    _validate_adapter_dtype(cfg)
    _validate_combination(cfg)
    _validate_packing(cfg)


def _check_schema(cfg: DictConfig) -> None:
    # Hydra's `+key=value` adds keys past the schema; merging back into it catches those typos.
    try:
        OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.to_container(cfg))
    except (ConfigKeyError, ConfigAttributeError) as err:
        raise ConfigError(f"unknown config key {err.full_key!r} (check its spelling)") from err


def _validate_distributed(cfg: DictConfig) -> None:
    d, nproc = cfg.distributed, cfg.launcher.nproc_per_node
    _require(nproc >= 1, "launcher.nproc_per_node", nproc, ">= 1")
    if nproc > 1 and d.name == "single":
        raise ConfigError(
            f"launcher.nproc_per_node={nproc} with distributed=single: choose a multi-process "
            "mode (distributed=ddp, zero1, zero2, zero3 or zero3_offload)"
        )
    uses_deepspeed = d.name.startswith("zero")
    if uses_deepspeed and not d.deepspeed:
        raise ConfigError(f"distributed={d.name} needs its DeepSpeed block (distributed.deepspeed)")
    if not uses_deepspeed and d.deepspeed:
        raise ConfigError(
            f"distributed.deepspeed is set but distributed={d.name} does not use DeepSpeed; "
            "choose distributed=zero1, zero2, zero3 or zero3_offload"
        )
    if cfg.method.name == "qlora" and uses_deepspeed:
        _validate_qlora_under_zero(cfg)


def _validate_qlora_under_zero(cfg: DictConfig) -> None:
    from bigft.distributed.deepspeed_config import offloads_optimizer, offloads_params, zero_stage

    ds = OmegaConf.to_container(cfg.distributed.deepspeed, resolve=True)
    if offloads_optimizer(ds) or offloads_params(ds):
        raise ConfigError(
            f"method=qlora with distributed={cfg.distributed.name}: CPU offload with a 4-bit base "
            "is known to raise GPU memory rather than lower it; use distributed=zero3"
        )
    if zero_stage(ds) < 3:
        return
    # ZeRO-3 shards the 4-bit weights like any others only if they are stored in the compute
    # dtype (bnb_4bit_quant_storage) and the rest of the model is in that dtype too.
    compute = str(cfg.method.compute_dtype)
    storage = str(cfg.method.quant_storage) if cfg.method.quant_storage else None
    if storage != compute or str(cfg.model.dtype) != compute:
        raise ConfigError(
            "method=qlora under ZeRO-3 needs the 4-bit storage and the model in the compute dtype: "
            f"add method.quant_storage={compute} model.dtype={compute}"
        )


def _validate_adapter_dtype(cfg: DictConfig) -> None:
    dtype, method = cfg.method.adapter_dtype, cfg.method.name
    if dtype is None:
        return
    if method not in ("lora", "qlora"):
        raise ConfigError(
            f"method.adapter_dtype={dtype} with method={method}: it sets the dtype of LoRA "
            "adapters and applies to method=lora and method=qlora only; remove "
            "method.adapter_dtype (set the model's dtype with model.dtype)"
        )
    if cfg.distributed.name.startswith("zero"):
        raise ConfigError(
            f"method.adapter_dtype={dtype} with distributed={cfg.distributed.name}: DeepSpeed "
            "sets the dtype of trainable weights itself (16-bit copies from "
            "trainer.mixed_precision, fp32 masters in the optimizer); remove method.adapter_dtype"
        )
    if method == "qlora" and dtype != "fp32" and cfg.trainer.mixed_precision == "none":
        # The fp32 norms hand the 16-bit head fp32 activations; only autocast reconciles them.
        raise ConfigError(
            f"method.adapter_dtype={dtype} with method=qlora needs autocast: the embeddings and "
            "head are then 16-bit while the norms stay fp32; add trainer.mixed_precision=bf16"
        )


def _validate_resume(resume: str) -> None:
    if resume in ("auto", "never"):
        return
    if not Path(resume).is_dir():
        raise ConfigError(
            f"trainer.resume={resume!r}: expected 'auto', 'never' or an existing checkpoint "
            "directory"
        )


def _validate_combination(cfg: DictConfig) -> None:
    from bigft.methods import unsupported_reason

    head = "sequence_classification" if cfg.task.name in ("classify", "reward") else "causal_lm"
    reason = unsupported_reason(cfg.method, head, cfg.model)
    if reason:
        raise ConfigError(f"method={cfg.method.name} with task={cfg.task.name}: {reason}")
    if cfg.optim.name != "adamw" and cfg.optim.name != "sgd":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as err:
            raise ConfigError(f"optim.name={cfg.optim.name} needs bitsandbytes: {err}") from err


def _validate_packing(cfg: DictConfig) -> None:
    if not cfg.task.packing:
        return
    if cfg.task.name not in ("lm", "sft"):
        raise ConfigError(
            f"task.packing=true with task={cfg.task.name}: packing applies to task=lm and task=sft "
            "only (a classifier or reward head reads one sequence per row); remove task.packing"
        )
    if cfg.method.name == "prefix":
        raise ConfigError(
            "task.packing=true with method=prefix: prefix tuning hands its virtual tokens to the "
            "model as a KV cache, and with a cache transformers does not keep packed examples "
            "from attending to each other; use method=lora, or task.packing=false"
        )
