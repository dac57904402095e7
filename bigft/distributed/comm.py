"""The few collectives the loop needs; each is the identity for a single process."""

from __future__ import annotations

import torch
import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sum_across_ranks(values: dict[str, float]) -> dict[str, float]:
    """Add each value over all ranks (every rank must pass the same keys, in the same order)."""
    if not active() or not values:
        return dict(values)
    keys = list(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    tensor = sum_tensor_across_ranks(tensor)
    return dict(zip(keys, tensor.tolist(), strict=True))


def sum_tensor_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU tensor added element-wise over all ranks, returned on the CPU."""
    if not active():
        return tensor
    # gloo reduces CPU tensors; nccl needs them on the GPU.
    on = tensor.cuda() if dist.get_backend() == "nccl" else tensor
    dist.all_reduce(on)
    return on.cpu()


def barrier() -> None:
    if active():
        dist.barrier()
