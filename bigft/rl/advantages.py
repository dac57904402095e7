"""Advantages for RL on sampled responses: GAE, whitening, group-normalised and leave-one-out.

Token tensors are [batch, response_len] with a response mask (1 for a generated token up to and
including EOS, 0 for padding after it). Sequence-level rewards for GRPO / RLOO are [prompts, N]:
row p holds the N samples of prompt p, so the group is a row.

Statistics that must be identical on every rank (whitening) can be computed from sums that the
caller all-reduces first: `masked_sums` gives them and `whiten` accepts them.
"""

from __future__ import annotations

import torch

__all__ = [
    "explained_variance",
    "explained_variance_from_sums",
    "gae",
    "group_advantages",
    "kl_penalised_scores",
    "masked_mean",
    "masked_sums",
    "masked_var",
    "ppo_token_rewards",
    "rloo_advantages",
    "rloo_baselines",
    "sequence_to_tokens",
    "whiten",
]


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of `values` where `mask` is 1 (0 for an empty mask, never NaN)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_sums(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[count, sum, sum of squares] of the masked values, in float64.

    Summable across micro-batches and ranks (all_reduce with SUM), so a whitening that sees the
    whole rollout batch is the same on 1 process and on N ranks. float64 because the variance is
    recovered as E[x²] − E[x]², which loses digits in float32 for values far from 0.
    """
    mask = mask.to(torch.float64)
    x = values.detach().to(torch.float64) * mask
    return torch.stack([mask.sum(), x.sum(), (x * x).sum()])


def _moments(sums: torch.Tensor, unbiased: bool) -> tuple[torch.Tensor, torch.Tensor]:
    count, total, total_sq = sums.unbind()
    mean = total / count.clamp(min=1)
    var = (total_sq / count.clamp(min=1) - mean * mean).clamp(min=0)
    if unbiased:
        # Bessel's correction, as TRL and OpenRLHF use; a single value has no spread.
        var = var * count / (count - 1).clamp(min=1)
    return mean, var


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """The variance of the masked values (Bessel-corrected by default)."""
    _, var = _moments(masked_sums(values, mask), unbiased)
    return var.to(values.dtype)


def whiten(
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    shift_mean: bool = True,
    eps: float = 1e-8,
    sums: torch.Tensor | None = None,
) -> torch.Tensor:
    """(values − mean) / sqrt(var + eps) over the masked entries; padding stays 0.

    shift_mean=False adds the mean back (only the scale changes), which PPO uses for rewards so
    that their sign survives. `sums` (from `masked_sums`, possibly all-reduced across ranks)
    replaces the local statistics.
    """
    mean, var = _moments(masked_sums(values, mask) if sums is None else sums, unbiased=True)
    mean, var = mean.to(values.dtype), var.to(values.dtype)
    out = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(values.dtype)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016): (advantages, returns).

    δ_t = r_t + γ·V_{t+1} − V_t and A_t = δ_t + γλ·A_{t+1}, where V_{t+1} and A_{t+1} are 0
    after the last token of a response: the episode ends there, so nothing is bootstrapped
    from the padding that follows. returns = advantages + values (the value target).
    Padding positions get 0 in both outputs.
    """
    if rewards.shape != values.shape or rewards.shape != mask.shape:
        raise ValueError(
            f"rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and mask "
            f"{tuple(mask.shape)} must have the same [batch, response_len] shape"
        )
    mask = mask.to(rewards.dtype)
    values = values.detach() * mask
    rewards = rewards * mask
    steps = rewards.shape[-1]
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    # Backwards over time: each step needs the one after it. Masked-out steps reset the carry,
    # so a response's last real token sees V = 0 and A = 0 beyond it.
    for t in reversed(range(steps)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * mask[:, t]
        next_value = values[:, t]
        next_advantage = advantages[:, t]
    returns = (advantages + values) * mask
    return advantages, returns


def explained_variance_from_sums(returns_sums: torch.Tensor, residual_sums: torch.Tensor) -> float:
    """1 − Var(R − V) / Var(R) from `masked_sums` of the returns R and of the residuals R − V
    (summable over micro-batches and ranks): 1 for a value model that predicts every return, 0
    for one no better than the mean return, negative for a worse one; NaN when the returns do
    not vary (nothing to explain)."""
    _, var_returns = _moments(returns_sums.to(torch.float64), unbiased=False)
    _, var_residual = _moments(residual_sums.to(torch.float64), unbiased=False)
    if float(var_returns) == 0.0:
        return float("nan")
    return float(1.0 - var_residual / var_returns)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """How much of the returns' variance the values explain, over the masked tokens."""
    residual = returns.detach() - values.detach()
    return explained_variance_from_sums(masked_sums(returns, mask), masked_sums(residual, mask))


def ppo_token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """Per-token rewards of InstructGPT PPO: −kl_coef·KL on every token, plus the sequence's
    score on its last real token. scores [batch], kl and mask [batch, response_len]."""
    mask = mask.to(kl.dtype)
    rewards = -kl_coef * kl * mask
    positions = torch.arange(mask.shape[-1], device=mask.device)
    last = (positions * mask).argmax(dim=-1)
    # A response with no token at all (mask all 0) would get its score at position 0; drop it.
    score = scores.to(kl.dtype) * (mask.sum(-1) > 0)
    return rewards.scatter_add(-1, last[:, None], score[:, None])


def kl_penalised_scores(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """Sequence scores minus β · the response's summed per-token KL (GRPO with kl_in=reward):
    the sequence-level counterpart of `ppo_token_rewards`, before group normalisation."""
    return scores - kl_coef * (kl * mask.to(kl.dtype)).sum(-1).to(scores.dtype)


def group_advantages(
    rewards: torch.Tensor, *, scale: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """GRPO's advantages (Shao et al. 2024, DeepSeekMath): (r − group mean) / (group std + eps).

    rewards: [prompts, N]. The std is Bessel-corrected, as in TRL. scale=False keeps only the
    mean subtraction, Dr. GRPO's variant (Liu et al. 2025): dividing by the std up-weights
    prompts whose samples nearly all agree (too easy or too hard), which biases the update.
    """
    _check_groups(rewards, "group-normalised advantages")
    centred = rewards - rewards.mean(dim=-1, keepdim=True)
    if not scale:
        return centred
    return centred / (rewards.std(dim=-1, keepdim=True) + eps)


def rloo_baselines(rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE leave-one-out baselines (Ahmadian et al. 2024): for sample i of a prompt, the
    mean reward of the prompt's other N − 1 samples. rewards: [prompts, N]."""
    _check_groups(rewards, "leave-one-out baselines")
    n = rewards.shape[-1]
    return (rewards.sum(dim=-1, keepdim=True) - rewards) / (n - 1)


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """r_i − (mean of the other samples' rewards), equal to N/(N−1)·(r_i − group mean)."""
    return rewards - rloo_baselines(rewards)


def sequence_to_tokens(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One advantage per response [batch] spread over its tokens [batch, response_len]."""
    return advantages.reshape(-1, 1) * mask.to(advantages.dtype)


def _check_groups(rewards: torch.Tensor, what: str) -> None:
    if rewards.dim() != 2:
        raise ValueError(
            f"{what} need rewards shaped [prompts, samples per prompt], got {tuple(rewards.shape)}"
        )
    if rewards.shape[-1] < 2:
        raise ValueError(f"{what} need at least 2 samples per prompt, got {rewards.shape[-1]}")
