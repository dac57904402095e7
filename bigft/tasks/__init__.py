"""Objectives: records → examples → batches → summed loss and metrics (see `base.Task`)."""

from __future__ import annotations

from typing import Any

from bigft.errors import ConfigError
from bigft.tasks.base import IGNORE_INDEX, LossOutput, Task
from bigft.tasks.classify import ClassifyTask
from bigft.tasks.dpo import DPOTask
from bigft.tasks.grpo import GRPOTask
from bigft.tasks.lm import LMTask
from bigft.tasks.ppo import PPOTask
from bigft.tasks.reward import RewardTask
from bigft.tasks.sft import SFTTask

__all__ = ["IGNORE_INDEX", "LossOutput", "Task", "build_task"]

TASKS: dict[str, type] = {
    "lm": LMTask,
    "sft": SFTTask,
    "classify": ClassifyTask,
    "reward": RewardTask,
    "dpo": DPOTask,
    "grpo": GRPOTask,
    "ppo": PPOTask,
}


def build_task(task_cfg: Any, tokenizer: Any) -> Task:
    """The task named by `task_cfg.name`, bound to the tokenizer that encodes its data."""
    task_cls = TASKS.get(str(task_cfg.name))
    if task_cls is None:
        raise ConfigError(f"unknown task {task_cfg.name!r}; choose one of {sorted(TASKS)}")
    return task_cls(task_cfg, tokenizer)
