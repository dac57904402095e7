"""Build DeepSpeed's just-in-time ops once, at install time: `python -m bigft.distributed.prepare`.

On a CPU-only machine DeepSpeed compiles its shared-memory all-reduce op on first use. Left to
the first job, every rank compiles it at once and the job's first minute goes to gcc; a rank has
also been seen to abort at exit after such a concurrent build. Building it here avoids both.

torch guards each build with a `lock` file in the op's build directory and waits for it to go
away, with no timeout and no owner check: a build that was killed leaves it behind and every
later build waits forever (a CI install hung for its whole 90 minutes so). `import bigft` points
the builds into the virtual environment (TORCH_EXTENSIONS_DIR), so a fresh install starts with
no such leftovers, and a lock older than any real build is removed here before building.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

# The shared-memory op builds in about a minute on two cores; a lock this old has no builder.
STALE_LOCK_SECONDS = 15 * 60


def remove_stale_locks(extensions_dir: Path, now: float | None = None) -> list[Path]:
    """Delete build locks under `extensions_dir` (<dir>/<python+device>/<op>/lock) older than
    STALE_LOCK_SECONDS; return what was removed."""
    now = time.time() if now is None else now
    removed = []
    for lock in sorted(extensions_dir.glob("*/*/lock")):
        if now - lock.stat().st_mtime > STALE_LOCK_SECONDS:
            lock.unlink(missing_ok=True)
            removed.append(lock)
    return removed


def main() -> None:
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    if accelerator.device_name() != "cpu":
        print("bigft: DeepSpeed uses its GPU ops; nothing to build")
        return
    builder = accelerator.create_op_builder("ShareMemCommBuilder")
    if builder is None or not builder.is_compatible():
        print("bigft: no shared-memory op for this platform; DeepSpeed falls back to gloo")
        return
    from torch.utils.cpp_extension import get_default_build_root

    # Where torch builds: the venv's directory `import bigft` set, else torch's own default.
    extensions_dir = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    for lock in remove_stale_locks(extensions_dir):
        print(f"bigft: removed {lock}, left by a build that was killed")
    builder.load()
    print(f"bigft: DeepSpeed's CPU shared-memory op is built (in {extensions_dir})")


if __name__ == "__main__":
    main()
