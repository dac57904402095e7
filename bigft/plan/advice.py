"""The cheapest changes that make a step fit: each one a set of command-line overrides.

Changes are tried in order of what they cost a run: first the ones that keep the numerics and
the global batch (smaller micro-batches with more accumulation, checkpointing), then those that
add communication (ZeRO stages), then ones that change numerics (8-bit optimizer state, a 4-bit
base) or run far slower (CPU offload), and last more GPUs. When no single change fits, changes
are combined in that order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from bigft.plan.estimate import Breakdown, estimate
from bigft.plan.setup import Setup
from bigft.plan.shape import ModelShape

# GPU memory torch cannot allocate: the CUDA context, cuBLAS and NCCL workspaces.
RESERVED_GIB = 1.0


@dataclass(frozen=True)
class Change:
    what: str  # the change in words, with its cost
    overrides: tuple[str, ...]
    setup: Setup


def usable_bytes(s: Setup) -> float:
    return (s.gpu_memory_gib - RESERVED_GIB) * 2**30


def fits(shape: ModelShape, s: Setup) -> bool:
    return estimate(shape, s).total <= usable_bytes(s)


def _micro_batch(s: Setup) -> Change | None:
    if s.micro_batch == 1:
        return None
    global_batch = s.micro_batch * s.grad_accum
    mb = 1
    accum = global_batch // mb
    return Change(
        f"micro-batch {s.micro_batch} → {mb}, accumulation {s.grad_accum} → {accum} "
        "(same global batch, fewer tokens per forward)",
        (f"trainer.micro_batch_size={mb}", f"trainer.grad_accum={accum}"),
        s.replace(micro_batch=mb, grad_accum=accum),
    )


def _checkpointing(s: Setup) -> Change | None:
    if s.checkpointing or s.method == "prefix":
        return None
    return Change(
        "activation checkpointing (about a third more compute)",
        ("model.gradient_checkpointing=true",),
        s.replace(checkpointing=True),
    )


def _zero(s: Setup) -> Change | None:
    if s.world_size == 1 or s.zero_stage == 3 or (s.method == "qlora" and s.zero_stage > 0):
        return None
    overrides = ["distributed=zero3"]
    if s.method == "qlora":  # ZeRO-3 shards the 4-bit base only in the compute dtype
        overrides += [f"method.quant_storage={s.compute_dtype}", f"model.dtype={s.compute_dtype}"]
    changes = {} if s.method == "qlora" else _deepspeed_precision(s, overrides)
    return Change(
        f"ZeRO-3 over the {s.world_size} GPUs (parameters, gradients and optimizer state "
        "sharded; more communication)",
        tuple(overrides),
        s.replace(zero_stage=3, offload_optimizer=False, **changes),
    )


def _deepspeed_precision(s: Setup, overrides: list[str]) -> dict[str, str]:
    """ZeRO stages are planned in DeepSpeed's bf16 mode (16-bit module, fp32 masters in the
    optimizer), where they save memory; bigft refuses bf16-true under DeepSpeed."""
    if s.mixed:
        return {}
    overrides.append("trainer.precision=bf16-mixed")
    if s.bf16_update != "none":
        overrides.append("optim.bf16_update=auto")
    return {"precision": "bf16-mixed", "bf16_update": "none"}


def _optimizer_8bit(s: Setup) -> Change | None:
    if s.optimizer in ("adamw_8bit", "paged_adamw_8bit", "sgd") or s.bf16_update != "none":
        return None  # bitsandbytes' optimizers would drop the bf16 update rule (bf16-true)
    name = "paged_adamw_8bit" if s.optimizer == "paged_adamw" else "adamw_8bit"
    return Change(
        "8-bit optimizer state (bitsandbytes; slightly different numerics)",
        (f"optim={name}",),
        s.replace(optimizer=name),
    )


def _adapters_bf16(s: Setup) -> Change | None:
    if s.method not in ("lora", "qlora") or s.adapter_dtype or s.deepspeed:
        return None
    overrides = ["method.adapter_dtype=bf16"]
    precision = s.precision
    if not s.mixed:  # bf16 adapters train under bf16 autocast (config validation)
        precision = "bf16-mixed"
        overrides.append("trainer.precision=bf16-mixed")
    return Change(
        "bf16 adapters, as the QLoRA paper ran them (updates rounded to bf16)",
        tuple(overrides),
        s.replace(adapter_dtype="bf16", precision=precision),
    )


def _four_bit(s: Setup) -> Change | None:
    if s.method != "lora" or s.deepspeed:
        return None
    return Change(
        "a 4-bit NF4 base under the same adapters (QLoRA)",
        ("method=qlora", f"method.r={s.lora_r}"),
        s.replace(method="qlora"),
    )


def _offload(s: Setup) -> Change | None:
    if s.offload_optimizer or s.method == "qlora":
        return None
    overrides = ["distributed=zero3_offload"]
    changes = _deepspeed_precision(s, overrides)
    return Change(
        "ZeRO-3 with the optimizer on the CPU (several times slower per step)",
        tuple(overrides),
        s.replace(zero_stage=3, offload_optimizer=True, **changes),
    )


def _more_nodes(s: Setup) -> Change | None:
    if s.zero_stage != 3:
        return None
    return Change(
        f"twice the nodes ({s.nodes} → {2 * s.nodes}) under ZeRO-3",
        (f"launcher.nodes={2 * s.nodes}",),
        s.replace(nodes=2 * s.nodes),
    )


CHANGES: tuple[Callable[[Setup], Change | None], ...] = (
    _micro_batch,
    _checkpointing,
    _zero,
    _optimizer_8bit,
    _adapters_bf16,
    _four_bit,
    _offload,
    _more_nodes,
)


def _single_changes(s: Setup) -> Iterator[Change]:
    for make in CHANGES:
        change = make(s)
        if change is not None:
            yield change


def _combined(shape: ModelShape, s: Setup) -> Change | None:
    """Changes applied one after another, in cost order, until the step fits."""
    whats: list[str] = []
    overrides: dict[str, str] = {}
    current = s
    for _ in range(12):
        step = next(_single_changes(current), None)
        if step is None:
            return None
        whats.append(step.what)
        overrides.update(o.split("=", 1) for o in step.overrides)  # later values win
        current = step.setup
        if fits(shape, current):
            pairs = tuple(f"{k}={v}" for k, v in overrides.items())
            return Change(" + ".join(whats), pairs, current)
    return None


def suggestions(shape: ModelShape, s: Setup, limit: int = 3) -> list[tuple[Change, Breakdown]]:
    """Up to `limit` changes that make the step fit, cheapest first."""
    found = [(c, estimate(shape, c.setup)) for c in _single_changes(s) if fits(shape, c.setup)]
    if not found:
        combo = _combined(shape, s)
        if combo is not None:
            found = [(combo, estimate(shape, combo.setup))]
    return found[:limit]
