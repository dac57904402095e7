"""The RL losses: token log-probs, KL estimators, PPO's clipped policy and value losses, entropy.

Losses come back *summed* with their number of units, as every bigft task returns them: the loop
divides by the units of the whole accumulation window (and all ranks), so micro-batching and data
parallelism do not change the result. Aggregation picks the unit:

- "token": every response token weighs the same (sum over tokens / tokens), as in DAPO and TRL;
- "sequence": each response's tokens are averaged first, then responses weigh the same (the
  original GRPO objective): a long response no longer outweighs a short one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch

Aggregation = Literal["token", "sequence"]
KLEstimator = Literal["k1", "k2", "k3"]

# Rows of logits turned into float32 at a time: bounds the extra memory to ~CHUNK_ELEMENTS floats.
CHUNK_ELEMENTS = 1 << 24
# exp() of a log ratio beyond this overflows float32 long before it means anything.
MAX_LOG_RATIO = 20.0

__all__ = [
    "Aggregation",
    "KLEstimator",
    "LossTerms",
    "aggregate",
    "kl_estimate",
    "kl_loss",
    "ppo_policy_loss",
    "token_entropy",
    "token_logprobs",
    "value_loss",
]


@dataclass
class LossTerms:
    """A summed loss, its number of units and summable statistics (plain floats)."""

    loss_sum: torch.Tensor
    units: float
    stats: dict[str, float]

    @property
    def loss(self) -> torch.Tensor:
        """The mean over this batch's units alone (what a single micro-batch would optimise)."""
        return self.loss_sum / max(self.units, 1.0)


def aggregate(
    per_token: torch.Tensor, mask: torch.Tensor, how: Aggregation = "token"
) -> tuple[torch.Tensor, float]:
    """(summed loss, units) of a per-token loss [batch, response_len] under `mask`."""
    mask = mask.to(per_token.dtype)
    if how == "token":
        return (per_token * mask).sum(), float(mask.sum())
    if how == "sequence":
        lengths = mask.sum(-1)
        per_seq = (per_token * mask).sum(-1) / lengths.clamp(min=1)
        return per_seq.sum(), float((lengths > 0).sum())
    raise ValueError(f"aggregation must be 'token' or 'sequence', got {how!r}")


