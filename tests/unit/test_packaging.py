"""A normal (non-editable) `pip install .` ships every config and the demo data."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_contains_conf_and_demo_data(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("bigft-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "bigft"
    needed = [*package.glob("conf/**/*.yaml"), *package.glob("demo/data/*")]
    assert len(needed) > 30
    missing = [str(p.relative_to(ROOT)) for p in needed if str(p.relative_to(ROOT)) not in shipped]
    assert not missing
