"""The analytic memory estimate of one training step, per GPU, component by component.

Bytes per parameter follow from what bigft builds (method, dtype, optimizer, ZeRO stage, offload);
activations follow the per-layer accounting of Korthikanti et al., "Reducing Activation
Recomputation in Large Transformer Models" (2022), redone for a Llama block as transformers runs it
(RMSNorm computed in fp32, SwiGLU MLP, fused scaled-dot-product attention that keeps no s×s
scores, no dropout), with and without activation checkpointing. Frozen linear layers keep no copy
of their input (autograd saves it only to compute a weight gradient).

The peak is the largest of three moments of a step in steady state (optimizer state exists):
the end of the forward pass, the backward pass of the first block (nearly every gradient exists,
that block's activations are still alive) and the optimizer step. The breakdown is the one at the
peak, which is also what the step tracer reports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from bigft.plan.setup import Setup
from bigft.plan.shape import ModelShape

GIB = 2**30
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
SR_STEP_BYTES = 4 + 4 + 4 + 4 + 2
COMPONENTS = ("weights", "trainable", "gradients", "optimizer", "activations", "temporaries")


@dataclass
class Breakdown:
    """Bytes per GPU at the step's peak."""

    weights: float = 0.0  # frozen parameters, buffers and quantization state
    trainable: float = 0.0  # parameters that train (the model's own, or adapters)
    gradients: float = 0.0
    optimizer: float = 0.0  # optimizer state (and ZeRO's fp32 master weights)
    activations: float = 0.0
    temporaries: float = 0.0
    moment: str = ""  # where in the step the peak falls

    @property
    def total(self) -> float:
        return sum(getattr(self, name) for name in COMPONENTS)

    def gib(self) -> dict[str, float]:
        return {name: getattr(self, name) / GIB for name in COMPONENTS}

    def as_dict(self) -> dict[str, float | str]:
        return {**asdict(self), "total": self.total}


@dataclass(frozen=True)
class ParamCounts:
    total: int
    trainable: int
    adapters: int  # parameters the method adds (LoRA, prefix); part of `trainable`
    largest_trainable: int  # elements of the largest trainable tensor


def adapted_linears(shape: ModelShape, targets: tuple[str, ...]) -> list[tuple[str, int, int]]:
    if "all-linear" in targets:
        return list(shape.block_linears)
    return [lin for lin in shape.block_linears if lin[0] in targets]


def param_counts(shape: ModelShape, s: Setup) -> ParamCounts:
    head = shape.head_params if s.head_outputs is None else shape.hidden * s.head_outputs
    total = shape.total_params - shape.head_params + head
    biggest = max(i * o for _, i, o in shape.block_linears)
    if s.method == "full":
        return ParamCounts(total, total, 0, max(biggest, shape.embed_params, head))
    if s.method == "freeze":
        head_trained = head or shape.embed_params  # a tied head trains the shared matrix
        trained = head_trained + s.train_last_n_blocks * shape.block_params
        return ParamCounts(total, trained, 0, max(head_trained, biggest))
    if s.method == "prefix":
        adapters = s.num_virtual_tokens * 2 * shape.layers * shape.hidden
        return ParamCounts(total + adapters, adapters, adapters, adapters)
    linears = adapted_linears(shape, s.lora_targets)
    adapters = shape.layers * sum(s.lora_r * (i + o) for _, i, o in linears)
    largest = max((s.lora_r * max(i, o) for _, i, o in linears), default=0)
    if s.head_outputs is not None:  # peft trains a new classification head in full
        adapters += head
        largest = max(largest, head)
    if s.value_adapter:  # ppo: the value adapter (the policy adapter's shape) and its head
        adapters = 2 * adapters + shape.hidden + 1
    return ParamCounts(total + adapters, adapters, adapters, largest)


def _quantized_bytes_per_weight(s: Setup) -> float:
    if s.bits == 8:
        return 1.0  # int8 weights; the per-row fp32 scales are negligible
    # NF4: half a byte per weight, plus one absmax per block of 64: 8-bit with double
    # quantization (and an fp32 second-level absmax per 256 blocks), fp32 without.
    absmax = 1 / 64 + 4 / (64 * 256) if s.double_quant else 4 / 64
    return 0.5 + absmax


def _param_bytes(s: Setup) -> int:
    """Bytes of one frozen model weight as it sits on the GPU during the step."""
    if s.deepspeed and s.mixed:
        return 2  # DeepSpeed casts the module to 16 bits and keeps fp32 masters in the optimizer
    return DTYPE_BYTES[s.weights_dtype]


def _trained_weight_bytes(s: Setup) -> int:
    """Bytes of one of the model's own weights that trains (full, freeze): fp32 master weights
    in the mixed modes (bigft.engine.precision holds them so), bf16 under bf16-true; DeepSpeed
    keeps its fp32 masters in the optimizer instead."""
    if s.deepspeed:
        return _param_bytes(s)
    return 2 if s.precision == "bf16-true" else 4


