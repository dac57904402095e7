"""Which parameters train: counting them, describing them, and saving / restoring only them."""

from __future__ import annotations

import torch

from bigft.errors import ConfigError


def quantized_bits(param: torch.Tensor) -> int | None:
    """4 or 8 for a bitsandbytes-quantized weight, None for an ordinary one."""
    if getattr(param, "quant_state", None) is not None:
        return 4
    if type(param).__name__ == "Int8Params":
        return 8
    return None


def real_numel(param: torch.Tensor) -> int:
    """The number of weights a parameter stands for, not the elements of its storage.

    bitsandbytes packs two 4-bit weights per byte (or more per element with a float
    quant_storage); its quant_state keeps the original shape, also once ZeRO-3 has partitioned
    the storage. ZeRO-3 leaves an empty placeholder on each rank and records the full size as
    ds_numel.
    """
    shape = getattr(getattr(param, "quant_state", None), "shape", None)
    if shape is not None:
        return int(torch.Size(shape).numel())
    ds_numel = getattr(param, "ds_numel", None)
    if ds_numel is not None:
        return int(ds_numel)
    return param.numel()


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) weights; a tied weight counts once."""
    trainable = total = 0
    for param in model.parameters():
        n = real_numel(param)
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


def count_quantized(model: torch.nn.Module) -> dict[int, int]:
    """{bits: weights} of the quantized (frozen) base, e.g. {4: 6_815_744}."""
    counts: dict[int, int] = {}
    for param in model.parameters():
        bits = quantized_bits(param)
        if bits is not None:
            counts[bits] = counts.get(bits, 0) + real_numel(param)
    return counts


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def describe_trainable(model: torch.nn.Module) -> str:
    """One log line, e.g. "trainable 1.2M / 8.0M (15.0%)"; with a QLoRA base it says how many
    of the weights are stored in 4 bits (counted as weights, not as the bytes that pack them)."""
    trainable, total = count_parameters(model)
    share = 100.0 * trainable / total if total else 0.0
    line = f"trainable {_human(trainable)} / {_human(total)} ({share:.1f}%)"
    quantized = count_quantized(model)
    if quantized:
        parts = [f"{_human(n)} in {bits}-bit" for bits, n in sorted(quantized.items())]
        line += f"; frozen base weights {', '.join(parts)}"
    return line


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters, named as in named_parameters(), cloned to the CPU."""
    return {
        name: param.detach().to("cpu", copy=True).contiguous()
        for name, param in model.named_parameters()
        if param.requires_grad
    }


def load_trainable_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy `state` into the model's trainable parameters; every name must match both ways."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(params) - set(state))
    unexpected = sorted(set(state) - set(params))
    if missing or unexpected:
        raise ConfigError(
            "saved trainable weights do not match this model (was the method or model changed?)"
            f": missing {_preview(missing)}; unexpected {_preview(unexpected)}"
        )
    with torch.no_grad():
        for name, param in params.items():
            value = state[name]
            if value.shape != param.shape:
                raise ConfigError(
                    f"saved trainable weight {name} has shape {tuple(value.shape)}, "
                    f"the model's has {tuple(param.shape)}"
                )
            param.copy_(value.to(param.device, param.dtype))


def _preview(names: list[str], limit: int = 5) -> str:
    if not names:
        return "none"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
