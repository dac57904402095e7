"""The facts of a training config that decide its memory, read once from the composed config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from bigft.config.precision import MIXED, bf16_update_of, load_dtype, precision_of
from bigft.distributed.deepspeed_config import offloads_optimizer, offloads_params, zero_stage
from bigft.errors import ConfigError
from bigft.tasks.reference import reference_source

# DeepSpeed's ZeRO-3 defaults (deepspeed/runtime/zero/config.py) when the block leaves them out.
DS_MAX_LIVE_PARAMETERS = 1_000_000_000
DS_PREFETCH_BUCKET = 50_000_000
DS_REDUCE_BUCKET = 500_000_000
DS_SUB_GROUP = 1_000_000_000


@dataclass(frozen=True)
class Setup:
    method: str
    model_dtype: str  # model.dtype: fp32 | bf16 | fp16 (the checkpoint's)
    precision: str  # trainer.precision, resolved: fp32 | bf16-mixed | fp16-mixed | bf16-true
    checkpointing: bool
    optimizer: str
    zero_stage: int  # 0: plain torch (single or DDP)
    offload_optimizer: bool
    offload_params: bool
    micro_batch: int
    grad_accum: int
    seq_len: int
    nodes: int
    ranks_per_node: int
    gpu_memory_gib: float
    head_outputs: int | None  # classify / reward: the head's outputs; None: the LM head
    # Sequences one example puts through the model: a reward ranking of K responses is K (one
    # forward per response); K is task.max_responses, or 2 (a pair) when that is unset.
    sequences_per_example: int = 1
    # What such an example is, as the plan names it: "pair" (dpo), "ranking" (reward), "prompt"
    # (grpo); the task's own word, so the plan's step line says what a micro-batch holds.
    example_unit: str = "example"
    # Whether sequences_per_example was assumed rather than configured (reward without
    # task.max_responses): the plan then says so.
    sequences_assumed: bool = False
    # dpo's reference (bigft.tasks.reference.reference_source): "adapters", "precompute", a
    # model path; None for other tasks and for the reference-free simpo.
    reference: str | None = None
    # task=grpo: responses one GPU generates per step (0: not RL), and whether a frozen copy
    # of the policy is the reference (full fine-tuning with task.kl_coef > 0).
    rollout_rows: int = 0
    rollout_reference_copy: bool = False
    # task=ppo under lora/qlora: the value model is a second adapter and a scalar head on the
    # policy's base (bigft/rl/value.py): twice the adapters, and a second forward's activations.
    value_adapter: bool = False
    # task=ppo under full/freeze: the value model is a separate model (bigft/rl/value_model.py):
    # the policy's decoder with a 1-output head, its own gradients and optimizer state.
    value_model: bool = False
    # method details
    train_last_n_blocks: int = 0
    lora_r: int = 8
    lora_targets: tuple[str, ...] = ("all-linear",)
    lora_dropout: float = 0.05
    bits: int = 4
    double_quant: bool = True
    compute_dtype: str = "bf16"
    quant_storage: str | None = None
    adapter_dtype: str | None = None  # None: fp32 adapters (peft's default)
    bf16_update: str = "none"  # optim.bf16_update, resolved: stochastic | kahan | none
    num_virtual_tokens: int = 16
    # DeepSpeed buffers (elements)
    max_live_parameters: int = DS_MAX_LIVE_PARAMETERS
    prefetch_bucket: int = DS_PREFETCH_BUCKET
    reduce_bucket: int = DS_REDUCE_BUCKET
    sub_group: int = DS_SUB_GROUP

    @property
    def world_size(self) -> int:
        return self.nodes * self.ranks_per_node

    @property
    def deepspeed(self) -> bool:
        return self.zero_stage > 0

    @property
    def mixed(self) -> bool:
        """16-bit compute over fp32 master weights (autocast, or DeepSpeed's bf16/fp16 mode)."""
        return self.precision in MIXED

    @property
    def weights_dtype(self) -> str:
        """The dtype the base model is loaded in (frozen weights keep it without DeepSpeed)."""
        return load_dtype(self.precision, self.model_dtype, self.method)

    @property
    def sixteen_bit_compute(self) -> bool:
        if self.method == "qlora":
            return self.compute_dtype != "fp32" or self.mixed
        return self.weights_dtype != "fp32" or self.mixed

    def replace(self, **changes: Any) -> Setup:
        return dataclasses.replace(self, **changes)


def setup_from_config(cfg: Any) -> Setup:
    """Read a composed bigft config (train.yaml); touches neither data nor weights."""
    block = cfg.distributed.deepspeed
    ds = OmegaConf.to_container(block, resolve=True) if block is not None else None
    zero = (ds or {}).get("zero_optimization") or {}
    name = str(cfg.distributed.name)
    stage = zero_stage(ds) if name.startswith("zero") else 0
    if name.startswith("zero") and stage not in (1, 2, 3):
        raise ConfigError(f"distributed={name}: zero_optimization.stage must be 1, 2 or 3")
    m, t = cfg.method, cfg.trainer
    task = str(cfg.task.name)
    head = None
    # Planned for GPUs that compute bf16 (every one bigft-plan sizes: A100, H100, L40S, ...).
    precision = precision_of(cfg)
    if task in ("classify", "reward"):
        head = max(1, len(cfg.task.labels)) if task == "classify" else 1
    return Setup(
        method=str(m.name),
        model_dtype=str(cfg.model.dtype),
        precision=precision,
        checkpointing=bool(cfg.model.gradient_checkpointing),
        optimizer=str(cfg.optim.name),
        zero_stage=stage,
        offload_optimizer=offloads_optimizer(ds),
        offload_params=offloads_params(ds),
        micro_batch=int(t.micro_batch_size),
        grad_accum=int(t.grad_accum),
        seq_len=int(cfg.task.max_length),
        nodes=int(cfg.launcher.nodes),
        ranks_per_node=int(cfg.launcher.nproc_per_node),
        gpu_memory_gib=float(cfg.launcher.gpu_memory_gb),
        head_outputs=head,
        **_example(cfg),
        reference=reference_source(cfg),
        rollout_rows=int(t.micro_batch_size * t.grad_accum * cfg.task.num_generations)
        if task in ("grpo", "ppo")
        else 0,
        rollout_reference_copy=task in ("grpo", "ppo") and float(cfg.task.kl_coef) > 0,
        value_adapter=task == "ppo" and str(m.name) in ("lora", "qlora"),
        value_model=task == "ppo" and str(m.name) in ("full", "freeze"),
        train_last_n_blocks=int(m.train_last_n_blocks),
        lora_r=int(m.r),
        lora_targets=tuple(str(x) for x in m.target_modules),
        lora_dropout=float(m.dropout),
        bits=int(m.bits),
        double_quant=bool(m.double_quant),
        compute_dtype=str(m.compute_dtype),
        quant_storage=str(m.quant_storage) if m.quant_storage else None,
        adapter_dtype=str(m.adapter_dtype) if m.get("adapter_dtype") else None,
        bf16_update=bf16_update_of(precision, cfg.optim.bf16_update, cfg.optim.name),
        num_virtual_tokens=int(m.num_virtual_tokens),
        max_live_parameters=int(zero.get("stage3_max_live_parameters", DS_MAX_LIVE_PARAMETERS)),
        prefetch_bucket=int(zero.get("stage3_prefetch_bucket_size", DS_PREFETCH_BUCKET)),
        reduce_bucket=int(zero.get("reduce_bucket_size", DS_REDUCE_BUCKET)),
        sub_group=int(zero.get("sub_group_size", DS_SUB_GROUP)),
    )


def _example(cfg: Any) -> dict[str, Any]:
    """The Setup fields of what one example forwards, for tasks with several sequences each."""
    task = str(cfg.task.name)
    if task == "dpo":  # both sides of a pair
        return {"sequences_per_example": 2, "example_unit": "pair"}
    if task in ("grpo", "ppo"):  # each prompt's responses, trained in one forward
        return {"sequences_per_example": int(cfg.task.num_generations), "example_unit": "prompt"}
    if task == "reward":  # each of a ranking's K responses scored once; a pair when K is unset
        k = cfg.task.get("max_responses")
        return {
            "sequences_per_example": int(k) if k is not None else 2,
            "example_unit": "ranking",
            "sequences_assumed": k is None,
        }
    return {}