def _adapter_bytes(s: Setup) -> int:
    """Bytes of one adapter weight: fp32 (peft's autocast_adapter_dtype) unless
    method.adapter_dtype says otherwise, or DeepSpeed casts the module to 16 bits."""
    if s.deepspeed and s.mixed:
        return 2
    return DTYPE_BYTES[s.adapter_dtype] if s.adapter_dtype else 4


def _embedding_bytes(s: Setup, default: int) -> int:
    """qlora: bytes of an embedding / LM-head weight (cast with the adapters, see cast_adapters)."""
    return DTYPE_BYTES[s.adapter_dtype] if s.adapter_dtype else default


def _optimizer_bytes(s: Setup, trainable_bytes: int) -> float:
    """Optimizer state bytes per trainable parameter (ZeRO's fp32 master copy included)."""
    master = 4 if s.deepspeed and s.mixed else 0
    state_dtype = 4 if master else trainable_bytes  # torch keeps state in the param's dtype
    per = {
        "adamw": 2 * state_dtype,
        "paged_adamw": 8,  # bitsandbytes 32-bit states, whatever the parameter dtype
        "adamw_8bit": 2,
        "paged_adamw_8bit": 2,
        "sgd": state_dtype,
    }[s.optimizer]
    # optim.bf16_update=kahan: optimi's compensation buffer, in the weight's dtype.
    kahan = trainable_bytes if s.bf16_update == "kahan" else 0
    return master + per + kahan


@dataclass
class States:
    """Persistent bytes per GPU: the parameters, their gradients and the optimizer state."""

    weights: float
    trainable: float
    gradients: float
    optimizer: float
    trainable_bytes: int  # bytes per trainable element
    largest_trainable: int


def model_states(shape: ModelShape, s: Setup) -> States:
    counts = param_counts(shape, s)
    n = s.world_size
    pb = _param_bytes(s)
    frozen = counts.total - counts.trainable
    if s.method == "qlora":
        non_linear = frozen - shape.linear_params
        # prepare_model_for_kbit_training casts every 16-bit weight left unquantized to fp32;
        # under ZeRO-3 the 4-bit base is stored in the 16-bit compute dtype and stays so.
        # method.adapter_dtype narrows the embeddings and LM head again; the norms stay fp32.
        rest = 2 if s.zero_stage == 3 else 4
        narrowed = shape.embed_params + (shape.head_params if s.head_outputs is None else 0)
        weights = (
            shape.linear_params * _quantized_bytes_per_weight(s)
            + narrowed * _embedding_bytes(s, rest)
            + (non_linear - narrowed) * rest
        )
    else:
        weights = frozen * pb
    tb = _adapter_bytes(s) if counts.adapters else _trained_weight_bytes(s)
    trainable = counts.trainable * tb
    gradients = counts.trainable * tb
    optimizer = counts.trainable * _optimizer_bytes(s, tb)
    if s.zero_stage >= 1:
        optimizer /= n
    if s.zero_stage >= 2:
        gradients /= n
    if s.zero_stage == 3:
        weights, trainable = weights / n, trainable / n
    if s.offload_optimizer:
        # The optimizer steps on the CPU; reduced gradients are copied there bucket by bucket.
        optimizer, gradients = 0.0, 0.0
    if s.offload_params:
        weights, trainable = 0.0, 0.0
    return States(weights, trainable, gradients, optimizer, tb, counts.largest_trainable)


def _act_dtypes(s: Setup) -> tuple[int, int]:
    """(e, r): bytes of a 16/32-bit compute activation, and of the residual stream."""
    e = 2 if s.sixteen_bit_compute else 4
    if s.method == "qlora" and s.zero_stage < 3:
        # The residual stream has the embeddings' dtype: fp32 as prepare_model_for_kbit_training
        # leaves them, 16-bit with method.adapter_dtype (the blocks' outputs are 16-bit).
        return e, _embedding_bytes(s, 4)
    if s.deepspeed and s.mixed:
        return 2, 2
    if s.method == "full" and not s.deepspeed:
        return e, _trained_weight_bytes(s)  # the embeddings train: the stream has their dtype
    return e, DTYPE_BYTES[s.weights_dtype]


def block_activation_bytes(shape: ModelShape, s: Setup, weights_train: bool) -> float:
    """Bytes one block keeps for backward, per token, without checkpointing."""
    e, r = _act_dtypes(s)
    h, kv, f = shape.hidden, shape.hidden * shape.kv_heads // shape.heads, shape.ffn
    # Two RMSNorms: the fp32 copy of the input (or the input itself) and the normalized output.
    per_token = 2 * (4 * h + r * h)
    # Attention: rotated q and k, v and the output, kept by the fused attention kernel.
    per_token += e * (2 * h + 2 * kv)
    # SwiGLU: the gate, its SiLU and the up projection.
    per_token += 3 * e * f
    if weights_train:
        # A linear layer whose weight trains keeps its input: the q/k/v and gate/up inputs (one
        # tensor each) and the down projection's input.
        per_token += 2 * e * h + e * f
    if s.method in ("lora", "qlora"):
        # Each adapter keeps its input in the compute dtype, plus a dropout mask.
        dropout = 1 if s.lora_dropout > 0 else 0
        per_token += sum((e + dropout) * i for _, i, _ in adapted_linears(shape, s.lora_targets))
    return per_token


