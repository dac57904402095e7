"""task=ppo's step on the shared RLLoop (InstructGPT; Ziegler et al. 2019).

Per rollout batch: the value model's V(s_t) at every response token (no grad: the "old" values
the clipped value loss stays near); the score, minus task.missing_eos_penalty for a response cut
off before its EOS, optionally normalised by the running mean and std of every score so far
(task.normalize_rewards, identical on every rank, kept in checkpoints), lands on the response's
last token and −β·KL(rollout policy ‖ reference) (k1, per token) on every token; GAE (γ =
task.gamma, λ = task.lam) gives advantages and the value targets (returns); the advantages are
whitened over the whole rollout batch, all ranks together, so 2 ranks train what 1 process does.
Each micro-batch's loss is the clipped policy loss plus task.vf_coef × the clipped value loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bigft.distributed.comm import sum_tensor_across_ranks
from bigft.rl.advantages import (
    explained_variance_from_sums,
    gae,
    masked_sums,
    ppo_token_rewards,
    whiten,
)
from bigft.rl.kl_control import RunningMoments
from bigft.rl.loop import RLLoop, Scored, add_stats
from bigft.rl.losses import kl_estimate, value_loss
from bigft.rl.rollout import Rollout
from bigft.rl.value_model import Values


@dataclass
class PPOTargets:
    advantages: torch.Tensor  # whitened over the rollout batch, all ranks [rows, len]
    raw_advantages: torch.Tensor  # GAE's, before whitening
    returns: torch.Tensor  # the value targets: raw advantages + values
    kl: torch.Tensor  # k1 of the rollout policy to the reference per token (0 without one)


def ppo_targets(
    scores: torch.Tensor,
    values: torch.Tensor,
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor | None,
    mask: torch.Tensor,
    *,
    kl_coef: float,
    gamma: float,
    lam: float,
    reduce: Callable[[torch.Tensor], torch.Tensor] = sum_tensor_across_ranks,
) -> PPOTargets:
    """A rollout batch's scores [rows] and values [rows, len] → advantages and value targets.

    The score goes on each response's last token, −kl_coef·KL on every token (k1 of the
    log-probs the rollout was sampled with against the reference's: unbiased, and its sum is
    the sequence's log-ratio); GAE follows, then whitening with statistics `reduce` sums over
    ranks, so every rank whitens by the whole batch's mean and std.
    """
    if ref_logps is None:
        kl = torch.zeros_like(old_logps)
    else:
        kl = kl_estimate(old_logps, ref_logps, "k1")
    rewards = ppo_token_rewards(scores.to(kl.dtype), kl, mask, kl_coef)
    adv, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)
    white = whiten(adv, mask, sums=reduce(masked_sums(adv, mask)))
    return PPOTargets(white, adv, returns, kl)


@dataclass
class PPOLoop(RLLoop):
    # The value model: an adapter on the policy's base, or a model of its own (value_model.py).
    values: Values | None = None
    reward_moments: RunningMoments = field(default_factory=RunningMoments, init=False)
    value_grad_norm: float | None = field(default=None, init=False)  # the step's last update's

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.state.rl and "reward_moments" in self.state.rl:
            self.reward_moments.load_state_dict(self.state.rl["reward_moments"])

    def needs_old_logps(self) -> bool:
        return True  # the KL in the per-token rewards is the rollout policy's

    def rl_state(self) -> dict:
        return {**super().rl_state(), "reward_moments": self.reward_moments.state_dict()}

    @torch.no_grad()
    def rollout_values(self, rollout: Rollout) -> torch.Tensor:
        with self.autocast():
            return self.values.values(rollout)

    def advantages(
        self,
        rollout: Rollout,
        scores: torch.Tensor,
        old: torch.Tensor | None,
        ref: torch.Tensor | None,
        stats: dict[str, float],
    ) -> Scored:
        t = self.task.cfg
        mask = rollout.response_mask
        values = self.rollout_values(rollout)
        if t.normalize_rewards:
            self.reward_moments.update(scores)  # every rank's scores, merged in rank order
            scores = self.reward_moments.normalize(scores)
        targets = ppo_targets(
            scores,
            values,
            old,
            ref,
            mask,
            kl_coef=self.kl.value,
            gamma=float(t.gamma),
            lam=float(t.lam),
        )
        values = values * mask
        adv_sums = masked_sums(targets.raw_advantages, mask)
        ret_sums = masked_sums(targets.returns, mask)
        res_sums = masked_sums(targets.returns - values, mask)
        stats.update(
            advantage_count=float(adv_sums[0]),
            advantage_total=float(adv_sums[1]),
            advantage_sq_total=float(adv_sums[2]),
            kl_seq_sum=float((targets.kl * mask).sum()),
            score_total=float(scores.sum()),
            value_total=float(values.sum()),
            returns_total=float(ret_sums[1]),
            **{f"ev_returns_{i}": float(x) for i, x in enumerate(ret_sums)},
            **{f"ev_residual_{i}": float(x) for i, x in enumerate(res_sums)},
        )
        extras = {"values": values, "returns": targets.returns}
        return Scored(rollout, targets.advantages, old, ref, stats, extras)

    def extra_loss(
        self,
        logp: torch.Tensor,
        part: Rollout,
        scored: Scored,
        rows: list[int],
        units: float,
        stats: dict[str, float],
    ) -> torch.Tensor | None:
        t = self.task.cfg
        values = self.values.values(part)
        width = values.shape[1]
        clip = t.value_clip_range
        terms = value_loss(
            values,
            scored.extras["values"][rows][:, :width],
            scored.extras["returns"][rows][:, :width],
            part.response_mask,
            clip_range=None if clip is None else float(clip),
            aggregation=str(t.loss_aggregation),
        )
        add_stats(
            stats,
            {
                "value_loss": float(terms.loss_sum.detach()) / max(units, 1.0),
                "value_clipped": terms.stats["value_clipped"],
            },
        )
        # A value model with an engine of its own runs its backward here (value_model.py).
        return self.values.backward(float(t.vf_coef) * terms.loss_sum, units)

    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager:
        stack = contextlib.ExitStack()
        stack.enter_context(super().micro_batch(last))
        stack.enter_context(self.values.micro_batch(last))
        return stack

    def after_update(self) -> None:
        norm = self.values.step()
        if norm is not None:  # identical on every rank (DDP): kept, not summed over ranks
            self.value_grad_norm = norm

    def step_schedules(self) -> None:
        super().step_schedules()
        self.values.schedule()

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        # A non-finite value model must not replace a good checkpoint either.
        return [*super().trainable_parameters(), *self.values.parameters()]

    def save_extra(self, path: Path) -> None:
        self.values.save(path, self.env.is_main)

    def algorithm_metrics(self, totals: dict[str, float], updates: int) -> dict[str, float]:
        tokens = max(totals["advantage_count"], 1.0)
        ret = torch.tensor([totals[f"ev_returns_{i}"] for i in range(3)], dtype=torch.float64)
        res = torch.tensor([totals[f"ev_residual_{i}"] for i in range(3)], dtype=torch.float64)
        return {
            "train/value_loss": totals["value_loss"] / updates,
            "train/value_clip_fraction": totals["value_clipped"] / max(totals["tokens"], 1.0),
            "train/explained_variance": explained_variance_from_sums(ret, res),
            "train/value_mean": totals["value_total"] / tokens,
            "train/returns_mean": totals["returns_total"] / tokens,
            # The score the returns were built from (after normalisation, before the KL).
            "train/score": totals["score_total"] / max(totals["samples"], 1.0),
            "train/kl_rollout": totals["kl_seq_sum"] / max(totals["samples"], 1.0),
            **(
                {}
                if self.value_grad_norm is None
                else {"train/value_grad_norm": self.value_grad_norm}
            ),
        }
