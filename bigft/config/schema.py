"""Typed schemas for every config group, registered with Hydra's ConfigStore.

A misspelled key or a wrong type in `conf/` or on the command line fails when Hydra composes the
config, before anything is loaded. Enum fields make OmegaConf list the allowed values in its error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from bigft.config.precision import RESOLVED


class _Choice(str, Enum):
    """A string enum that prints as its value (so `${method.name}` interpolates to "lora")."""

    def __str__(self) -> str:
        return self.value


class MethodName(_Choice):
    full = "full"
    freeze = "freeze"
    lora = "lora"
    qlora = "qlora"
    prefix = "prefix"


class TaskName(_Choice):
    lm = "lm"
    sft = "sft"
    classify = "classify"
    reward = "reward"
    dpo = "dpo"
    grpo = "grpo"
    ppo = "ppo"


class PreferenceLoss(_Choice):
    sigmoid = "sigmoid"
    ipo = "ipo"
    simpo = "simpo"


class RLAdvantage(_Choice):
    group = "group"
    rloo = "rloo"


class KLIn(_Choice):
    loss = "loss"
    reward = "reward"


class ValueInit(_Choice):
    policy = "policy"
    reward = "reward"


class LossAggregation(_Choice):
    token = "token"
    sequence = "sequence"


class DType(_Choice):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


# Hyphenated names, as users type them (trainer.precision=bf16-mixed): bigft/config/precision.py
Precision = _Choice("Precision", {n: n for n in ("auto", *RESOLVED)})
Bf16Update = _Choice("Bf16Update", {n: n for n in ("auto", "stochastic", "kahan", "none")})


class Overlong(_Choice):
    truncate = "truncate"
    drop = "drop"


class PairWeighting(_Choice):
    per_ranking = "per_ranking"
    per_pair = "per_pair"


class Aggregate(_Choice):
    borda = "borda"
    mean_rank = "mean_rank"
    pairs = "pairs"


class OptimizerName(_Choice):
    adamw = "adamw"
    adamw_8bit = "adamw_8bit"
    paged_adamw = "paged_adamw"
    paged_adamw_8bit = "paged_adamw_8bit"
    sgd = "sgd"


class SchedulerName(_Choice):
    constant = "constant"
    linear = "linear"
    cosine = "cosine"


class DistributedName(_Choice):
    single = "single"
    ddp = "ddp"
    zero1 = "zero1"
    zero2 = "zero2"
    zero3 = "zero3"
    zero3_offload = "zero3_offload"


class LauncherName(_Choice):
    local = "local"
    slurm = "slurm"


class LoggerName(_Choice):
    wandb = "wandb"
    none = "none"


@dataclass
class ModelConfig:
    # Short label used in the run name; `path` is what is loaded.
    name: str = MISSING
    # A local directory or a hub id ("meta-llama/Llama-3.1-8B").
    path: str = MISSING
    tokenizer: str | None = None  # defaults to `path`
    revision: str | None = None
    dtype: DType = DType.fp32
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    # Build the model at `path` when it is missing: "demo_base" pre-trains bigft's toy Llama.
    build_if_missing: str | None = None
    # The model's HF config (config.json keys) when no weights are at hand: bigft-plan reads it
    # instead of `path`/config.json, so planning a 65B run needs neither weights nor a GPU.
    shape: dict[str, Any] | None = None


@dataclass
class MethodConfig:
    name: MethodName = MISSING
    # freeze: train the output head plus the last N transformer blocks.
    train_last_n_blocks: int = 0
    # lora / qlora
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    use_dora: bool = False
    use_rslora: bool = False
    # lora / qlora: modules trained in full beside the adapters (peft's modules_to_save), e.g.
    # [lm_head, embed_tokens] to teach words the base never learned to write (a refusal's, a new
    # language's): a trained copy is saved with the adapter; adapters off (the DPO reference)
    # uses the original.
    modules_to_save: list[str] = field(default_factory=list)
    # lora / qlora: the dtype of the trainable adapter weights. None: fp32 (peft's default), so
    # every update is applied at full precision. bf16 / fp16 halve the adapters, their gradients
    # and (for torch's optimizers) their state, as the QLoRA paper's code did; for qlora the
    # embeddings and output head go to that dtype as well (norms stay fp32). The price: each
    # update is rounded to 8 (bf16) or 11 (fp16) significant bits, so updates much smaller than
    # a weight are lost; bitsandbytes' 32-bit optimizers keep their state in fp32 regardless.
    adapter_dtype: DType | None = None
    # qlora: the frozen base in 4-bit NF4 (or 8-bit) through bitsandbytes.
    bits: int = 4
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: DType = DType.bf16
    quant_storage: DType | None = None
    # prefix
    num_virtual_tokens: int = 16
    prefix_projection: bool = False


@dataclass
class TaskConfig:
    name: TaskName = MISSING
    max_length: int = 512
    overlong: Overlong = Overlong.truncate
    # lm: append the tokenizer's EOS token after each text.
    add_eos: bool = True
    # sft: the tokenizer's chat template is used when it has one, unless this is false.
    use_chat_template: bool = True
    # sft without a chat template: Python format strings over the record's fields.
    prompt_template: str = "### Instruction:\n{instruction}\n\n### Response:\n"
    prompt_template_with_input: str = (
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    )
    # sft eval: greedy generation on eval prompts, scored by exact match against the response.
    eval_generate: bool = False
    max_new_tokens: int = 32
    # dpo eval (with eval_generate): score each held-out prompt's greedy answer with this
    # `<module>:<function>` (prompt, response) -> float: eval/truth_score and eval/win_rate.
    eval_score_fn: str | None = None
    # classify: the label set, in order (index = class id).
    labels: list[str] = field(default_factory=list)
    # lm / sft: pack several examples into each max_length row (no attention across them).
    packing: bool = False
    # reward: each ranking's pairs weighted 1/(its pairs), InstructGPT's (per_ranking), or every
    # pair alike (per_pair); several reviewers per prompt combined by a consensus ranking
    # (borda, mean_rank) or by training on every reviewer's pairs (pairs).
    pair_weighting: PairWeighting = PairWeighting.per_ranking
    aggregate: Aggregate = Aggregate.borda
    # reward: the most responses a prompt may have; bigft-plan sizes a micro-batch of B rankings
    # as B × max_responses sequences (2, one pair, when unset).
    max_responses: int | None = None
    # dpo: the loss, its strength β (DPO/IPO: ~0.1; SimPO's paper used 2 to 10), conservative
    # DPO's label smoothing (sigmoid, simpo), SimPO's target margin γ (ppo: GAE's discount γ),
    # and the reference model:
    # "auto" (the policy with its adapters disabled for lora/qlora/prefix, else "precompute"),
    # "precompute" (log-probs of the initial model, computed once before training and cached),
    # or a model path / run directory whose model is the reference (precomputed the same way).
    loss: PreferenceLoss = PreferenceLoss.sigmoid
    beta: float = 0.1
    label_smoothing: float = 0.0
    gamma: float = 0.5
    reference: str = "auto"
    # dpo: weight α of the chosen responses' NLL per token added to each pair's loss (RPO, Pang
    # et al. 2024; TRL's rpo_alpha); 0 is plain DPO.
    sft_weight: float = 0.0
    # grpo (bigft/rl/loop.py): each step's prompts (trainer.micro_batch_size × grad_accum per
    # rank) are sampled num_generations times (up to max_new_tokens, stopping at EOS), scored by
    # `reward:`, and the policy is updated ppo_epochs × mini_batches times on that rollout.
    num_generations: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    advantage: RLAdvantage = RLAdvantage.group
    # group: divide by the group's std (GRPO); false keeps only the mean (Dr. GRPO).
    scale_rewards: bool = True
    # KL to the reference (adapters disabled under lora/qlora, a frozen copy under full): a
    # k3 loss term (kl_in=loss, GRPO) or −β·KL in the reward before the advantages.
    kl_coef: float = 0.04
    kl_in: KLIn = KLIn.loss
    # Adaptive β (Ziegler et al.) toward this KL per response when set; fixed β when null.
    kl_target: float | None = None
    kl_horizon: float = 10000.0
    clip_range: float = 0.2
    ppo_epochs: int = 1
    mini_batches: int = 1
    loss_aggregation: LossAggregation = LossAggregation.sequence
    # Subtracted from the reward of a response cut off before its EOS.
    missing_eos_penalty: float | None = None
    # The rollout engine: hf (transformers forwards with the KV cache, bigft/rl/rollout.py).
    rollout_engine: str = "hf"
    # ppo (bigft/rl/ppo.py): GAE's λ (γ is `gamma` above), the value loss's weight and clip
    # (null: unclipped), rewards normalised by their running mean and std, and where the value
    # model starts: the policy (lora/qlora: a second adapter and a zero scalar head on the
    # policy's base) or the reward model.
    lam: float = 0.95
    vf_coef: float = 0.1
    value_clip_range: float | None = 0.2
    normalize_rewards: bool = False
    value_init: ValueInit = ValueInit.policy


@dataclass
class DataConfig:
    # A local file (.jsonl, .json, .csv, .parquet), a directory, or a `datasets` name.
    train: str = MISSING
    # Held-out data; when absent, `eval_fraction` of train is split off (seeded).
    eval: str | None = None
    eval_fraction: float = 0.0
    # For `datasets` names: the configuration and split.
    subset: str | None = None
    train_split: str = "train"
    eval_split: str | None = None
    # Rename the user's fields to the ones the task reads: {task_field: user_field}.
    fields: dict[str, str] = field(default_factory=dict)
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    # Tokenized examples are cached here, keyed by data, tokenizer and task settings.
    cache: bool = True


@dataclass
class OptimConfig:
    name: OptimizerName = OptimizerName.adamw
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    scheduler: SchedulerName = SchedulerName.cosine
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    min_lr_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    # How AdamW writes updates into bf16 weights (trainer.precision=bf16-true): "stochastic"
    # rounds each new weight up or down at random in proportion (unbiased, no extra memory);
    # "kahan" carries what rounding lost in a bf16 buffer (optimi's AdamW, 2 bytes/parameter);
    # "none" rounds to nearest, so updates under half the bf16 spacing are lost. "auto":
    # stochastic under bf16-true, none otherwise (the other precisions keep fp32 weights).
    bf16_update: Bf16Update = Bf16Update["auto"]


@dataclass
class TrainerConfig:
    seed: int = 42
    micro_batch_size: int = 4
    grad_accum: int = 1
    max_steps: int = 100  # optimizer steps; -1 means `epochs` epochs
    epochs: int = 1
    # auto | fp32 | bf16-mixed | fp16-mixed | bf16-true (bigft/config/precision.py). auto: fp32
    # master weights with bf16 autocast when model.dtype is 16-bit, plain fp32 otherwise.
    precision: Precision = Precision["auto"]
    # Replaced by `precision`; kept so that a config still naming it gets a clear message.
    mixed_precision: str | None = None
    eval_every: int = 0  # 0: only at the end
    # Evaluate the untouched base model first; the final summary then shows base vs tuned.
    eval_at_start: bool = False
    eval_batch_size: int = 8
    save_every: int = 0  # steps between checkpoints; 0: none by step count
    # Wall-clock minutes between checkpoints (0: none by time), so that a kill loses at most
    # this much work; and a run always checkpoints at the end and on SIGINT/SIGTERM.
    save_every_minutes: float = 30.0
    keep_last: int = 2
    # "auto": continue from the latest checkpoint in the run directory if there is one;
    # "never": start fresh (refused if the run directory already holds checkpoints);
    # or the path of a checkpoint directory.
    resume: str = "auto"
    max_bad_steps: int = 5  # stop after this many non-finite steps in a row
    log_every: int = 1
    progress_bar: bool = True
    save_model: bool = True  # write the adapter or the HF model at the end


@dataclass
class DistributedConfig:
    name: DistributedName = DistributedName.single
    # "auto": nccl on GPUs, gloo on CPUs.
    backend: str = "auto"
    # A rank that waits this long on a collective fails the job instead of hanging it.
    timeout_minutes: int = 30
    # The DeepSpeed config, as DeepSpeed documents it (zero1/2/3 modes). bigft fills in the batch
    # sizes, gradient clipping and precision from trainer/optim and refuses contradicting values.
    deepspeed: dict[str, Any] | None = None


@dataclass
class LauncherConfig:
    name: LauncherName = LauncherName.local
    # Ranks per node: one process per GPU (or per CPU slot on a CPU-only machine).
    nproc_per_node: int = 1
    nodes: int = 1
    # GPUs requested per node (slurm) and the memory of each, which bigft-plan checks against.
    gpus_per_node: int = 0
    gpu_memory_gb: float = 80.0
    # slurm: the allocation. None leaves a directive out (the cluster's default applies).
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    time: str = "04:00:00"
    cpus_per_task: int = 1
    mem: str | None = None  # per node, as sbatch --mem takes it ("0": all of it)
    exclusive: bool = False
    job_name: str = "bigft-${name}"
    # More sbatch options, as on its command line (["--mail-type=END", "--reservation=x"]),
    # and shell lines run before training (module load, conda activate, exports).
    sbatch_extra: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)
    # srun options for every task, e.g. a container: ["--container-image=/images/bigft.sqsh"].
    srun_args: list[str] = field(default_factory=list)
    # The Python that runs bigft on the nodes; None: the one submitting (a shared venv).
    python: str | None = None
    # Preemption: Slurm sends `signal` to every rank this many seconds before the time limit;
    # bigft checkpoints, requeues the job and exits. It resumes at most `max_requeues` times.
    # USR2, not USR1: some NCCL versions claimed SIGUSR1, and submitit (sweeps) sends USR2.
    signal: str = "USR2"
    signal_lead_seconds: int = 300
    max_requeues: int = 3
    # Print the sbatch script and submit nothing.
    dry_run: bool = False
    # Submit even when bigft-plan says the job does not fit in GPU memory.
    force: bool = False


@dataclass
class LoggerConfig:
    name: LoggerName = LoggerName.none
    project: str = "bigft"
    entity: str | None = None
    group: str | None = None
    # W&B's job type (bigft-pipeline sets the stage's name; a pipeline's runs share one group).
    job_type: str | None = None
    tags: list[str] = field(default_factory=list)
    # None: "offline" unless WANDB_API_KEY is set; otherwise any wandb mode.
    mode: str | None = None


@dataclass
class RewardConfig:
    """Where task=grpo's rewards come from: Σ weight · source (bigft/rl/rewards.py)."""

    # A Python function "<module>:<function>" (or "<file.py>:<function>") of prompt and response.
    fn: str | None = None
    fn_weight: float = 1.0
    # A bigft reward run directory (or its model/, or a sequence-classification model path).
    model: str | None = None
    model_weight: float = 1.0
    # Scored and reported (train/reward_eval_fn, eval/reward_eval_fn), never trained on: a
    # ground-truth check next to a learned reward model.
    eval_fn: str | None = None


@dataclass
class TrainConfig:
    # The run name: the run directory is `{output_root}/{name}`, so a rerun finds its checkpoints.
    name: str = MISSING
    output_root: str = "outputs"
    output_dir: str = "${bigft_run_dir:${output_root},${name}}"
    cache_dir: str = "${oc.env:BIGFT_CACHE,.cache/bigft}"
    model: ModelConfig = MISSING
    method: MethodConfig = MISSING
    task: TaskConfig = MISSING
    data: DataConfig = MISSING
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)


GROUP_SCHEMAS: dict[str, Any] = {
    "model": ModelConfig,
    "method": MethodConfig,
    "task": TaskConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "trainer": TrainerConfig,
    "distributed": DistributedConfig,
    "launcher": LauncherConfig,
    "logger": LoggerConfig,
}


def register_configs() -> None:
    """Register the top-level schema; group files merge into its typed fields."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
