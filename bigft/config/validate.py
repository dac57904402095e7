"""Checks that need more than types: value ranges and combinations, before anything is loaded."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from bigft.config.precision import MIXED, autocast_dtype, precision_of
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
    k = cfg.task.get("max_responses")
    _require(
        k is None or k >= 2, "task.max_responses", k, ">= 2 (a ranking has 2 responses or more)"
    )
    _require(m.r >= 1, "method.r", m.r, ">= 1")
    _require(m.bits in (4, 8), "method.bits", m.bits, "4 or 8")
    _require(m.quant_type in ("nf4", "fp4"), "method.quant_type", m.quant_type, "nf4 or fp4")
    _require(m.num_virtual_tokens >= 1, "method.num_virtual_tokens", m.num_virtual_tokens, ">= 1")
    _require(
        m.train_last_n_blocks >= 0, "method.train_last_n_blocks", m.train_last_n_blocks, ">= 0"
    )
    _validate_distributed(cfg)
    _validate_precision(cfg)
    _validate_adapter_dtype(cfg)
    _validate_combination(cfg)
    _validate_packing(cfg)
    if cfg.task.name == "dpo":
        _validate_dpo(cfg)
    if cfg.task.name in ("grpo", "ppo"):
        from bigft.config.rl import validate_rl

        validate_rl(cfg)


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
    from bigft.methods.qlora import apply_zero3_recipe

    # The one recipe that works is applied (and logged); only a contradicting choice is refused.
    apply_zero3_recipe(cfg)


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
            "trainer.precision, fp32 masters in the optimizer); remove method.adapter_dtype"
        )
    if method == "qlora" and dtype != "fp32" and autocast_dtype(precision_of(cfg)) == "none":
        # The fp32 norms hand the 16-bit head fp32 activations; only autocast reconciles them.
        raise ConfigError(
            f"method.adapter_dtype={dtype} with method=qlora needs autocast: the embeddings and "
            "head are then 16-bit while the norms stay fp32; add trainer.precision=bf16-mixed"
        )


# trainer.mixed_precision → trainer.precision, for the message that replaces the old key.
OLD_PRECISION = {"bf16": "bf16-mixed", "fp16": "fp16-mixed"}


def _validate_precision(cfg: DictConfig) -> None:
    old = cfg.trainer.get("mixed_precision")
    if old is not None:
        new = OLD_PRECISION.get(str(old), "fp32 (or bf16-true for pure 16-bit weights)")
        raise ConfigError(
            f"trainer.mixed_precision={old} was replaced by trainer.precision: use "
            f"trainer.precision={new}, or leave it out (auto: fp32 master weights with bf16 "
            "autocast for a 16-bit model.dtype)"
        )
    precision, method = precision_of(cfg), str(cfg.method.name)
    if precision == "bf16-true" and method not in ("full", "freeze"):
        raise ConfigError(
            f"trainer.precision=bf16-true with method={method}: it applies to method=full and "
            "method=freeze; 16-bit adapters are method.adapter_dtype=bf16 with "
            "trainer.precision=bf16-mixed"
        )
    if precision == "bf16-true" and cfg.distributed.name.startswith("zero"):
        raise ConfigError(
            f"trainer.precision=bf16-true with distributed={cfg.distributed.name}: DeepSpeed's "
            "bf16 mode keeps fp32 master weights in the optimizer; use trainer.precision="
            "bf16-mixed (or auto)"
        )
    _validate_bf16_update(cfg, precision)


def _validate_bf16_update(cfg: DictConfig, precision: str) -> None:
    update = str(cfg.optim.bf16_update)
    if update in ("auto", "none"):
        return
    if precision != "bf16-true":
        mixed = "fp32" if precision not in MIXED else "fp32 master"
        raise ConfigError(
            f"optim.bf16_update={update} with trainer.precision={precision}: the weights are "
            f"{mixed} weights, where no update is lost; it applies to trainer.precision=bf16-true"
        )
    if cfg.optim.name != "adamw":
        raise ConfigError(
            f"optim.bf16_update={update} with optim={cfg.optim.name}: it is an AdamW update; "
            "use optim=adamw, or optim.bf16_update=none"
        )
    if update == "kahan":
        try:
            import optimi  # noqa: F401
        except ImportError as err:
            raise ConfigError(
                f"optim.bf16_update=kahan needs torch-optimi (pip install torch-optimi): {err}"
            ) from err


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
        why = (
            "a dpo pair is one chosen row and one rejected row, scored in the same forward"
            if cfg.task.name == "dpo"
            else "a classifier or reward head reads one sequence per row"
        )
        raise ConfigError(
            f"task.packing=true with task={cfg.task.name}: packing applies to task=lm and task=sft "
            f"only ({why}); remove task.packing"
        )
    if cfg.method.name == "prefix":
        raise ConfigError(
            "task.packing=true with method=prefix: prefix tuning hands its virtual tokens to the "
            "model as a KV cache, and with a cache transformers does not keep packed examples "
            "from attending to each other; use method=lora, or task.packing=false"
        )


def _validate_dpo(cfg: DictConfig) -> None:
    t = cfg.task
    _require(t.beta > 0, "task.beta", t.beta, "> 0")
    _require(0 <= t.label_smoothing < 0.5, "task.label_smoothing", t.label_smoothing, "in [0, 0.5)")
    _require(t.sft_weight >= 0, "task.sft_weight", t.sft_weight, ">= 0")
    if t.label_smoothing and t.loss == "ipo":
        raise ConfigError(
            f"task.label_smoothing={t.label_smoothing} with task.loss=ipo: label smoothing "
            "applies to the logistic losses (sigmoid, simpo); remove task.label_smoothing"
        )
    if t.loss == "simpo" and t.reference != "auto":
        raise ConfigError(
            f"task.reference={t.reference!r} with task.loss=simpo: SimPO uses no reference "
            "model; remove task.reference"
        )
    _validate_reference(str(t.reference))


def _validate_reference(reference: str) -> None:
    from bigft.config.paths import looks_local

    if reference in ("auto", "precompute") or not looks_local(reference):
        return
    if not Path(reference).expanduser().is_dir():
        raise ConfigError(
            f"task.reference={reference!r} is not a directory: expected auto, precompute, a "
            "bigft run directory or a model directory (or a hub id)"
        )
