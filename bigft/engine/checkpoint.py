"""Atomic, resumable checkpoints: trainable weights, optimizer, schedule, RNG, position, run ids.

A checkpoint is written to `.tmp-step_N/` and renamed into place. Its `manifest.json`, written
last, lists every file with its size: a checkpoint is complete only when the manifest is there and
every file it names has that size (as DeepSpeed's `latest` marks a complete tag). Re-saving a step
moves the old copy aside (`.old-step_N/`) and renames the new one in before deleting the old one,
so a kill at any moment leaves one complete copy of every step that had one; the next save
finishes the interrupted swap. Only the last `keep_last` complete checkpoints are kept.
The data position is the step: batches are a pure function of (seed, step), see batches.py.

    step_00000200/
      manifest.json            every other file and its size (written last)
      state.json               step, world size, skipped steps, W&B run id
      trainable.safetensors    the trainable weights, gathered (portable across world sizes)
      optimizer.pt | deepspeed/  the optimizer (DeepSpeed: its per-rank ZeRO shards)
      universal/               the ZeRO shards per parameter, added when a run resumes at
                               another world size (bigft/distributed/universal.py)
      scheduler.pt, rng_rank{r}.pt   plain tensors and numbers: loaded with weights_only=True
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from bigft.distributed.comm import barrier
from bigft.distributed.engine import Engine
from bigft.distributed.env import DistEnv
from bigft.errors import BigftError, CheckpointError
from bigft.methods.params import load_trainable_state_dict

STEP_PREFIX = "step_"
STATE_FILE = "state.json"
TRAINABLE_FILE = "trainable.safetensors"
MANIFEST_FILE = "manifest.json"
SCHEDULER_FILE = "scheduler.pt"
# A step's checkpoint while it is written, and the copy it replaces while the two swap.
TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"
# Which copy of one step wins when a kill left several: the finished name, then a replacement
# whose swap was interrupted (the newer write), then the copy it was replacing.
_PREFERENCE = (STEP_PREFIX, TMP_PREFIX + STEP_PREFIX, OLD_PREFIX + STEP_PREFIX)


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def step_of(name: str) -> int | None:
    """The step of a checkpoint directory's name (finished or mid-swap); None for other names."""
    for prefix in _PREFERENCE:
        if name.startswith(prefix) and name[len(prefix) :].isdigit():
            return int(name[len(prefix) :])
    return None


def _rank_of(name: str) -> int:
    return next(i for i, prefix in enumerate(_PREFERENCE) if name.startswith(prefix))


def write_manifest(path: Path, step: int) -> None:
    """List every file of the checkpoint `path` with its size; the mark of a complete one."""
    files = {
        str(f.relative_to(path)): f.stat().st_size
        for f in sorted(path.rglob("*"))
        if f.is_file() and f.name != MANIFEST_FILE
    }
    tmp = path / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(json.dumps({"step": step, "files": files}, indent=1))
    os.replace(tmp, path / MANIFEST_FILE)


def incomplete_reason(path: Path) -> str | None:
    """Why the checkpoint `path` is not complete, or None when it is."""
    try:
        files = json.loads((path / MANIFEST_FILE).read_text())["files"]
    except FileNotFoundError:
        return f"no {MANIFEST_FILE} (its write was interrupted, or an older bigft wrote it)"
    except (ValueError, KeyError, TypeError):
        return f"its {MANIFEST_FILE} is unreadable"
    for name, size in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, {MANIFEST_FILE} says {size}"
    return None


@dataclass
class Scan:
    """A run's checkpoints: the complete ones (one per step, oldest first) and the others."""

    complete: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (path, why)


def _scan(root: Path) -> Scan:
    scan = Scan()
    if not root.is_dir():
        return scan
    by_step: dict[int, list[Path]] = {}
    for path in root.iterdir():
        step = step_of(path.name)
        if step is not None and path.is_dir():
            by_step.setdefault(step, []).append(path)
    for step in sorted(by_step):
        for path in sorted(by_step[step], key=lambda p: _rank_of(p.name)):
            reason = incomplete_reason(path)
            if reason is None:
                scan.complete.append(path)
                break
            scan.skipped.append((path, reason))
    return scan


def scan_checkpoints(run_dir: Path) -> Scan:
    return _scan(checkpoint_dir(run_dir))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    return scan_checkpoints(run_dir).complete


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _rng_state() -> dict[str, Any]:
    # Only tensors, numbers and strings: loadable with weights_only=True (no pickled objects).
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_file(rank: int) -> str:
    return f"rng_rank{rank}.pt"


