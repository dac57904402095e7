"""Who am I in the job: rank, local rank, world size and device, read from the environment.

torchrun and `deepspeed` set RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT; in a Slurm job,
bigft sets them from SLURM_* first (bigft/launch/slurm_rank.py). SLURM_* are not read here: the
batch script of a 2-task job also sees SLURM_NTASKS=2, though it is one process.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from bigft.errors import ConfigError

# Environment variables init_process_group set for a one-process DeepSpeed group.
_SET_BY_US: list[str] = []


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(*names: str, default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return default


def discover(distributed_name: str) -> DistEnv:
    """Read rank and world size from torch.distributed's variables."""
    world = _env_int("WORLD_SIZE", default=1)
    rank = _env_int("RANK", default=0)
    local_rank = _env_int("LOCAL_RANK", default=0)
    if world > 1 and distributed_name == "single":
        raise ConfigError(
            f"bigft was started as {world} processes but distributed=single runs one process; "
            "choose distributed=ddp, zero1, zero2, zero3 or zero3_offload"
        )
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world, device=device)


def init_process_group(
    env: DistEnv, backend: str, timeout_minutes: int, *, deepspeed: bool = False
) -> None:
    """Join the job's process group (a no-op for one process).

    The timeout turns a rank that died or diverged into an error on the others instead of a
    job that hangs until its Slurm time limit.
    """
    # DeepSpeed needs a process group even for one rank (e.g. ZeRO-3 offload on one GPU).
    if (not env.distributed and not deepspeed) or dist.is_initialized():
        return
    defaults = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "RANK": str(env.rank),
        "WORLD_SIZE": str(env.world_size),
        "LOCAL_RANK": str(env.local_rank),
    }
    for name, value in defaults.items():
        if name not in os.environ:
            os.environ[name] = value
            # Undone on close: a later run in this process (or a child it starts) must not
            # mistake itself for a rank of this job.
            _SET_BY_US.append(name)
    if backend == "auto":
        backend = "nccl" if env.device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(minutes=timeout_minutes)
    dist.init_process_group(
        backend=backend, rank=env.rank, world_size=env.world_size, timeout=timeout
    )
    if deepspeed:
        # DeepSpeed keeps its own view of the group (its configs read the world size from it).
        import deepspeed as ds

        ds.init_distributed(dist_backend=backend, timeout=timeout)


def close_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
    while _SET_BY_US:
        os.environ.pop(_SET_BY_US.pop(), None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
