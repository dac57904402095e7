"""Rollouts: the policy samples responses to a batch of prompts, with the KV cache.

Prompts are left-padded so that every row's next token sits in the same column; each row has
position ids counted from its first real token, so padding changes nothing a row computes.
The policy runs in eval mode (no dropout) and goes back to the mode it was in.

Sampling is reproducible without touching the global RNG. With `seeds` (one per row, e.g.
`rollout_seeds(seed, step, global indices)`) a row's tokens depend only on its own seed, not on
which rank or batch it landed in, so 2 ranks sample exactly what 1 process samples, and a
resumed run re-derives them from (seed, step) with nothing to checkpoint. With a
`torch.Generator` instead, its `get_state()` is what a checkpoint keeps. Each row draws all its
uniforms up front and samples by inverse CDF: one draw per token, whatever the vocabulary.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from bigft.data.collate import attention_mask, pad_left
from bigft.errors import ConfigError
from bigft.models.decode import is_prefix_tuned

__all__ = [
    "GenerationModel",
    "Rollout",
    "generate_rollout",
    "generation_model",
    "response_logits",
    "response_values",
    "rollout_inputs",
    "rollout_seeds",
]


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # [batch, prompt_len], left-padded with pad_id
    prompt_mask: torch.Tensor  # [batch, prompt_len], 1 for real prompt tokens
    response_ids: torch.Tensor  # [batch, response_len], pad_id after the EOS
    response_mask: torch.Tensor  # [batch, response_len], 1 up to and including the EOS
    ended_with_eos: torch.Tensor  # [batch] bool; False: cut off by max_new_tokens
    seconds: float  # wall-clock time of the generation, prefill included

    @property
    def generated_tokens(self) -> int:
        return int(self.response_mask.sum())

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / max(self.seconds, 1e-9)


def rollout_seeds(seed: int, step: int, indices: Sequence[int]) -> list[int]:
    """One 63-bit seed per sample, from the run's seed, the step and the sample's global index.

    Hashed rather than added so that (step, index) pairs never share a seed.
    """
    out = []
    for index in indices:
        digest = hashlib.blake2b(f"{seed}:{step}:{index}".encode(), digest_size=8).digest()
        out.append(int.from_bytes(digest, "little") >> 1)
    return out


def _uniforms(
    rows: int,
    steps: int,
    device: torch.device,
    seeds: Sequence[int] | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    if seeds is not None:
        if len(seeds) != rows:
            raise ValueError(f"got {len(seeds)} seeds for {rows} prompts")
        per_row = [torch.rand(steps, generator=torch.Generator().manual_seed(s)) for s in seeds]
        return torch.stack(per_row).to(device)
    if generator is not None:
        return torch.rand(rows, steps, generator=generator, device=generator.device).to(device)
    return torch.rand(rows, steps).to(device)


def sample_tokens(
    logits: torch.Tensor, uniforms: torch.Tensor, temperature: float, top_p: float
) -> torch.Tensor:
    """One token per row from logits [batch, vocab] by inverse CDF at `uniforms` [batch].

    temperature <= 0 is greedy. top_p keeps the smallest set of most likely tokens whose
    probability reaches top_p (nucleus sampling), renormalised.
    """
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    order = None
    if top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True)
        probs = probs.masked_fill(probs.cumsum(-1) - probs >= top_p, 0.0)
    cdf = probs.cumsum(-1)
    target = uniforms.to(cdf.dtype)[:, None] * cdf[:, -1:]
    # The first index whose CDF exceeds the target: a token of zero probability never is one.
    choice = torch.searchsorted(cdf, target, right=True).clamp(max=cdf.shape[-1] - 1)
    return (choice if order is None else order.gather(-1, choice)).squeeze(-1)


@dataclass
class GenerationModel:
    module: torch.nn.Module  # what to generate with (the unwrapped model)
    stop_together: bool  # every forward is a collective: ranks must decode the same steps


def _zero3_engine(model: object) -> object | None:
    """DeepSpeed's engine when `model` is one (or bigft's wrapper holding one) at ZeRO-3."""
    engine = getattr(model, "engine", model)
    stage = getattr(engine, "zero_optimization_stage", None)
    return engine if stage is not None and int(stage()) >= 3 else None


@contextlib.contextmanager
def generation_model(model: object, *, gather: bool = True) -> Iterator[GenerationModel]:
    """The module to roll out with, for the time of one rollout phase.

    `model`: the model, or what wraps it (DDP, a DeepSpeed engine, bigft's engine wrappers).
    Under ZeRO-3 every forward all-gathers each layer's shards and frees them again: once per
    generated token. With gather=True the whole model is gathered once for the phase (as
    DeepSpeed-Chat's hybrid engine and TRL do) and ZeRO's hooks are lifted meanwhile, which needs
    memory for the unsharded model on every rank; gather=False keeps the per-layer gathering, and
    then ranks must run the same number of decoding steps.
    """
    engine = _zero3_engine(model)
    if engine is None:
        yield GenerationModel(_unwrap(model), stop_together=False)
        return
    if not gather:
        yield GenerationModel(engine.module, stop_together=True)
        return
    from deepspeed.runtime.zero import unwrap_model_for_generation

    with unwrap_model_for_generation(engine):
        yield GenerationModel(engine.module, stop_together=False)


def _unwrap(model: object) -> torch.nn.Module:
    # DDP, DeepSpeed engines and bigft's engine wrappers hold the model; decoding calls it.
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model  # type: ignore[return-value]


def _forward_params(model: torch.nn.Module) -> set[str]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(inspect.signature(type(base).forward).parameters)


def _takes_logits_to_keep(model: torch.nn.Module) -> bool:
    return "logits_to_keep" in _forward_params(model)


def _cache_name(model: torch.nn.Module) -> str:
    # transformers 5.2x renamed `past_key_values` to `cache` (the old name warns, then goes).
    return "cache" if "cache" in _forward_params(model) else "past_key_values"


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def generate_rollout(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    pad_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seeds: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    stop_together: bool = False,
) -> Rollout:
    """Sample a response (≤ max_new_tokens, stopping at any of `eos_ids`) for every prompt.

    stop_together: decoding ends when every rank's rows have ended (`GenerationModel` says when
    that is needed), so that ranks whose forwards are collectives stay in step.
    """
    model = _unwrap(model)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if is_prefix_tuned(model):
        raise ConfigError(
            "rollouts of a prefix-tuned policy are not supported: peft passes the prefix as the "
            "KV cache that generation needs; use method=lora"
        )
    device = next(model.parameters()).device
    uniforms = _uniforms(len(prompts), max_new_tokens, device, seeds, generator)
    ids = pad_left(prompts, pad_id).to(device)
    mask = attention_mask(prompts, left=True).to(device)
    was_training = model.training
    model.eval()
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # time this rollout, not work queued before it
    start = time.perf_counter()
    try:
        sample = (temperature, top_p, stop_together)
        response = _decode(model, ids, mask, uniforms, eos_ids, pad_id, sample)
    finally:
        model.train(was_training)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    response_mask, ended = _response_mask(response, eos_ids)
    response = response.masked_fill(response_mask == 0, pad_id)
    return Rollout(ids, mask, response, response_mask, ended, seconds)


def _decode(
    model: torch.nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    uniforms: torch.Tensor,
    eos_ids: Sequence[int],
    pad_id: int,
    sample: tuple[float, float, bool],
) -> torch.Tensor:
    """The sampled tokens [batch, ≤ max_new_tokens]; finished rows are filled with pad_id."""
    temperature, top_p, stop_together = sample
    eos = torch.tensor(list(eos_ids), dtype=torch.long, device=ids.device)
    kwargs = {"logits_to_keep": 1} if _takes_logits_to_keep(model) else {}
    cache_name = _cache_name(model)
    positions = _positions(mask)
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs
    )
    positions = positions[:, -1:]
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    tokens = []
    for step in range(uniforms.shape[1]):
        token = sample_tokens(out.logits[:, -1], uniforms[:, step], temperature, top_p)
        token = token.masked_fill(finished, pad_id)
        tokens.append(token)
        finished |= torch.isin(token, eos)
        if _all_done(finished, stop_together) or step + 1 == uniforms.shape[1]:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
        positions = positions + 1
        out = model(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{cache_name: getattr(out, cache_name)},
            **kwargs,
        )
    if not tokens:
        return ids.new_zeros(ids.shape[0], 0)
    return torch.stack(tokens, dim=1)


def _all_done(finished: torch.Tensor, across_ranks: bool) -> bool:
    running = (~finished).any().to(torch.int32).reshape(1)
    if across_ranks and dist.is_available() and dist.is_initialized():
        dist.all_reduce(running, op=dist.ReduceOp.MAX)
    return not bool(running)


def _response_mask(
    response: torch.Tensor, eos_ids: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 up to and including the first EOS of each row, whether the row has an EOS)."""
    is_eos = torch.isin(
        response, torch.tensor(list(eos_ids), dtype=torch.long, device=response.device)
    )
    # Count EOS tokens before each position (exclusive): a position is in the response while
    # no EOS came before it, which includes the EOS itself.
    before = is_eos.long().cumsum(-1) - is_eos.long()
    return (before == 0).long(), is_eos.any(-1)


def rollout_inputs(rollout: Rollout) -> dict[str, torch.Tensor]:
    """Prompt + response as one batch for the training forward (policy, reference, value).

    Logits (or values) at positions prompt_len − 1 … prompt_len + response_len − 2 belong to the
    response's tokens: the state before each token is generated.
    """
    mask = torch.cat([rollout.prompt_mask, rollout.response_mask], dim=-1)
    return {
        "input_ids": torch.cat([rollout.prompt_ids, rollout.response_ids], dim=-1),
        "attention_mask": mask,
        "position_ids": _positions(mask),
    }


def response_logits(model: torch.nn.Module, rollout: Rollout) -> torch.Tensor:
    """The logits [batch, response_len, vocab] that scored each response token (with grad)."""
    width = rollout.response_ids.shape[1]
    kwargs = {"logits_to_keep": width + 1} if _takes_logits_to_keep(_unwrap(model)) else {}
    logits = model(**rollout_inputs(rollout), use_cache=False, **kwargs).logits
    # The last position predicts past the response; those before the response are the prompt's.
    return logits[:, -(width + 1) : -1]


def response_values(model: torch.nn.Module, rollout: Rollout) -> torch.Tensor:
    """Values [batch, response_len], float32, from a per-token scalar model (e.g. a
    ...ForTokenClassification with num_labels=1): V(s_t) is read at the position before
    response token t, where the token's logits are, so GAE's δ_t = r_t + γV_{t+1} − V_t lines up
    with the log-prob of token t."""
    width = rollout.response_ids.shape[1]
    values = model(**rollout_inputs(rollout), use_cache=False).logits.squeeze(-1)
    return values[:, -(width + 1) : -1].float()
