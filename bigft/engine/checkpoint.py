"""Atomic, resumable checkpoints: trainable weights, optimizer, schedule, RNG, position, run ids.

A checkpoint is written to a temporary directory and renamed into place, so a crash mid-write
leaves the previous good checkpoint as the latest one. Only the last `keep_last` are kept.
The data position is the step: batches are a pure function of (seed, step), see batches.py.

    step_00000200/
      state.json               step, world size, skipped steps, W&B run id (written last)
      trainable.safetensors    the trainable weights, gathered (portable across world sizes)
      optimizer.pt | deepspeed/  the optimizer (DeepSpeed: its per-rank ZeRO shards)
      universal/               the ZeRO shards per parameter, added when a run resumes at
                               another world size (bigft/distributed/universal.py)
      scheduler.pt, rng_rank{r}.pt
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from bigft.distributed.comm import barrier
from bigft.distributed.engine import Engine
from bigft.distributed.env import DistEnv
from bigft.errors import ConfigError
from bigft.methods.params import load_trainable_state_dict

STEP_PREFIX = "step_"
STATE_FILE = "state.json"
TRAINABLE_FILE = "trainable.safetensors"


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def _step_of(path: Path) -> int:
    return int(path.name[len(STEP_PREFIX) :])


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints (a state file present), oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    done = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith(STEP_PREFIX) and (p / STATE_FILE).is_file()
    ]
    return sorted(done, key=_step_of)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_file(rank: int) -> str:
    return f"rng_rank{rank}.pt"


def save_checkpoint(
    run_dir: Path,
    *,
    step: int,
    engine: Engine,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: dict[str, Any],
    keep_last: int,
    env: DistEnv,
    with_trainable: bool = True,
) -> Path:
    """Write a checkpoint; every rank calls it (ZeRO ranks each write their own shard)."""
    root = checkpoint_dir(run_dir)
    final = root / f"{STEP_PREFIX}{step:08d}"
    tmp = root / f".tmp-{final.name}"
    if env.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    engine.save_sharded(tmp)
    if with_trainable:
        # Portable weights (any world size, plain torch); ZeRO-3 gathers them from every rank.
        weights = engine.trainable_state()
        if env.is_main:
            save_file(weights, tmp / TRAINABLE_FILE)
    torch.save(_rng_state(), tmp / rng_file(env.rank))
    barrier()
    if env.is_main:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        # The state file is written last: its presence marks a complete checkpoint.
        full_state = {**state, "step": step, "world_size": env.world_size}
        (tmp / STATE_FILE).write_text(json.dumps(full_state, indent=2))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        _prune(run_dir, keep_last)
    barrier()
    return final


def _prune(run_dir: Path, keep_last: int) -> None:
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def read_state(path: Path) -> dict[str, Any]:
    if not (path / STATE_FILE).is_file():
        raise ConfigError(f"{path} is not a complete bigft checkpoint (no {STATE_FILE})")
    return json.loads((path / STATE_FILE).read_text())


def load_trainable_weights(path: Path, model: torch.nn.Module) -> bool:
    """Restore the portable trainable weights, if the checkpoint has them (before sharding)."""
    if not (path / TRAINABLE_FILE).is_file():
        return False
    load_trainable_state_dict(model, load_file(path / TRAINABLE_FILE))
    return True


def load_training_state(
    path: Path,
    *,
    engine: Engine,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    env: DistEnv,
    saved_world: int,
) -> None:
    """Optimizer (or DeepSpeed's shards), schedule and this rank's RNG, after the engine exists."""
    engine.load_sharded(path)
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    _set_rng_state(torch.load(path / rng_file(env.rank % saved_world), weights_only=False))
