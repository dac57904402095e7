"""What the CPU benchmarks share: the machine they ran on, the date, the results files, the model.

Each benchmark is a script (`python benchmarks/NAME.py`), whose own folder Python puts first on
sys.path, so they import this as `common`; a test that loads a benchmark as a module prepends
benchmarks/ itself. benchmarks/gpu/ runs on a machine with few packages and keeps its own.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def cpu() -> str:
    """The CPU's model name and count, as lscpu gives them."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
        return f"{fields['Model name'].strip()}, {fields['CPU(s)'].strip()} CPUs"
    except (OSError, subprocess.CalledProcessError, KeyError):
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def machine() -> dict[str, Any]:
    """The CPU, the OS, and the versions that decide a step's speed."""
    import torch
    import transformers

    return {
        "cpu": cpu(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def describe(m: dict[str, Any]) -> str:
    """`machine()` in one line of a report."""
    return (
        f"{m['cpu']}; {m['platform']}; Python {m['python']}; torch {m['torch']} "
        f"({m['threads']} threads); transformers {m['transformers']}"
    )


def load_average() -> list[float]:
    """1, 5 and 15 minutes: the benchmarks share the machine's cores with other jobs."""
    return [round(x, 2) for x in os.getloadavg()]


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def command(script: str) -> str:
    """This process's command line as run from the repository root."""
    path = Path(script).resolve().relative_to(ROOT).as_posix()
    return " ".join(["python", path, *sys.argv[1:]])


def write_results(results: Path, stem: str, payload: dict[str, Any], report: str) -> None:
    """results/STEM.json (every figure) and STEM.md (the report a reader opens)."""
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (results / f"{stem}.md").write_text(report)


# The demo base's family (bigft/demo/base.py), twice as wide and deep (3.7M parameters with its
# 1024-token vocabulary): large enough that the model's compute, not Python, dominates a step.
DEMO_FAMILY_SHAPE = {
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}


def demo_family_model(out_dir: Path, seed: int = 0) -> Any:
    """A random Llama of DEMO_FAMILY_SHAPE with the demo's tokenizer, written to `out_dir`;
    returns the tokenizer."""
    from bigft.demo.base import VOCAB_SIZE, tokenizer_texts
    from bigft.models.toy import build_tiny_llama, build_tokenizer

    tokenizer = build_tokenizer(tokenizer_texts(), VOCAB_SIZE)
    build_tiny_llama(out_dir, tokenizer, seed=seed, **DEMO_FAMILY_SHAPE)
    return tokenizer
