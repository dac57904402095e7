"""Atomic, resumable checkpoints: trainable weights, optimizer, schedule, RNG, position, run ids.

A checkpoint is written to a temporary directory and renamed into place, so a crash mid-write
leaves the previous good checkpoint as the latest one. Only the last `keep_last` are kept.
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

from bigft.errors import ConfigError
from bigft.methods.params import load_trainable_state_dict, trainable_state_dict

STEP_PREFIX = "step_"
STATE_FILE = "state.json"


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


def save_checkpoint(
    run_dir: Path,
    *,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: dict[str, Any],
    keep_last: int,
) -> Path:
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{STEP_PREFIX}{step:08d}"
    tmp = root / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = {name: t.contiguous() for name, t in trainable_state_dict(model).items()}
    save_file(weights, tmp / "trainable.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(_rng_state(), tmp / "rng.pt")
    # The state file is written last: its presence marks a complete checkpoint.
    (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=2))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    _prune(run_dir, keep_last)
    return final


def _prune(run_dir: Path, keep_last: int) -> None:
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    path: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict[str, Any]:
    """Restore everything `save_checkpoint` wrote; returns the saved state (step, run ids...)."""
    if not (path / STATE_FILE).is_file():
        raise ConfigError(f"{path} is not a complete bigft checkpoint (no {STATE_FILE})")
    load_trainable_state_dict(model, load_file(path / "trainable.safetensors"))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    _set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    return json.loads((path / STATE_FILE).read_text())
