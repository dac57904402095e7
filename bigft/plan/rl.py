"""task=grpo/ppo's memory beyond the training step: the rollout phase, planned per GPU.

While a rank generates, it holds the policy (gathered whole under ZeRO-3: bigft gathers it once
per rollout phase, not once per token), its trainable state, a frozen reference copy under full
fine-tuning (under ZeRO-3 a second sharded model, 1/N of its weights per GPU; lora/qlora use the
policy with adapters disabled: nothing extra), and the KV cache of its whole rollout batch
(micro_batch × grad_accum × num_generations rows of up to task.max_length tokens). A reward
model (reward.model) adds its own weights, which the plan cannot size from the policy's shape:
it says so. ppo's value model is part of the step
(bigft/plan/estimate.py): under lora/qlora an adapter and head (trainable state, a second
forward's activations); under full/freeze a separate model (the policy's decoder and a scalar
head, with its gradients and optimizer state), so full ppo holds four models: policy, value,
reference and the reward model.
"""

from __future__ import annotations

from dataclasses import dataclass

from bigft.plan.estimate import DTYPE_BYTES, Breakdown
from bigft.plan.setup import Setup
from bigft.plan.shape import ModelShape


@dataclass(frozen=True)
class RolloutMemory:
    kv_cache: float
    gathered: float  # ZeRO-3: the rest of the policy, gathered for generation
    reference: float  # full fine-tuning: the frozen initial copy

    def peak(self, b: Breakdown) -> float:
        return (
            b.weights + b.trainable + b.optimizer + self.kv_cache + self.gathered + self.reference
        )


def rollout_memory(shape: ModelShape, s: Setup) -> RolloutMemory | None:
    if s.rollout_rows == 0:
        return None
    width = DTYPE_BYTES.get(s.model_dtype, 2)
    head_dim = shape.hidden // shape.heads
    kv = 2 * shape.layers * shape.kv_heads * head_dim * s.rollout_rows * s.seq_len * width
    whole = shape.total_params * width
    gathered = whole * (1 - 1 / s.world_size) if s.zero_stage >= 3 else 0.0
    reference = 0.0
    if s.method in ("full", "freeze") and s.rollout_reference_copy:
        reference = reference_bytes(whole, s)
    return RolloutMemory(float(kv), float(gathered), float(reference))


def reference_bytes(whole: float, s: Setup) -> float:
    """Per GPU: the whole frozen copy, or under ZeRO-3 its shard (a second model partitioned
    like the policy, gathered a layer at a time for its forwards; in CPU memory when the
    parameters are offloaded)."""
    if s.zero_stage < 3:
        return whole
    return 0.0 if s.offload_params else whole / s.world_size


def rollout_line(m: RolloutMemory | None, s: Setup, gib: float) -> list[str]:
    if m is None:
        return []
    ref = _reference_words(m, s, gib)
    gathered = f", policy gathered for generation {m.gathered / gib:.2f} GiB" if m.gathered else ""
    if s.value_adapter:
        ref += "; value model: a second adapter and head on the same base (in the step)"
    if s.value_model:
        ref += "; value model: a separate copy with its optimizer (in the step)"
    return [
        f"  rollout    {s.rollout_rows} responses per GPU: KV cache {m.kv_cache / gib:.2f} GiB"
        f"{gathered}, {ref}; a reward.model's weights come on top"
    ]


def _reference_words(m: RolloutMemory, s: Setup, gib: float) -> str:
    if s.method in ("lora", "qlora"):
        return "reference: adapters disabled (no copy)"
    if not s.rollout_reference_copy:
        return "no reference (task.kl_coef=0)"
    if s.zero_stage < 3:
        return f"a frozen reference copy {m.reference / gib:.2f} GiB"
    if s.offload_params:
        return "a frozen reference copy, sharded by ZeRO-3 and offloaded to the CPU"
    return (
        f"a frozen reference copy {m.reference / gib:.2f} GiB (its 1/{s.world_size} ZeRO-3 shard)"
    )
