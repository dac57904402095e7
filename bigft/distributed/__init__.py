"""Rank discovery, process groups, collectives and the engine that applies parallelism.

Model code knows nothing of parallelism: it is applied here, in one place.
"""

from bigft.distributed.env import DistEnv, close_process_group, discover, init_process_group

__all__ = ["DistEnv", "close_process_group", "discover", "init_process_group"]