def _blocks(batch: int, length: int, chunk: int) -> Iterator[tuple[slice, slice]]:
    """(rows, positions) covering [batch, length] in blocks of at most `chunk` positions.

    Whole rows go together while they fit: a kernel call per row made forward and backward 3×
    slower for a GRPO batch of 32 responses of 32 tokens (vocabulary 1024), and 5× for a 50k
    vocabulary; the numbers are the same bit for bit (each is its own row's reduction). A row
    longer than `chunk` goes in pieces, alone.
    """
    if length <= chunk:
        per_block = max(1, chunk // max(length, 1))
        for b in range(0, batch, per_block):
            yield slice(b, min(b + per_block, batch)), slice(0, length)
        return
    for b in range(batch):
        for start in range(0, length, chunk):
            yield slice(b, b + 1), slice(start, min(start + chunk, length))


class _TokenLogprobs(torch.autograd.Function):
    """log softmax(logits / T)[token], in float32, for logits [batch, length, vocab].

    Neither pass keeps a float32 copy of the logits: forward saves only the log-normaliser per
    token, and backward rebuilds the softmax a block of rows at a time. A plain
    `log_softmax(logits.float())` would keep 4 bytes × tokens × vocab alive for backward, larger
    than the model for big vocabularies. The logits may be a strided slice (the response part of
    a forward's logits): blocks are read in place, never copied whole.
    """

    @staticmethod
    def forward(ctx, logits, tokens, temperature, chunk):  # type: ignore[override]
        lse = torch.empty(tokens.shape, dtype=torch.float32, device=logits.device)
        picked = torch.empty_like(lse)
        for b, pos in _blocks(*tokens.shape, chunk):
            rows = logits[b, pos].float() / temperature
            lse[b, pos] = torch.logsumexp(rows, dim=-1)
            picked[b, pos] = rows.gather(-1, tokens[b, pos, None]).squeeze(-1)
        ctx.save_for_backward(logits, tokens, lse)
        ctx.temperature, ctx.chunk = temperature, chunk
        return picked - lse

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        logits, tokens, lse = ctx.saved_tensors
        grad_logits = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        for b, pos in _blocks(*tokens.shape, ctx.chunk):
            rows = logits[b, pos].float() / ctx.temperature
            # d/dl [l_y − logsumexp(l)] = onehot(y) − softmax(l), times 1/T for the scaling.
            g = -torch.exp(rows - lse[b, pos, None])
            g.scatter_add_(-1, tokens[b, pos, None], torch.ones_like(g[..., :1]))
            grad_logits[b, pos] = g * (grad[b, pos, None] / ctx.temperature)
        return grad_logits, None, None, None


def token_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, *, temperature: float = 1.0
) -> torch.Tensor:
    """log p(token) for each position, in float32: logits [..., vocab], tokens [...].

    The logits must already be aligned with the tokens (position t's logits score token t;
    `rollout.response_logits` does that for responses). Dividing by the sampling temperature
    makes these the log-probs of the distribution the tokens were sampled from.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for log-probs, got {temperature}")
    vocab = logits.shape[-1]
    if logits.dim() != 3:  # [batch, length, vocab] is read in place; other shapes become one
        logits = logits.reshape(1, -1, vocab)
    out = _TokenLogprobs.apply(
        logits,
        tokens.reshape(logits.shape[:2]).long(),
        float(temperature),
        max(1, CHUNK_ELEMENTS // vocab),
    )
    return out.view(tokens.shape)


def token_entropy(
    logits: torch.Tensor, mask: torch.Tensor | None = None, *, temperature: float = 1.0
) -> torch.Tensor:
    """Entropy of each position's next-token distribution, float32 [...] from logits [..., V].

    H = logsumexp(l) − Σ softmax(l)·l, a chunk of rows at a time, only where `mask` is 1 (0
    elsewhere: padding costs nothing). Meant as a metric: under autograd every chunk's float32
    copy is kept for backward.
    """
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    keep = None if mask is None else mask.reshape(-1).bool()
    rows_in = flat if keep is None else flat[keep]
    chunk = max(1, CHUNK_ELEMENTS // vocab)
    parts = []
    for start in range(0, rows_in.shape[0], chunk):
        rows = rows_in[start : start + chunk].float() / temperature
        lse = torch.logsumexp(rows, dim=-1)
        parts.append(lse - (torch.softmax(rows, dim=-1) * rows).sum(-1))
    entropy = torch.cat(parts) if parts else rows_in.new_zeros(0, dtype=torch.float32)
    if keep is not None:
        entropy = entropy.new_zeros(flat.shape[0]).masked_scatter(keep, entropy)
    return entropy.view(logits.shape[:-1])


def kl_estimate(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: KLEstimator = "k3"
) -> torch.Tensor:
    """Per-token estimates of KL(policy ‖ reference) from tokens sampled by the policy.

    With log r = log p_ref(x) − log p_policy(x) (Schulman, "Approximating KL divergence"):
    k1 = −log r (unbiased, can be negative), k2 = ½(log r)² (biased, low variance, ≥ 0),
    k3 = (r − 1) − log r (unbiased and ≥ 0; GRPO's choice).
    """
    log_r = ref_logprobs - logprobs
    if kind == "k1":
        return -log_r
    if kind == "k2":
        return 0.5 * log_r.square()
    if kind == "k3":
        log_r = log_r.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
        return torch.expm1(log_r) - log_r
    raise ValueError(f"KL estimator must be 'k1', 'k2' or 'k3', got {kind!r}")


def kl_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    kind: KLEstimator = "k3",
    aggregation: Aggregation = "token",
) -> LossTerms:
    """KL to the reference as a loss term (GRPO's kl_in=loss), aggregated like the policy loss."""
    per_token = kl_estimate(logprobs, ref_logprobs.detach(), kind)
    loss_sum, units = aggregate(per_token, mask, aggregation)
    return LossTerms(loss_sum, units, {"kl_sum": float(loss_sum.detach())})


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_range: float,
    clip_range_high: float | None = None,
    aggregation: Aggregation = "token",
) -> LossTerms:
    """PPO's clipped surrogate: max(−A·ratio, −A·clip(ratio, 1 − ε, 1 + ε_high)) per token.

    ratio = exp(log π − log π_old). Where the clipped term is the larger one, the ratio has
    moved past the trust region in the direction the advantage rewards, and the gradient is 0.
    clip_range_high (DAPO's clip-higher) defaults to clip_range.

    stats (summable): `clipped` tokens, `tokens`, `approx_kl_sum` (k3 of old vs new policy, the
    estimator CleanRL and OpenRLHF report; unbiased and ≥ 0).
    """
    high = clip_range if clip_range_high is None else clip_range_high
    mask = mask.to(logprobs.dtype)
    log_ratio = (logprobs - old_logprobs.detach()).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    advantages = advantages.detach()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + high)
    per_token = torch.maximum(unclipped, clipped)
    loss_sum, units = aggregate(per_token, mask, aggregation)
    with torch.no_grad():
        stats = {
            "clipped": float(((clipped > unclipped).to(mask.dtype) * mask).sum()),
            "tokens": float(mask.sum()),
            "approx_kl_sum": float(((torch.expm1(log_ratio) - log_ratio) * mask).sum()),
        }
    return LossTerms(loss_sum, units, stats)


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_range: float | None,
    aggregation: Aggregation = "token",
) -> LossTerms:
    """½·max((V − R)², (V_clip − R)²) per token, V_clip = V_old + clip(V − V_old, ±clip_range).

    As in PPO's reference implementations the clip keeps the value head from moving far from
    the values the advantages were computed with; clip_range=None gives the plain ½(V − R)².
    Aggregated like the policy loss it is added to. stats (summable): `value_clipped` tokens,
    `tokens`.
    """
    mask = mask.to(values.dtype)
    returns = returns.detach()
    unclipped = (values - returns).square()
    if clip_range is None or math.isinf(clip_range):
        per_token, clipped_count = unclipped, 0.0
    else:
        old = old_values.detach()
        v_clip = old + (values - old).clamp(-clip_range, clip_range)
        clipped = (v_clip - returns).square()
        per_token = torch.maximum(unclipped, clipped)
        clipped_count = float(((clipped > unclipped).to(mask.dtype) * mask).sum())
    loss_sum, units = aggregate(0.5 * per_token, mask, aggregation)
    return LossTerms(loss_sum, units, {"value_clipped": clipped_count, "tokens": float(mask.sum())})
