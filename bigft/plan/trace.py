"""Trace bigft's real training step on fake tensors: the peak memory, without allocating it.

The model is built from its HF config under torch's FakeTensorMode (tensors carry shape, dtype
and device, no storage), then bigft's own code runs on it: gradient checkpointing
(`enable_gradient_checkpointing`), the method (`apply_method`: peft LoRA, freeze, ...), the
optimizer (`build_optimizer`), the loss (`causal_loss_sum`, as task=lm/sft computes it), autocast
as the loop applies it, gradient clipping and the optimizer step, twice, so that the second step
runs with optimizer state alive, as every step after the first does. torch's MemTracker counts
every storage the step allocates and frees, by kind.

Substitutions, and why the figure holds:
- 4-bit bases: see bigft.plan.nf4 (bitsandbytes' own quantization, layer and matmul; only the
  Tensor subclass holding the packed bytes is a plain Parameter).
- The engine's step is PlainEngine.step without its `float(norm)` (a host sync a fake tensor
  cannot answer): the same clip, step and zero_grad calls.
- torch's AdamW runs as bigft builds it, fused (one kernel per parameter group) on a CPU as on
  a GPU; a torch optimizer left to choose (SGD) runs `foreach`, as it does by default on a GPU.
- Paged optimizers: bitsandbytes allocates CPU-backed pages only on a GPU; here their state is
  ordinary memory of the same size, which is what a GPU holds while nothing is paged out.
- DeepSpeed (ZeRO) cannot run on fake tensors; those rows are estimated and cross-checked
  against DeepSpeed's own estimator in benchmarks/memory.py, not traced.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import torch

from bigft.config.precision import autocast_dtype, bf16_update_of, load_dtype, precision_of
from bigft.errors import ConfigError
from bigft.plan.estimate import Breakdown
from bigft.plan.setup import setup_from_config
from bigft.plan.shape import hf_config_dict


@dataclass
class TraceResult:
    breakdown: Breakdown  # at the peak
    peak_by_phase: dict[str, int]  # forward / backward / optimizer step of the traced steps
    seconds: float


def _tracker_class() -> type:
    from torch.distributed._tools.mem_tracker import _TOTAL_KEY, MemTracker

    class PeakTracker(MemTracker):
        """MemTracker keeping the step's overall peak and the peak of each phase only.

        Its per-module peaks cost a pass over every module at every operator, which makes an
        80-block trace take minutes; the overall peak is all a memory plan needs.
        """

        phase = "setup"
        phase_peaks: dict[str, int]

        def _update_peak_stats(self, peak_state: Any) -> None:
            for dev, snap in self._curr_mem_snap.items():
                total = snap[_TOTAL_KEY]
                peaks = self.__dict__.setdefault("phase_peaks", {})
                peaks[self.phase] = max(peaks.get(self.phase, 0), total)
                if self._peak_mem.get(dev, 0) < total:
                    self._peak_mem[dev] = total
                    self._peak_mem_snap[dev] = {**snap, "phase": self.phase}

    return PeakTracker


class _NoHook:
    def remove(self) -> None:
        pass


def _skip_frozen_grad_hooks(tracker: Any, model: torch.nn.Module) -> None:
    # MemTracker hooks every parameter's gradient and fails on frozen ones (register_hook
    # refuses a tensor that does not require grad); they never get a gradient to count.
    for param in model.parameters():
        if not param.requires_grad:
            tracker._param_to_grad_hook_handles[param] = (_NoHook(), _NoHook())


@contextlib.contextmanager
def _convert_fake_parameters_in_place():
    """Let `module.to(...)` convert fake parameters by `.data =` instead of swapping them.

    nn.Module._apply swaps every fake parameter for its converted copy, and the swap fails
    because the fake mode keeps a weak reference to each fake tensor. peft converts each new
    adapter to its base layer's device and dtype this way; `.data =` is what _apply does for
    ordinary tensors, with the same result (same dtype, shape and device; same storage bytes).
    """
    swap = torch.utils.swap_tensors

    def set_data(t1: torch.Tensor, t2: torch.Tensor) -> None:
        with torch.no_grad():
            t1.data = t2.data

    torch.utils.swap_tensors = set_data
    try:
        yield
    finally:
        torch.utils.swap_tensors = swap


def build_fake_model(cfg: Any) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """The model as bigft's load_model + apply_method leave it; call under FakeTensorMode.

    Returns the model and tensors that are neither parameters nor buffers (4-bit state).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from bigft.engine.precision import apply_precision
    from bigft.methods import apply_method
    from bigft.models.load import enable_gradient_checkpointing, torch_dtype
    from bigft.plan.nf4 import quantize_linear_layers

    keys = hf_config_dict(cfg.model)
    config = AutoConfig.for_model(keys.pop("model_type"), **keys)
    precision = precision_of(cfg)
    dtype = load_dtype(precision, cfg.model.dtype, cfg.method.name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype(dtype))
    extra: list[torch.Tensor] = []
    if str(cfg.method.name) == "qlora":
        if int(cfg.method.bits) != 4:
            raise ConfigError("the tracer handles 4-bit QLoRA bases only (method.bits=4)")
        extra = quantize_linear_layers(model, cfg.method)
        model.is_loaded_in_4bit = True  # what transformers sets; peft reads it
    if cfg.model.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    with _convert_fake_parameters_in_place():
        model = apply_method(model, cfg.method, "causal_lm")
    apply_precision(model, cfg, precision, deepspeed=False, announce=False)
    return model, extra


