"""The top-level conf/ ships inside the package: a wheel installed outside the repository finds
every config and the demo data, and `bigft-train --cfg job` composes from it."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PIP = [sys.executable, "-m", "pip"]


def _build_wheel(out: Path) -> Path:
    subprocess.run(
        [*PIP, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("bigft-*.whl")
    return wheel


def test_wheel_ships_conf_and_demo_data_and_composes_outside_the_repo(tmp_path):
    wheel = _build_wheel(tmp_path / "dist")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    configs = [f"bigft/{p.relative_to(ROOT)}" for p in (ROOT / "conf").glob("**/*.yaml")]
    data = [str(p.relative_to(ROOT)) for p in (ROOT / "bigft/demo/data").glob("*")]
    assert len(configs) > 30 and data
    assert not [name for name in configs + data if name not in shipped]

    site = tmp_path / "site"
    subprocess.run(
        [*PIP, "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = "import bigft.config as c; print(c.__file__); print(c.CONF_DIR)"
    where = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    module, conf_dir = where.stdout.split()
    assert module.startswith(str(site)) and conf_dir == str(site / "bigft" / "conf")
    job = subprocess.run(
        [sys.executable, "-m", "bigft.train", "--cfg", "job", "task=reward", "method=lora"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert job.returncode == 0, job.stderr
    # The overrides took effect in the shipped configs ("reward" alone is also a top-level key).
    assert "\ntask:\n  name: reward\n" in job.stdout
    assert "\nmethod:\n  name: lora\n" in job.stdout
