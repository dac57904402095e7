"""bigft-plan: will a training config fit in GPU memory? Estimates, a step tracer, advice.

`check_fits(cfg)` is the cheap analytic check (no weights, no data, no GPU) that `bigft-plan`
prints and the Slurm launcher runs before submitting; `bigft.plan.trace` traces the real step on
fake tensors for the memory benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bigft.plan.advice import RESERVED_GIB, Change, suggestions, usable_bytes
from bigft.plan.estimate import (
    COMPONENTS,
    DTYPE_BYTES,
    GIB,
    Breakdown,
    estimate,
    param_counts,
)
from bigft.plan.rl import RolloutMemory, rollout_line, rollout_memory
from bigft.plan.setup import Setup, setup_from_config
from bigft.plan.shape import ModelShape, model_shape


def _sequences(s: Setup) -> str:
    """' rankings of 4 responses (8 sequences)' for a reward model's micro-batch of 2, ' pairs
    (4 sequences)' for dpo's, ' prompts of 4 responses (8 sequences)' for grpo's; nothing for
    one sequence per example."""
    if s.sequences_per_example == 1:
        return ""
    k, b = s.sequences_per_example, s.micro_batch
    unit = s.example_unit if b == 1 else f"{s.example_unit}s"
    # A pair's two sides go without saying; a ranking's or a prompt's K responses do not.
    of = "" if s.example_unit == "pair" else f" of {k} responses"
    text = f" {unit}{of} ({b * k} sequences"
    if s.sequences_assumed:
        text += "; set task.max_responses for longer rankings"
    return text + ")"


def reference_pass_bytes(shape: ModelShape, s: Setup, b: Breakdown) -> float | None:
    """Per-GPU bytes while an explicit dpo reference is loaded for its pass before training:
    the policy's weights and optimizer state already exist, the reference's weights (assumed
    the policy's shape, in model.dtype, whole on every GPU) join them. None: no second model."""
    if s.reference in (None, "adapters", "precompute"):
        return None
    return b.weights + b.trainable + b.optimizer + shape.total_params * DTYPE_BYTES[s.model_dtype]


def _reference_line(s: Setup, transient: float | None) -> list[str]:
    if s.reference is None:
        return []
    if s.reference == "adapters":
        what = "the policy with adapters disabled (one no-grad forward per micro-batch)"
    elif s.reference == "precompute":
        what = "precomputed: one no-grad pass over the pairs before training"
    else:
        what = (
            f"{s.reference}, loaded for a pass before training, then freed: "
            f"{(transient or 0) / GIB:.1f} GiB per GPU meanwhile"
        )
    return [f"  reference  {what}; no second model while training"]


@dataclass
class Plan:
    name: str
    shape: ModelShape
    setup: Setup
    breakdown: Breakdown
    suggestions: list[tuple[Change, Breakdown]] = field(default_factory=list)

    @property
    def reference_pass(self) -> float | None:
        return reference_pass_bytes(self.shape, self.setup, self.breakdown)

    @property
    def rollout(self) -> RolloutMemory | None:
        return rollout_memory(self.shape, self.setup)

    @property
    def peak(self) -> float:
        """Per-GPU bytes at the run's highest moment: the step, an explicit dpo reference's
        pass before training, or an RL rollout phase."""
        rollout = self.rollout.peak(self.breakdown) if self.rollout else 0.0
        return max(self.breakdown.total, self.reference_pass or 0.0, rollout)

    @property
    def fits(self) -> bool:
        return self.peak <= usable_bytes(self.setup)

    def render(self) -> str:
        """The text bigft-plan prints (and the Slurm launcher shows when it refuses a job)."""
        return "\n".join([*self._header(), "", *self._table(), "", *self._verdict()])

    def _header(self) -> list[str]:
        s, counts = self.setup, param_counts(self.shape, self.setup)
        mode = f"ZeRO-{s.zero_stage}" if s.zero_stage else ("DDP" if s.world_size > 1 else "single")
        if s.offload_optimizer:
            mode += " + optimizer offload"
        return [
            f"bigft-plan: {self.name}",
            f"  model      {self.shape.model_type}, {counts.total / 1e9:.2f} B parameters "
            f"({counts.trainable / 1e9:.3g} B trainable, method={s.method})",
            f"  step       micro-batch {s.micro_batch}{_sequences(s)} × {s.seq_len} tokens, "
            f"accumulation {s.grad_accum}, checkpointing {'on' if s.checkpointing else 'off'}, "
            f"optim={s.optimizer}, precision {s.precision} (model.dtype {s.model_dtype})"
            + (f", adapters {s.adapter_dtype}" if s.adapter_dtype else "")
            + (f", bf16 updates {s.bf16_update}" if s.bf16_update != "none" else ""),
            f"  GPUs       {s.nodes} node(s) × {s.ranks_per_node} = {s.world_size}, {mode}, "
            f"{s.gpu_memory_gib:g} GiB each",
            *_reference_line(s, self.reference_pass),
            *rollout_line(self.rollout, s, GIB),
        ]

    def _table(self) -> list[str]:
        b = self.breakdown
        lines = [f"  per-GPU memory at the step's peak ({b.moment}), GiB:"]
        for name in COMPONENTS:
            lines.append(f"    {name:<12} {getattr(b, name) / GIB:9.2f}")
        lines.append(f"    {'total':<12} {b.total / GIB:9.2f}")
        return lines

    def _verdict(self) -> list[str]:
        usable = usable_bytes(self.setup) / GIB
        total = self.breakdown.total / GIB
        if self.fits:
            # The run's peak, not the step's: a rollout phase or a reference pass may be higher.
            peak = self.peak / GIB
            return [
                f"FITS: {peak:.1f} GiB of {usable:.1f} GiB usable per GPU "
                f"({self.setup.gpu_memory_gib:g} GiB less {RESERVED_GIB:g} GiB for the CUDA "
                f"context); {usable - peak:.1f} GiB to spare."
            ]
        if self.rollout and self.breakdown.total <= usable_bytes(self.setup):
            during = self.rollout.peak(self.breakdown) / GIB
            if during > usable_bytes(self.setup) / GIB:
                return [
                    f"DOES NOT FIT: the step needs {total:.1f} GiB, but the rollout phase needs "
                    f"{during:.1f} GiB of {usable:.1f} GiB usable per GPU. Lower "
                    "trainer.micro_batch_size, task.num_generations or task.max_length."
                ]
        if self.breakdown.total <= usable_bytes(self.setup):
            during = (self.reference_pass or 0.0) / GIB
            return [
                f"DOES NOT FIT: the step needs {total:.1f} GiB, but loading task.reference beside "
                f"the policy before training needs {during:.1f} GiB, of {usable:.1f} GiB usable "
                "per GPU. Start the policy from the reference (model.path) with "
                "task.reference=auto, or use larger GPUs."
            ]
        lines = [f"DOES NOT FIT: {total:.1f} GiB needed, {usable:.1f} GiB usable per GPU."]
        if not self.suggestions:
            lines.append("No change bigft knows of makes it fit: use more or larger GPUs.")
            return lines
        lines.append("Cheapest changes that fit:")
        for change, after in self.suggestions:
            lines.append(f"  - {change.what}: {after.total / GIB:.1f} GiB")
            lines.append(f"      {' '.join(change.overrides)}")
        return lines


def plan_config(cfg: Any) -> Plan:
    """The analytic plan of a composed bigft config."""
    shape = model_shape(cfg.model)
    setup = setup_from_config(cfg)
    plan = Plan(str(cfg.get("name", "run")), shape, setup, estimate(shape, setup))
    if not plan.fits:
        plan.suggestions = suggestions(shape, setup)
    return plan


def check_fits(cfg: Any) -> Plan:
    """Plan a run before launching it: analytic only (well under a second once transformers is
    imported), reads neither weights nor data; raises ConfigError when the model's shape cannot
    be known (a hub id without model.shape). `plan.fits`, `plan.render()`."""
    return plan_config(cfg)


__all__ = ["Breakdown", "Plan", "check_fits", "estimate", "plan_config"]
