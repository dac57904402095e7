"""Resuming a ZeRO checkpoint on another number of ranks, through DeepSpeed's universal checkpoint.

ZeRO shards are tied to the world size that wrote them: rank r holds its slice of every flat
parameter group. DeepSpeed's converter (`deepspeed.checkpoint.ds_to_universal`) rewrites them as
one directory per parameter (fp32 weights and the Adam moments), which DeepSpeed loads at any world
size when the config says `checkpoint.load_universal`. So a run resumed on 8 GPUs from 16 keeps
its optimizer state and continues as if it had never moved.

The conversion runs once, on rank 0, before the model is built (it reads every shard, which is
the memory-heavy part), and is kept inside the checkpoint for the next resume:

    step_00000200/deepspeed/    the ZeRO shards, as written
    step_00000200/universal/    the same state, per parameter (written on the first resume
                                at another world size; renamed into place when complete)
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bigft.distributed.engine import DEEPSPEED_TAG, UNIVERSAL_TAG
from bigft.distributed.env import DistEnv

log = logging.getLogger(__name__)

# How often the other ranks look for rank 0's finished conversion. They wait on the shared file
# system rather than in a collective: converting a 70B checkpoint can outlast the process
# group's timeout. If rank 0 fails, the launcher (torchrun, srun) ends the others.
POLL_SECONDS = 2.0


def universal_config(ds_config: dict[str, Any]) -> dict[str, Any]:
    """The DeepSpeed config that loads a universal checkpoint instead of rank-tied shards."""
    checkpoint = {**ds_config.get("checkpoint", {}), "load_universal": True}
    return {**ds_config, "checkpoint": checkpoint}


def ensure_universal(checkpoint: Path, env: DistEnv) -> Path:
    """The checkpoint's universal form, converted by rank 0 if it is not there yet."""
    out = checkpoint / UNIVERSAL_TAG
    if env.is_main:
        log.info("resuming on %d ranks through the universal checkpoint %s", env.world_size, out)
        if not out.is_dir():
            _convert(checkpoint / DEEPSPEED_TAG, out)
    while not out.is_dir():
        time.sleep(POLL_SECONDS)
    return out


def _convert(shards: Path, out: Path) -> None:
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("converting %s to a universal checkpoint (once; kept in %s)", shards, out)
    # A separate process: the converter forks worker pools and holds every shard in memory,
    # neither of which belongs in a rank that has a process group and will build the model.
    command = [
        sys.executable,
        "-m",
        "deepspeed.checkpoint.ds_to_universal",
        f"--input_folder={shards}",
        f"--output_folder={tmp}",
        # Checkpoints of models DeepSpeed did not build (every Hugging Face model) lack the
        # parameter-layout metadata the converter expects; it fills in the defaults.
        "--inject_missing_state",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(
            f"DeepSpeed could not convert {shards} to a universal checkpoint "
            f"(exit {result.returncode}):\n{result.stderr[-3000:]}"
        )
    tmp.rename(out)
