"""Who am I in the job: rank, local rank, world size and device, read from the environment.

torchrun and `deepspeed` set RANK/LOCAL_RANK/WORLD_SIZE; under `srun` only SLURM_* exist.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from bigft.errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(*names: str, default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return default


def discover(distributed_name: str) -> DistEnv:
    """Read rank and world size; refuse a multi-process start of a single-process config."""
    world = _env_int("WORLD_SIZE", "SLURM_NTASKS", default=1)
    rank = _env_int("RANK", "SLURM_PROCID", default=0)
    local_rank = _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)
    if world > 1 and distributed_name == "single":
        raise ConfigError(
            f"bigft was started as {world} processes but distributed={distributed_name} runs one "
            "process; start it once, or choose a multi-process distributed mode"
        )
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world, device=device)