def _logits_bytes(shape: ModelShape, s: Setup, tokens: int) -> tuple[float, float]:
    """(kept for backward, transient at the end of the forward) for the head and the loss."""
    e, _ = _act_dtypes(s)
    outputs = shape.vocab if s.head_outputs is None else s.head_outputs
    kept = 4 * tokens * outputs  # cross-entropy's fp32 log-probabilities
    transient = (e + 4) * tokens * outputs  # the head's output and its fp32 copy
    return kept, transient


def tokens_per_forward(s: Setup) -> int:
    """Token positions in one micro-batch's forward (padded to max_length: the worst case)."""
    return s.micro_batch * s.sequences_per_example * s.seq_len


def activation_bytes(shape: ModelShape, s: Setup) -> tuple[float, float]:
    """(all activations at the end of the forward, one block's activations), per GPU."""
    tokens = tokens_per_forward(s)
    weights_train = s.method == "full"
    one_block = block_activation_bytes(shape, s, weights_train) * tokens
    _, r = _act_dtypes(s)
    if s.checkpointing:
        # Each block keeps only its input; one block is recomputed in full during backward.
        blocks = shape.layers * r * shape.hidden * tokens
    else:
        blocks = shape.layers * one_block
        if s.method == "freeze" and s.train_last_n_blocks:
            trained = block_activation_bytes(shape, s, True) * tokens
            blocks += s.train_last_n_blocks * (trained - one_block)
    if s.value_adapter or s.value_model:  # ppo: the value forward's blocks live to the backward
        blocks *= 2
    kept, _ = _logits_bytes(shape, s, tokens)
    return blocks + kept + r * shape.hidden * tokens, one_block


def _zero_buffers(shape: ModelShape, s: Setup) -> tuple[float, float]:
    """(during forward/backward, during the step): DeepSpeed's working buffers on the GPU."""
    if not s.deepspeed:
        return 0.0, 0.0
    reduce = 2 * s.reduce_bucket if s.zero_stage >= 2 else 0.0
    gathered = 0.0
    if s.zero_stage == 3:
        # The block being computed, gathered in full, plus the next one's prefetch.
        live = min(s.max_live_parameters, shape.block_params + s.prefetch_bucket)
        gathered = 2 * live
    step = 0.0
    if not s.offload_optimizer:
        # fp32 gradients of one sub-group, and AdamW's foreach temporary of the same size.
        part = shape.total_params / s.world_size if s.zero_stage >= 1 else shape.total_params
        step = 2 * 4 * min(s.sub_group, part) if s.zero_stage == 3 else 2 * 4 * part
    return reduce + gathered, step


def value_model_states(shape: ModelShape, s: Setup) -> States:
    """task=ppo under full/freeze: the separate value model, the policy's decoder with a
    one-output head instead of the LM head, trained as the method trains the policy."""
    return model_states(shape, replace(s, head_outputs=1, value_model=False))


def estimate(shape: ModelShape, s: Setup) -> Breakdown:
    """Per-GPU bytes at the peak of one steady-state training step."""
    st = model_states(shape, s)
    if s.value_model:  # its weights, gradients and optimizer sit beside the policy's
        v = value_model_states(shape, s)
        st = replace(
            st,
            weights=st.weights + v.weights,
            trainable=st.trainable + v.trainable,
            gradients=st.gradients + v.gradients,
            optimizer=st.optimizer + v.optimizer,
        )
    acts, one_block = activation_bytes(shape, s)
    tokens = tokens_per_forward(s)
    kept, transient = _logits_bytes(shape, s, tokens)
    zero_live, zero_step = _zero_buffers(shape, s)
    dequant = 0.0
    if s.method == "qlora":
        # MatMul4Bit's backward dequantizes the whole weight to the compute dtype.
        dequant = max(i * o for _, i, o in shape.block_linears) * _act_dtypes(s)[0]
    # bigft's torch AdamW is fused (bigft.engine.optim): one kernel per parameter group, with no
    # temporary beside its state; bitsandbytes' optimizers and SGD update in place as well.
    opt_temp = zero_step if s.deepspeed else 0.0
    if s.bf16_update == "stochastic":
        # StochasticRoundingAdamW steps one tensor at a time in fp32: moments, weight, the random
        # bits (4 bytes each) and the rounded bf16 result, for the largest trainable tensor.
        opt_temp = SR_STEP_BYTES * st.largest_trainable
    accumulated = st.gradients if s.grad_accum > 1 else 0.0
    moments = [
        ("end of forward", accumulated, acts, transient + zero_live),
        ("backward of the first block", st.gradients, one_block + kept, dequant + zero_live),
        ("optimizer step", st.gradients, 0.0, opt_temp),
    ]
    name, grads, act, temp = max(moments, key=lambda m: m[1] + m[2] + m[3])
    return Breakdown(st.weights, st.trainable, grads, st.optimizer, act, temp, name)


def breakdown_fields() -> list[str]:
    return [f.name for f in fields(Breakdown)]
