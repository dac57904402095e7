"""The one loop every method and task shares: accumulate, clip, step, eval, checkpoint, log."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from bigft.config.schema import TrainerConfig
from bigft.distributed import DistEnv
from bigft.distributed.comm import sum_across_ranks
from bigft.distributed.engine import Engine
from bigft.engine.batches import BatchPlan, eval_batches
from bigft.engine.checkpoint import save_checkpoint
from bigft.engine.stop import Preempted, StopRequest
from bigft.errors import TrainingError
from bigft.tasks.base import Task
from bigft.tracking import Tracker

log = logging.getLogger(__name__)


@dataclass
class LoopState:
    """Everything besides tensors that a checkpoint must carry to resume exactly."""

    step: int = 0
    skipped_steps: int = 0
    bad_steps_in_row: int = 0
    tokens_seen: int = 0
    wandb_id: str | None = None
    base_eval: dict[str, float] | None = None
    # task=grpo: the KL controller's state (bigft/rl/loop.py), JSON like the rest.
    rl: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoopState:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Faults:
    """Fault injection for tests of what users meet for real (see `fault_injection` in
    bigft/train.py): a job killed after a step, and steps slow enough for a test to signal a
    job in the middle of its run."""

    crash_after_step: int | None = None
    slow_step_seconds: float = 0.0


@dataclass
class Loop:
    """The pieces the loop drives, built by `bigft.train` in data-flow order."""

    engine: Engine
    task: Task
    train_examples: list[dict]
    eval_examples: list[dict]
    scheduler: torch.optim.lr_scheduler.LRScheduler
    plan: BatchPlan
    total_steps: int
    trainer: TrainerConfig
    # Autocast in the loop (one process, DDP); DeepSpeed casts the model itself.
    autocast_dtype: str
    # Whether checkpoints carry the gathered trainable weights (see engine/checkpoint.py).
    checkpoint_trainable: bool
    env: DistEnv
    run_dir: Path
    tracker: Tracker
    state: LoopState = field(default_factory=LoopState)
    # Signals that ask the run to checkpoint and stop early (Slurm's warning before the end).
    stop: StopRequest | None = None
    # Whether some rank had been asked to stop by the end of the last step (agreed by all).
    stop_agreed: bool = field(default=False, init=False)
    # Whether trainer.save_every_minutes had passed on some rank by then (agreed by all: ranks'
    # clocks differ, and a checkpoint is a collective).
    save_time_agreed: bool = field(default=False, init=False)
    last_save: float = field(default_factory=time.monotonic, init=False)

    # ---- pieces ---------------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.autocast_dtype == "bf16" else torch.float16
        return torch.autocast(self.env.device.type, dtype=dtype)

    def to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {
            k: v.to(self.env.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
        }

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.engine.module.parameters() if p.requires_grad]

    def step_batches(self, step: int) -> list[dict[str, Any]]:
        micro = self.plan.micro_batches(step, self.env.rank)
        return [self.task.collate([self.train_examples[i] for i in ids]) for ids in micro]

    # ---- one optimizer step ---------------------------------------------------------------

    def train_step(self, step: int) -> dict[str, float]:
        """Forward/backward over the accumulation window, then step (or skip a bad update)."""
        self.engine.forward_model.train()
        started = time.perf_counter()
        batches = self.step_batches(step)
        local = {
            "units": sum(int(b["num_units"]) for b in batches),
            "tokens": sum(int(b["num_tokens"]) for b in batches),
        }
        # Every micro-batch's summed loss is divided by the units (tokens, examples, pairs) of
        # the whole global batch, all ranks included, so that micro-batch 1 × accumulation 4 and
        # 2 ranks × 2 give the same update as one micro-batch of 4 in one process.
        totals = sum_across_ranks(local)
        loss = torch.zeros((), device=self.env.device)
        stats: dict[str, float] = {}
        for i, batch in enumerate(batches):
            with self.engine.micro_batch(last=i == len(batches) - 1):
                with self.autocast():
                    out = self.task.loss(self.engine.forward_model, self.to_device(batch))
                scaled = out.loss_sum / max(totals["units"], 1)
                self.engine.backward(scaled)
            loss += scaled.detach().float()
            for key, value in out.stats.items():
                stats[key] = stats.get(key, 0.0) + float(value)
        applied, grad_norm = self.engine.step()
        stats = self.sum_step_stats({**stats, "__loss": float(loss)})
        loss_value = stats.pop("__loss")
        finite = applied and math.isfinite(loss_value)
        if finite:
            self.scheduler.step()
        self.record_step_health(finite, step)
        elapsed = time.perf_counter() - started
        self.state.tokens_seen += int(totals["tokens"])
        metrics = {
            "train/loss": loss_value,
            "train/lr": self.scheduler.get_last_lr()[0],
            "train/grad_norm": grad_norm,
            "train/tokens_per_sec": totals["tokens"] / max(elapsed, 1e-9),
            "train/tokens_seen": float(self.state.tokens_seen),
        }
        metrics.update({f"train/{k}": v for k, v in self.task.summarize(stats).items()})
        return metrics

    def sum_step_stats(self, stats: dict[str, float]) -> dict[str, float]:
        """A step's `stats` summed across ranks, agreeing on the stop and wall-clock flags.

        The flags ride on this reduction: every rank learns at the same step whether any rank
        wants a checkpoint or a stop, without a collective of their own.
        """
        asked = float(self.stop is not None and self.stop.requested)
        flags = {"__stop": asked, "__save": float(self.save_time_due())}
        totals = sum_across_ranks({**stats, **flags})
        self.stop_agreed = totals.pop("__stop") > 0
        self.save_time_agreed = totals.pop("__save") > 0
        return totals

    def record_step_health(self, finite: bool, step: int) -> None:
        if finite:
            self.state.bad_steps_in_row = 0
            return
        self.state.skipped_steps += 1
        self.state.bad_steps_in_row += 1
        log.warning(
            "step %d: non-finite loss or gradient norm; update skipped (%d in a row, %d in all)",
            step + 1,
            self.state.bad_steps_in_row,
            self.state.skipped_steps,
        )
        if self.state.bad_steps_in_row >= self.trainer.max_bad_steps:
            raise TrainingError(
                f"{self.state.bad_steps_in_row} steps in a row had a non-finite loss or gradient "
                f"norm (last at step {step + 1}); stopping. The last good checkpoint is kept. "
                "Try a lower optim.lr, optim.max_grad_norm, or trainer.precision=bf16-mixed "
                "instead of fp16"
            )

    # ---- evaluation and checkpoints -------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Metrics over the whole eval set, each rank evaluating its share (see eval_batches).

        Generation under ZeRO-3 is the exception: a completion stops at its own EOS, so ranks
        generating different prompts would run different numbers of forwards, and every forward
        gathers parameter shards from all ranks. There, every rank evaluates every example, in
        lockstep (identical inputs keep them so).
        """
        if not self.eval_examples:
            return {}
        model = self.engine.module
        model.eval()
        shares = eval_batches(
            len(self.eval_examples),
            self.trainer.eval_batch_size,
            self.env.rank,
            self.env.world_size,
            replicate=self.engine.shards_parameters and self.task.generates_in_eval,
        )
        stats: dict[str, float] = {}
        for indices, counted in shares:
            batch = self.task.collate([self.eval_examples[i] for i in indices])
            with self.autocast():
                batch_stats = self.task.eval_stats(model, self.to_device(batch))
            for key, value in batch_stats.items():
                stats[key] = stats.get(key, 0.0) + (float(value) if counted else 0.0)
        model.train()
        # Every rank holds the same keys (each ran at least one batch); sorted, so in one order.
        stats = sum_across_ranks(dict(sorted(stats.items())))
        return {f"eval/{k}": v for k, v in self.task.summarize(stats).items()}

    def weights_are_finite(self) -> bool:
        # Each rank checks what it holds (its shard under ZeRO-3); all must agree.
        local_bad = sum(not bool(torch.isfinite(p).all()) for p in self.trainable_parameters())
        return sum_across_ranks({"bad": float(local_bad)})["bad"] == 0

    def save_extra(self, path: Path) -> None:
        """Files of a task's own in the checkpoint being written (ppo: a separate value model)."""

    def checkpoint(self) -> None:
        # Never replace a good checkpoint with weights that have already gone non-finite.
        if not self.weights_are_finite():
            log.warning("step %d: weights are not finite; checkpoint not written", self.state.step)
            return
        path = save_checkpoint(
            self.run_dir,
            step=self.state.step,
            engine=self.engine,
            scheduler=self.scheduler,
            state=self.state.to_dict(),
            keep_last=self.trainer.keep_last,
            env=self.env,
            with_trainable=self.checkpoint_trainable,
            save_extra=self.save_extra,
        )
        self.last_save = time.monotonic()
        if self.env.is_main:
            log.info("checkpoint: %s", path)

    def due(self, every: int) -> bool:
        return every > 0 and self.state.step % every == 0 and self.state.step < self.total_steps

    def save_time_due(self) -> bool:
        minutes = self.trainer.save_every_minutes
        return minutes > 0 and time.monotonic() - self.last_save >= 60 * minutes

    # ---- the loop -------------------------------------------------------------------------

    def run(self, faults: Faults | None = None) -> dict[str, float]:
        """Train from `state.step` to `total_steps`; returns the final eval (or train) metrics."""
        faults = faults or Faults()
        if self.trainer.eval_at_start and self.state.base_eval is None:
            self.state.base_eval = self.evaluate()
            self.tracker.log(self.state.base_eval, step=0)
        bar = tqdm(
            total=self.total_steps,
            initial=self.state.step,
            desc="train",
            disable=not (self.trainer.progress_bar and self.env.is_main),
            dynamic_ncols=True,
        )
        last: dict[str, float] = {}
        while self.state.step < self.total_steps:
            last = self.train_step(self.state.step)
            self.state.step += 1
            bar.update(1)
            bar.set_postfix(
                loss=f"{last['train/loss']:.4f}",
                lr=f"{last['train/lr']:.2e}",
                tok_s=f"{last['train/tokens_per_sec']:.0f}",
            )
            if self.state.step % self.trainer.log_every == 0:
                self.tracker.log(last, step=self.state.step)
            if self.due(self.trainer.eval_every):
                self.tracker.log(self.evaluate(), step=self.state.step)
            saved = self.due(self.trainer.save_every) or (
                self.save_time_agreed and self.state.step < self.total_steps
            )
            if saved:
                self.checkpoint()
            if self.stop_agreed and self.state.step < self.total_steps:
                bar.close()
                if not saved:
                    self.checkpoint()
                raise Preempted(self.state.step, self.stop.signal_name)
            if faults.slow_step_seconds:
                time.sleep(faults.slow_step_seconds)
            if faults.crash_after_step == self.state.step:
                raise RuntimeError(f"simulated crash after step {self.state.step}")
        bar.close()
        final = self.evaluate()
        if final:
            self.tracker.log(final, step=self.state.step)
        self.checkpoint()
        return {**last, **final}
