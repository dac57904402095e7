"""task=grpo's step on the shared RLLoop: group-normalised (or leave-one-out) advantages over each
prompt's num_generations responses, with the KL to the reference as a loss term or in the score."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bigft.rl.advantages import (
    group_advantages,
    kl_penalised_scores,
    rloo_advantages,
    sequence_to_tokens,
)
from bigft.rl.loop import RLLoop, Scored, add_stats
from bigft.rl.losses import kl_estimate, kl_loss
from bigft.rl.rollout import Rollout


@dataclass
class GRPOLoop(RLLoop):
    def needs_old_logps(self) -> bool:
        # kl_in=reward also needs the rollout's own log-probs for the KL in the score.
        t = self.task.cfg
        in_reward = self.reference is not None and t.kl_in == "reward"
        return super().needs_old_logps() or in_reward

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
        total = scores
        if ref is not None and t.kl_in == "reward":
            kl = kl_estimate(old, ref, "k1")
            total = kl_penalised_scores(total, kl, mask, self.kl.value)
            stats["kl_seq_sum"] = float((kl * mask).sum())
        grouped = total.view(-1, int(t.num_generations))
        if t.advantage == "rloo":
            adv = rloo_advantages(grouped)
        else:
            adv = group_advantages(grouped, scale=bool(t.scale_rewards))
        adv = adv.reshape(-1)
        stats.update(
            advantage_total=float(adv.sum()),
            advantage_sq_total=float(adv.square().sum()),
        )
        return Scored(rollout, sequence_to_tokens(adv, mask), old, ref, stats)

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
        if scored.ref_logps is None or t.kl_in != "loss":
            return None
        ref = scored.ref_logps[rows][:, : logp.shape[1]]
        kl = kl_loss(logp, ref, part.response_mask, aggregation=str(t.loss_aggregation))
        add_stats(stats, {"kl_loss_sum": kl.stats["kl_sum"]})
        return self.kl.value * kl.loss_sum