def _fault_point(step: int, point: str) -> None:
    """Fault injection for tests: BIGFT_KILL_IN_CHECKPOINT=STEP:POINT dies there (SIGKILL), as
    a job killed in the middle of writing a checkpoint does."""
    if os.environ.get("BIGFT_KILL_IN_CHECKPOINT") == f"{step}:{point}":
        os.kill(os.getpid(), signal.SIGKILL)


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
    save_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write a checkpoint; every rank calls it (ZeRO ranks each write their own shard)."""
    root = checkpoint_dir(run_dir)
    final = root / f"{STEP_PREFIX}{step:08d}"
    tmp = root / f"{TMP_PREFIX}{final.name}"
    if env.is_main:
        root.mkdir(parents=True, exist_ok=True)
        _settle(root)
        tmp.mkdir()
    barrier()
    engine.save_sharded(tmp)
    _fault_point(step, "sharded")
    if with_trainable:
        # Portable weights (any world size, plain torch); ZeRO-3 gathers them from every rank.
        weights = engine.trainable_state()
        if env.is_main:
            save_file(weights, tmp / TRAINABLE_FILE)
    torch.save(_rng_state(), tmp / rng_file(env.rank))
    if save_extra is not None:
        save_extra(tmp)  # before the manifest, which must list these files too
    barrier()
    if env.is_main:
        torch.save(scheduler.state_dict(), tmp / SCHEDULER_FILE)
        full_state = {**state, "step": step, "world_size": env.world_size}
        (tmp / STATE_FILE).write_text(json.dumps(full_state, indent=2))
        _fault_point(step, "state")
        write_manifest(tmp, step)  # last: from here on the checkpoint is complete
        _fault_point(step, "manifest")
        _swap_into_place(tmp, final, root / f"{OLD_PREFIX}{final.name}", step)
        _prune(root, keep_last)
    barrier()
    return final


def _swap_into_place(tmp: Path, final: Path, old: Path, step: int) -> None:
    """Rename the new checkpoint into place; an old copy of the step is deleted only after."""
    if final.exists():
        final.rename(old)
        _fault_point(step, "aside")
    tmp.rename(final)
    _fault_point(step, "renamed")
    shutil.rmtree(old, ignore_errors=True)


def _settle(root: Path) -> None:
    """Finish what a kill left half done: a complete copy under a temporary name takes the
    step's name (replacing an incomplete one), then the leftovers go."""
    leftovers = [p for p in root.iterdir() if p.name.startswith((TMP_PREFIX, OLD_PREFIX))]
    if not leftovers:
        return  # the usual case: no manifest need be read before every save
    for path in _scan(root).complete:
        if not path.name.startswith(STEP_PREFIX):
            final = root / path.name[path.name.index(STEP_PREFIX) :]
            shutil.rmtree(final, ignore_errors=True)  # incomplete, or it would have won
            path.rename(final)
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)


def _prune(root: Path, keep_last: int) -> None:
    for old in _scan(root).complete[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def read_state(path: Path) -> dict[str, Any]:
    with _loading(path, STATE_FILE):
        return json.loads((path / STATE_FILE).read_text())


@contextmanager
def _loading(path: Path, name: str) -> Iterator[None]:
    """A complete checkpoint that fails to load is an error, never a silent fresh start."""
    try:
        yield
    except BigftError:
        raise
    except Exception as err:  # torch, safetensors and DeepSpeed each raise their own types
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded: {name}: {str(err).splitlines()[0]}. Move it "
            "out of the checkpoints directory to resume from the one before, or start afresh "
            "with name=<new name>"
        ) from None


def load_trainable_weights(path: Path, model: torch.nn.Module) -> None:
    """Restore the portable trainable weights (before sharding); the checkpoint must have them."""
    with _loading(path, TRAINABLE_FILE):
        if not (path / TRAINABLE_FILE).is_file():
            raise FileNotFoundError(f"no {TRAINABLE_FILE}: the trained weights are not there")
        load_trainable_state_dict(model, load_file(path / TRAINABLE_FILE))


def load_extra(path: Path, what: str, load: Callable[[Path], None]) -> None:
    """A task's own checkpoint files (ppo: a separate value model), failing as the rest do."""
    with _loading(path, what):
        load(path)


def load_training_state(
    path: Path,
    *,
    engine: Engine,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    env: DistEnv,
    saved_world: int,
) -> None:
    """Optimizer (or DeepSpeed's shards), schedule and this rank's RNG, after the engine exists."""
    with _loading(path, "the optimizer state"):
        engine.load_sharded(path)
    with _loading(path, SCHEDULER_FILE):
        scheduler.load_state_dict(torch.load(path / SCHEDULER_FILE, weights_only=True))
    name = rng_file(env.rank % saved_world)
    with _loading(path, name):
        _set_rng_state(torch.load(path / name, weights_only=True))
