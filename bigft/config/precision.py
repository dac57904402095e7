"""trainer.precision: the dtype the trained weights are kept in, and the dtype that computes.

| trainer.precision | weights that train | frozen weights | compute |
|---|---|---|---|
| `fp32` | fp32 | fp32 | fp32 |
| `bf16-mixed` | fp32 (master weights) | `model.dtype` | bf16 autocast |
| `fp16-mixed` | fp32 (master weights) | `model.dtype` | fp16 autocast |
| `bf16-true` | bf16 | bf16 | bf16; `optim.bf16_update` rescues small updates |
| `auto` | `bf16-mixed` when `model.dtype` is 16-bit (and the device computes bf16), else `fp32` |

Under DeepSpeed the mixed modes are DeepSpeed's own: a 16-bit module and fp32 master weights in
the ZeRO optimizer. LoRA adapters keep `method.adapter_dtype` when it is set (fp32 otherwise).

This module only reads the config (no torch), so validation, bigft-plan and the DeepSpeed config
resolve the same precision the training run applies.
"""

from __future__ import annotations

from typing import Any

MIXED = {"bf16-mixed": "bf16", "fp16-mixed": "fp16"}
RESOLVED = ("fp32", "bf16-mixed", "fp16-mixed", "bf16-true")
# A bf16 number keeps 8 significant bits: weights near 1.0 are 2^-7 apart, so an update below
# 2^-8 (0.0039) to such a weight rounds back to it.
BF16_SPACING_AT_ONE = 2.0**-7


def resolve_precision(precision: Any, model_dtype: Any, *, bf16_supported: bool = True) -> str:
    """`trainer.precision` with `auto` decided: one of RESOLVED."""
    name = str(precision)
    if name != "auto":
        return name
    if str(model_dtype) == "fp32":
        return "fp32"
    return "bf16-mixed" if bf16_supported else "fp32"


def precision_of(cfg: Any, *, bf16_supported: bool = True) -> str:
    """The resolved precision of a composed bigft config."""
    return resolve_precision(cfg.trainer.precision, cfg.model.dtype, bf16_supported=bf16_supported)


def autocast_dtype(precision: str) -> str:
    """ "bf16" / "fp16" for the mixed modes, "none" otherwise (what the loop autocasts to)."""
    return MIXED.get(precision, "none")


def load_dtype(precision: str, model_dtype: Any, method: Any = None) -> str:
    """The dtype the base model is loaded in: the checkpoint's (`model.dtype`) in the mixed
    modes, so that frozen weights stay as small as they are stored. A QLoRA base always loads in
    model.dtype: prepare_model_for_kbit_training sets the dtypes of what is not quantized."""
    if str(method) == "qlora":
        return str(model_dtype)
    if precision == "fp32":
        return "fp32"
    if precision == "bf16-true":
        return "bf16"
    return str(model_dtype)


def trainable_dtype(precision: str, adapter_dtype: Any = None) -> str | None:
    """The dtype every trainable weight is held in; None: leave them as method.adapter_dtype
    set them (LoRA adapters narrowed on purpose)."""
    if adapter_dtype is not None:
        return None
    return "bf16" if precision == "bf16-true" else "fp32"


def bf16_update_of(precision: str, bf16_update: Any, optimizer: Any) -> str:
    """`optim.bf16_update` with `auto` decided: "stochastic" for AdamW under bf16-true, else
    "none" (every other mode keeps fp32 weights, where updates are not lost)."""
    name = str(bf16_update)
    if name != "auto":
        return name
    return "stochastic" if precision == "bf16-true" and str(optimizer) == "adamw" else "none"
