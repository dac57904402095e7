"""Rank discovery and process-group set-up; parallelism is applied here and nowhere else."""

from bigft.distributed.env import DistEnv, discover

__all__ = ["DistEnv", "discover"]
