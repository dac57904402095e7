"""Where metrics go: always a plain metrics.jsonl in the run directory, and W&B when enabled.

Only the main rank tracks; the other ranks get a tracker that drops everything.

A resumed run logs every step once: metrics.jsonl first loses the lines past the checkpoint's
step (a run that starts over loses them all), and W&B continues the same run id on the same step
axis. W&B itself drops a step at or below the last one it holds ("steps must be monotonically
increasing"); as a resume is exact, the steps it drops equal those it keeps.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bigft.config.schema import LoggerConfig

METRICS_FILE = "metrics.jsonl"


def keep_metrics_through(path: Path, step: int | None) -> None:
    """Drop the lines logged after `step` (all of them for None: a run starting over).

    Rewritten beside and renamed over, so a kill leaves the old file or the new one. A line
    a kill cut short is dropped too.
    """
    if not path.is_file():
        return
    kept = []
    if step is not None:
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):
                continue
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


class Tracker:
    def __init__(self, run_dir: Path | None, wandb_run: Any = None) -> None:
        self._file = (run_dir / METRICS_FILE).open("a") if run_dir else None
        self._wandb = wandb_run

    @property
    def wandb_id(self) -> str | None:
        return self._wandb.id if self._wandb is not None else None

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self._file:
            self._file.write(json.dumps({"step": step, **metrics}) + "\n")
            self._file.flush()
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)

    def table(self, name: str, rows: list[dict[str, Any]], step: int) -> None:
        """Rows of the same keys as a W&B table (task=grpo's sampled responses)."""
        if self._wandb is None or not rows:
            return
        import wandb

        columns = list(rows[0])
        data = [[row.get(c) for c in columns] for row in rows]
        self._wandb.log({name: wandb.Table(columns=columns, data=data)}, step=step)

    def summary(self, metrics: dict[str, float]) -> None:
        if self._wandb is not None:
            self._wandb.summary.update(metrics)

    def finish(self) -> None:
        if self._file:
            self._file.close()
            self._file = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def new_run_id() -> str:
    # Not from `random`: that is seeded, and two runs with one seed must not share a W&B run.
    return secrets.token_hex(4)


def wandb_mode(cfg: LoggerConfig) -> str:
    """Offline unless the user has an API key or chose a mode (a laptop or a cluster node with
    no network still gets a complete run to `wandb sync` later)."""
    if cfg.mode:
        return cfg.mode
    return os.environ.get("WANDB_MODE") or (
        "online" if os.environ.get("WANDB_API_KEY") else "offline"
    )


def start_tracking(
    cfg: DictConfig,
    run_dir: Path,
    *,
    is_main: bool,
    wandb_id: str | None,
    resumed_step: int | None = None,
) -> Tracker:
    """Open the metrics file and, for logger=wandb, start or continue the W&B run `wandb_id`.

    `resumed_step`: the checkpoint's step the run continues from; None for a run from step 0.
    """
    if not is_main:
        return Tracker(None)
    keep_metrics_through(run_dir / METRICS_FILE, resumed_step)
    if cfg.logger.name != "wandb":
        return Tracker(run_dir)
    import wandb

    run = wandb.init(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        group=cfg.logger.group,
        job_type=cfg.logger.job_type,
        name=cfg.name,
        tags=list(cfg.logger.tags),
        config=OmegaConf.to_container(cfg, resolve=True),
        dir=str(run_dir),
        mode=wandb_mode(cfg.logger),
        # The id comes from the last checkpoint on resume, so a resumed run continues the same
        # W&B run instead of forking a new one.
        id=wandb_id or new_run_id(),
        resume="allow",
    )
    return Tracker(run_dir, run)
