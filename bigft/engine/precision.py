"""Applying trainer.precision to a loaded model (the policy itself: bigft/config/precision.py).

The mixed modes hold every weight that trains in fp32, as transformers' Trainer and DeepSpeed's
bf16 mode do: a bf16 weight near 1.0 (an RMSNorm or LayerNorm scale) is 2^-7 from its
neighbours, so an AdamW step of ~lr = 2e-4 rounds back to the same value, step after step.
Frozen weights keep the checkpoint's dtype (model.dtype), and autocast computes in 16 bits.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from bigft.config.precision import BF16_SPACING_AT_ONE, bf16_update_of, trainable_dtype
from bigft.models.load import torch_dtype

log = logging.getLogger(__name__)


def bf16_supported(device: torch.device) -> bool:
    """Whether `device` computes in bf16 (every CPU autocasts to it; older GPUs do not)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return True


def hold_trainable_in(model: torch.nn.Module, dtype: str | None) -> int:
    """Cast every trainable floating-point weight to `dtype` (None: leave them); returns how many
    elements changed dtype. `.data =` keeps each Parameter object, so ties (a head shared with
    the embeddings) and references the caller holds stay valid."""
    if dtype is None:
        return 0
    target = torch_dtype(dtype)
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.is_floating_point() and param.dtype != target:
            param.data = param.data.to(target)
            cast += param.numel()
    return cast


def bf16_true_warning(update: str) -> str:
    """The start-up warning of trainer.precision=bf16-true: the effect, and what remedies it."""
    effect = (
        "trainer.precision=bf16-true: weights, gradients and optimizer state are bf16, which "
        "keeps 8 significant bits; an update smaller than half the spacing between bf16 numbers "
        f"(2^-8 of the weight: {BF16_SPACING_AT_ONE / 2:.4f} for a norm weight near 1.0) rounds "
        "back to the old weight"
    )
    if update == "none":
        return (
            f"{effect}, and with optim.bf16_update=none such updates are lost: norm weights and "
            "small learning rates may not train at all. Remedies: optim.bf16_update=stochastic "
            "(unbiased rounding, no extra memory), optim.bf16_update=kahan (a bf16 "
            "compensation buffer), or trainer.precision=bf16-mixed (fp32 master weights)"
        )
    how = {
        "stochastic": "rounds each new weight up or down at random in proportion, so small "
        "updates survive on average",
        "kahan": "carries what each rounding lost in a bf16 compensation buffer",
    }[update]
    return (
        f"{effect}. optim.bf16_update={update} {how}; trainer.precision=bf16-mixed keeps fp32 "
        "master weights instead (exact updates, more memory)"
    )


def log_precision(
    precision: str, requested: str, update: str, cast: int, *, deepspeed: bool = False
) -> None:
    """One line on the precision a run trains in; the warnings of the modes that need them."""
    how = f"trainer.precision={precision}"
    if requested != precision:
        how += f" (from {requested})"
    if cast:
        how += (
            f"; {cast:,} trainable weights held in {'bf16' if precision == 'bf16-true' else 'fp32'}"
        )
    log.info(how)
    if precision == "bf16-true":
        log.warning(bf16_true_warning(update))
    if precision == "fp16-mixed" and not deepspeed:
        # DeepSpeed's fp16 mode scales the loss; the plain engine does not.
        log.warning(
            "trainer.precision=fp16-mixed without DeepSpeed runs without loss scaling: gradients "
            "below fp16's range (6e-8) become zero; prefer trainer.precision=bf16-mixed"
        )


def apply_precision(
    model: torch.nn.Module, cfg: Any, precision: str, *, deepspeed: bool, announce: bool
) -> str:
    """Hold the trainable weights in the dtype `precision` (resolved) gives them, log it, and
    return how AdamW writes into bf16 weights (optim.bf16_update, resolved). Under DeepSpeed
    nothing is cast: its bf16 mode makes the 16-bit module and the fp32 masters itself."""
    dtype = None if deepspeed else trainable_dtype(precision, cfg.method.adapter_dtype)
    cast = hold_trainable_in(model, dtype)
    update = bf16_update_of(precision, cfg.optim.bf16_update, cfg.optim.name)
    if announce:
        log_precision(precision, str(cfg.trainer.precision), update, cast, deepspeed=deepspeed)
    return update
