"""Methods: which parameters of the loaded model train (full, freeze, lora, qlora, prefix).

`apply_method` is the one entry point; `unsupported_reason` lets the config validator refuse a
combination at start-up, before a model is loaded or a cluster allocates anything.
"""

from __future__ import annotations

from typing import Any

import torch

from bigft.errors import ConfigError

METHODS = ("full", "freeze", "lora", "qlora", "prefix")


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def unsupported_reason(method_cfg: Any, head: str, model_cfg: Any | None = None) -> str | None:
    """A sentence saying why this method cannot run with this head / model setting, or None."""
    name = str(method_cfg.name)
    if name == "qlora":
        try:
            import bitsandbytes  # noqa: F401
        except Exception as err:  # a broken CUDA setup raises more than ImportError
            return f"QLoRA needs bitsandbytes, which cannot be imported ({err})"
    if name != "prefix":
        return None
    if head == "sequence_classification" and _transformers_major() >= 5:
        return (
            "prefix tuning cannot train a classification or reward head with transformers 5.x: "
            "peft passes the prefix as `past_key_values`, which the sequence-classification "
            "models no longer accept; use method=lora or method=freeze"
        )
    if model_cfg is not None and model_cfg.gradient_checkpointing:
        return (
            "peft's prefix tuning does not work with gradient checkpointing; "
            "set model.gradient_checkpointing=false"
        )
    return None


def _checkpointing_on(model: torch.nn.Module) -> bool:
    for attr in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), attr):
            return bool(getattr(model, attr))
    return False


def apply_method(
    model: torch.nn.Module,
    method_cfg: Any,
    head: str,
    *,
    gradient_checkpointing: bool | None = None,
) -> torch.nn.Module:
    """Make exactly the parameters the method trains require grad; may wrap the model (peft).

    `gradient_checkpointing` (qlora only) defaults to whatever load_model set on the model.
    """
    name = str(method_cfg.name)
    reason = unsupported_reason(method_cfg, head)
    if reason:
        raise ConfigError(f"method={name}: {reason}")
    if name == "full":
        from bigft.methods.full import apply_full

        return apply_full(model)
    if name == "freeze":
        from bigft.methods.freeze import apply_freeze

        return apply_freeze(model, head, int(method_cfg.train_last_n_blocks))
    if name in ("lora", "qlora"):
        from bigft.methods.lora import apply_lora

        if gradient_checkpointing is None:
            gradient_checkpointing = _checkpointing_on(model)
        return apply_lora(model, method_cfg, head, gradient_checkpointing=gradient_checkpointing)
    if name == "prefix":
        from bigft.methods.prefix import apply_prefix

        return apply_prefix(model, method_cfg, head)
    raise ConfigError(f"method.name={name!r} is not allowed: expected one of {METHODS}")


__all__ = ["METHODS", "apply_method", "unsupported_reason"]