def _batch(cfg: Any, vocab: int) -> dict[str, torch.Tensor]:
    b, s = int(cfg.trainer.micro_batch_size), int(cfg.task.max_length)
    ids = torch.randint(0, vocab, (b, s))
    return {"input_ids": ids, "attention_mask": torch.ones(b, s, dtype=torch.long), "labels": ids}


def _foreach(optimizer: torch.optim.Optimizer) -> None:
    for group in optimizer.param_groups:
        if "foreach" in group and group["foreach"] is None:
            group["foreach"] = True


def _autocast(cfg: Any) -> contextlib.AbstractContextManager:
    mode = autocast_dtype(precision_of(cfg))
    if mode == "none":
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=torch.bfloat16 if mode == "bf16" else torch.float16)


def trace_step(cfg: Any, steps: int = 2, *, gpu_optimizer: bool = True) -> TraceResult:
    """Trace `steps` optimizer steps of micro-batch × max_length tokens (one process).

    gpu_optimizer: run torch's optimizers as they run on a GPU (foreach); False traces the
    tensor-by-tensor loop they use on a CPU, to compare with a step measured on this CPU.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    from bigft.engine.optim import build_optimizer
    from bigft.tasks.lm import causal_loss_sum

    setup = setup_from_config(cfg)
    if setup.deepspeed or setup.world_size > 1:
        raise ConfigError("the tracer traces one process without DeepSpeed (distributed=single)")
    started = time.perf_counter()
    # One real input is allowed: bitsandbytes' 256-entry code table (see bigft.plan.nf4).
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        model, extra = build_fake_model(cfg)
        batch = _batch(cfg, model.get_input_embeddings().num_embeddings)
    update = bf16_update_of(precision_of(cfg), cfg.optim.bf16_update, cfg.optim.name)
    optimizer = build_optimizer(model, cfg.optim, bf16_update=update)
    if gpu_optimizer:
        _foreach(optimizer)
    tracker = _tracker_class()()
    _skip_frozen_grad_hooks(tracker, model)
    tracker.track_external(model, optimizer, *extra, *batch.values())
    trainable = [p for p in model.parameters() if p.requires_grad]
    max_norm = float(cfg.optim.max_grad_norm or float("inf"))
    with mode, tracker:
        for _ in range(steps):
            # Two micro-batches stand for any accumulation window: from the second on, the
            # gradients of the earlier ones are alive through forward and backward.
            for _ in range(min(int(cfg.trainer.grad_accum), 2)):
                tracker.reset_mod_stats()  # per-module stats are per forward; the peak stays
                tracker.phase = "forward"
                with _autocast(cfg):
                    # Every position but each row's last has a target here, so projecting them
                    # all traces what bigft's target-only projection allocates, to one row.
                    loss = causal_loss_sum(model, batch, only_targets=False)
                    loss = loss / batch["labels"].numel()
                tracker.phase = "backward"
                loss.backward()
                del loss
            tracker.phase = "optimizer step"
            torch.nn.utils.clip_grad_norm_(trainable, max_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return TraceResult(
        _breakdown(tracker, trainable), dict(tracker.phase_peaks), time.perf_counter() - started
    )


def _breakdown(tracker: Any, trainable: list[torch.Tensor]) -> Breakdown:
    (snap,) = tracker.get_tracker_snapshot("peak").values()
    kinds = {str(getattr(k, "value", k)): v for k, v in snap.items()}
    # Parameters are constant through the step: split them by whether they train.
    trained = sum(_storage_bytes(p) for p in trainable)
    return Breakdown(
        weights=kinds["Parameter"] - trained + kinds["Buffer"] + kinds["Other"],
        trainable=trained,
        gradients=kinds["Gradient"],
        optimizer=kinds["Optstate"],
        activations=kinds["Activation"],
        temporaries=kinds["Temp"],
        moment=str(kinds["phase"]),
    )


def _storage_bytes(t: torch.Tensor) -> int:
    # MemTracker rounds every storage up to the CUDA allocator's 512-byte granule; so do we.
    size = t.untyped_storage().nbytes()
    return -(-size // 512) * 512
