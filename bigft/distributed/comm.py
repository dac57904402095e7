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
    # gloo reduces CPU tensors; nccl needs them on the GPU.
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return dict(zip(keys, tensor.cpu().tolist(), strict=True))


def barrier() -> None:
    if active():
        dist.barrier()
