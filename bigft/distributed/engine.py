"""The training engine: plain PyTorch (one process or DDP) or DeepSpeed ZeRO, behind one interface.

The loop calls, per optimizer step: for each micro-batch `with engine.micro_batch(last):` forward
and `engine.backward(loss)`; then `engine.step()`. Everything parallel lives here.

Loss scaling: the loop hands every rank `loss_sum_r / units_of_the_global_batch`; the sum of
those gradients over ranks is the gradient of the global mean. DDP and DeepSpeed *average*
gradients over ranks, so `backward` multiplies by the world size first, and DeepSpeed is told
not to divide by the accumulation steps again.
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import Any

import torch

from bigft.distributed.env import DistEnv
from bigft.methods.params import count_parameters, trainable_state_dict

log = logging.getLogger(__name__)

DEEPSPEED_TAG = "deepspeed"  # a checkpoint's ZeRO shards, as DeepSpeed writes them
UNIVERSAL_TAG = "universal"  # the same state per parameter, for another world size (universal.py)


class PlainEngine:
    """One process, or DistributedDataParallel over the process group."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        env: DistEnv,
        max_grad_norm: float | None,
    ) -> None:
        self.module = model
        self.optimizer = optimizer
        self.env = env
        self.max_grad_norm = max_grad_norm
        self.forward_model: torch.nn.Module = model
        if env.distributed:
            device_ids = [env.device.index] if env.device.type == "cuda" else None
            self.forward_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=device_ids
            )
        self.shards_optimizer = False
        self.shards_parameters = False

    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager:
        # Only the last micro-batch of a window all-reduces gradients; the others accumulate
        # locally (no_sync must cover the forward too: DDP arms its hooks there).
        if self.env.distributed and not last:
            return self.forward_model.no_sync()
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        (loss * self.env.world_size).backward()

    def step(self) -> tuple[bool, float]:
        """Clip and step; a non-finite gradient norm skips the update. (applied, grad norm)"""
        params = [p for p in self.module.parameters() if p.requires_grad]
        # With no clipping configured the norm is still computed: it is logged, and a
        # non-finite norm is how an overflow is caught before it reaches the weights.
        max_norm = self.max_grad_norm if self.max_grad_norm else float("inf")
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        applied = math.isfinite(norm)
        if applied:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return applied, norm

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return trainable_state_dict(self.module)

    def consolidated_state(self) -> dict[str, torch.Tensor] | None:
        return None  # the module itself holds every weight

    def save_sharded(self, path: Path) -> None:
        if self.env.is_main:
            torch.save(self.optimizer.state_dict(), path / "optimizer.pt")

    def load_sharded(self, path: Path) -> None:
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))


class DeepSpeedEngine:
    """DeepSpeed ZeRO-1/2/3 (with offload) around the model and bigft's optimizer."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        env: DistEnv,
        ds_config: dict[str, Any],
    ) -> None:
        import deepspeed

        from bigft.distributed.deepspeed_config import zero_stage

        self.env = env
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=ds_config
        )
        self.module = self.engine.module
        self.forward_model = self.engine
        self.stage = zero_stage(ds_config)
        self.shards_optimizer = self.stage >= 1
        self.shards_parameters = self.stage >= 3

    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # DeepSpeed knows the accumulation boundary itself

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss * self.env.world_size, scale_wrt_gas=False)
        # DeepSpeed counts micro-batches in step(): it only updates at the window's end.
        self.engine.step()

    def step(self) -> tuple[bool, float]:
        # DeepSpeed skips an update whose gradient norm is not finite (its "overflow").
        applied = bool(self.engine.was_step_applied())
        norm = self.engine.get_global_grad_norm()
        norm = float(norm) if norm is not None else float("nan")
        return applied and math.isfinite(norm), norm

    def _gathered(self, params: list[torch.nn.Parameter]) -> contextlib.AbstractContextManager:
        import deepspeed

        if not self.shards_parameters:
            return contextlib.nullcontext()
        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Every rank takes part (ZeRO-3 gathers the shards); the full weights on every rank."""
        named = [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]
        with self._gathered([p for _, p in named]):
            return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in named}

    def consolidated_state(self) -> dict[str, torch.Tensor] | None:
        """The whole model's weights on rank 0 (collective under ZeRO-3; None elsewhere)."""
        if not self.shards_parameters:
            return None
        return self.engine._zero3_consolidated_16bit_state_dict()

    def save_sharded(self, path: Path) -> None:
        # Every rank writes its own shard of parameters and optimizer state.
        self.engine.save_checkpoint(str(path), tag=DEEPSPEED_TAG, save_latest=False)

    def load_sharded(self, path: Path) -> None:
        # A config with checkpoint.load_universal reads the per-parameter form (any world size).
        universal = self.engine.load_universal_checkpoint()
        loaded, _ = self.engine.load_checkpoint(
            str(path),
            tag=UNIVERSAL_TAG if universal else DEEPSPEED_TAG,
            load_optimizer_states=True,
            load_lr_scheduler_states=False,
        )
        if loaded is None:
            raise RuntimeError(f"DeepSpeed could not load its checkpoint from {path}")


Engine = PlainEngine | DeepSpeedEngine


def build_engine(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    env: DistEnv,
    *,
    ds_config: dict[str, Any] | None,
    max_grad_norm: float | None,
) -> Engine:
    if ds_config is not None:
        return DeepSpeedEngine(model, optimizer, env, ds_config)
    return PlainEngine(model, optimizer, env, max_grad_norm)


def frozen_sharded(model: torch.nn.Module, ds_config: dict[str, Any]) -> Any:
    """A DeepSpeed engine around `model` (built partitioned, under ZeRO-3), frozen, with no
    optimizer: its module's forward gathers each layer's shards from all ranks and frees them
    after, like the policy's. Keep the engine: when it is collected it removes those hooks.

    Collective: every rank calls it, and every rank must then run the same forwards."""
    import deepspeed

    model.eval().requires_grad_(False)
    engine, _, _, _ = deepspeed.initialize(model=model, config=inference_config(ds_config))
    engine.module.eval()
    return engine


def inference_config(ds_config: dict[str, Any]) -> dict[str, Any]:
    """The run's DeepSpeed config (same stage, precision and parameter offload) without what
    only a trained model needs: no optimizer, scheduler or optimizer-state offload."""
    config = {k: v for k, v in ds_config.items() if k not in ("optimizer", "scheduler")}
    zero = dict(config.get("zero_optimization") or {})
    zero.pop("offload_optimizer", None)
    config["zero_optimization"] = zero
    return config


def weights_held_here(model: torch.nn.Module) -> int:
    """How many of `model`'s weights this rank holds: its partitions under ZeRO-3."""
    return sum(getattr(p, "ds_tensor", p).numel() for p in model.parameters())


def shard_held_here(model: torch.nn.Module) -> str:
    """ "<held> of its <total> weights on this rank", for a ZeRO-3 model's start-up log line."""
    _, total = count_parameters(model)
    return f"{weights_held_here(model)} of its {total} weights on this rank"
