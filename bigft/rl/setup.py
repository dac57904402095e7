"""What task=grpo needs besides the model: reward sources from `reward:`, the reference, samples.

Reference: under lora/qlora the policy with its adapters disabled (no second model in memory);
under full fine-tuning a frozen copy of the initial policy, taken once before training starts.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from bigft.rl.reward_model import RewardModelScorer
from bigft.rl.rewards import FunctionReward, RewardSum
from bigft.tasks.dpo import peft_model_of

SAMPLES_FILE = "samples.jsonl"

ReferenceContext = Callable[[], contextlib.AbstractContextManager[torch.nn.Module]]


def build_rewards(cfg: DictConfig, device: torch.device) -> RewardSum:
    """Σ weight · source over `reward.fn` and `reward.model`; `reward.eval_fn` reported only."""
    r = cfg.reward
    sources: list[tuple[Any, float, bool]] = []
    if r.fn:
        sources.append((FunctionReward(str(r.fn), name="fn"), float(r.fn_weight), False))
    if r.model:
        scorer = RewardModelScorer(
            str(r.model),
            name="model",
            device=device,
            use_chat_template=bool(cfg.task.use_chat_template),
            max_length=int(cfg.task.max_length),
        )
        sources.append((scorer, float(r.model_weight), False))
    if r.eval_fn:
        sources.append((FunctionReward(str(r.eval_fn), name="eval_fn"), 1.0, True))
    # Start-up validation (config/rl.py) has refused a config with no reward to train on.
    return RewardSum(sources)


def reference_context(
    method: str, policy: torch.nn.Module, kl_coef: float
) -> ReferenceContext | None:
    """A context manager factory giving the reference model, or None when kl_coef is 0.

    Called before the engine wraps the policy: the frozen copy must be of the initial weights.
    """
    if kl_coef == 0:
        return None
    if method in ("lora", "qlora"):
        model = peft_model_of(policy)

        @contextlib.contextmanager
        def disabled() -> Iterator[torch.nn.Module]:
            trainable = [p for p in model.parameters() if p.requires_grad]
            with model.disable_adapter():
                yield model
            # peft re-enables the adapters through set_adapter(active), which freezes every
            # inactive adapter: ppo's value adapter trains in the same steps as the policy's.
            for param in trainable:
                param.requires_grad_(True)

        return disabled
    frozen = copy.deepcopy(policy).eval().requires_grad_(False)

    @contextlib.contextmanager
    def copy_of_initial() -> Iterator[torch.nn.Module]:
        yield frozen

    return copy_of_initial


def write_samples(run_dir: Path, step: int, rows: list[dict[str, Any]]) -> None:
    with (run_dir / SAMPLES_FILE).open("a") as f:
        for row in rows:
            f.write(json.dumps({"step": step, **row}) + "\n")
