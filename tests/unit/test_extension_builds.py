"""DeepSpeed's just-in-time ops build inside bigft's virtual environment, and a lock left by a
killed build cannot hang the next install (a CI install once waited on one for 90 minutes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bigft.distributed.prepare import STALE_LOCK_SECONDS, remove_stale_locks


def _extensions_dir_seen_by(env: dict) -> str:
    code = "import bigft, os; print(os.environ.get('TORCH_EXTENSIONS_DIR', ''))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_bigft_points_builds_into_the_venv_unless_the_user_chose():
    env = {k: v for k, v in os.environ.items() if k != "TORCH_EXTENSIONS_DIR"}
    assert sys.prefix != sys.base_prefix, "the suite runs in bigft's venv"
    assert _extensions_dir_seen_by(env) == str(Path(sys.prefix) / "torch_extensions")
    assert _extensions_dir_seen_by({**env, "TORCH_EXTENSIONS_DIR": "/mine"}) == "/mine"


def test_only_locks_older_than_any_build_are_removed(tmp_path):
    stale = tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock"
    fresh = tmp_path / "py311_cpu" / "other_op" / "lock"
    for lock in (stale, fresh):
        lock.parent.mkdir(parents=True)
        lock.touch()
    now = fresh.stat().st_mtime + 60
    os.utime(stale, (now - STALE_LOCK_SECONDS - 1,) * 2)
    assert remove_stale_locks(tmp_path, now=now) == [stale]
    assert not stale.exists() and fresh.exists()
    assert remove_stale_locks(tmp_path, now=now) == []
