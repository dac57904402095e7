"""A tiny two- or three-stage pipeline on the tiny Llama, written as a pipeline config file
into a temporary config directory (`hydra.searchpath`), and `bigft-pipeline` run on it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from .runs import make_task_data


def common_overrides(tmp_path: Path, model_dir: Path) -> list[str]:
    """What every stage shares: the tiny Llama, three steps, a checkpoint at each."""
    return [
        "model=local",
        f"model.path={model_dir}",
        "model.dtype=fp32",
        "task.max_length=64",
        "data=local",
        "logger=none",
        "optim.lr=1e-3",
        "optim.warmup_ratio=0",
        "trainer.micro_batch_size=2",
        "trainer.max_steps=3",
        "trainer.save_every=1",
        "trainer.progress_bar=false",
        f"cache_dir={tmp_path / 'cache'}",
    ]


def tiny_stages(tmp_path: Path, base_lr: str = "1e-3", merge: bool = False) -> dict:
    """base (full, lm) → tune (LoRA sft on base's model) [→ merge (bigft-export of tune)]."""
    lm = make_task_data(tmp_path, "lm")
    sft = make_task_data(tmp_path, "sft")
    stages: dict = {
        "base": {
            "overrides": ["method=full", "task=lm", f"data.train={lm}", f"optim.lr={base_lr}"]
        },
        "tune": {
            "overrides": [
                "method=lora",
                "task=sft",
                f"data.train={sft}",
                "model.path=${stages.base.output_dir}/model",
            ]
        },
    }
    if merge:
        stages["merge"] = {"command": "export", "overrides": ["run=${stages.tune.output_dir}"]}
    return stages


def write_pipeline(
    conf_dir: Path, name: str, overrides: list[str], stages: dict, **extra: object
) -> Path:
    (conf_dir / "pipeline").mkdir(parents=True, exist_ok=True)
    body = {"name": name, "train_overrides": overrides, "stages": stages, **extra}
    path = conf_dir / "pipeline" / f"{name}.yaml"
    path.write_text("# @package _global_\n" + yaml.safe_dump(body, sort_keys=False))
    return path


def bigft_pipeline(
    conf_dir: Path, name: str, *args: str, env: dict[str, str] | None = None, cwd: Path
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "bigft.pipeline.cli",
            f"hydra.searchpath=[file://{conf_dir}]",
            f"pipeline={name}",
            *args,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **(env or {})},
    )


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout
